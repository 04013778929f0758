"""Rule combine_sky_dome_flat: the master flat of a filter with sky and dome flats."""

from ccdflow.tasks import combine_flat_file, setup_logging

setup_logging(snakemake.log[0])
combine_flat_file(
    snakemake.input.sky,
    snakemake.input.dome,
    snakemake.output.master,
    snakemake.output.record,
    illumination=snakemake.params.illumination,
    flat_floor=snakemake.params.floor,
    identity=snakemake.params.identity,
)
