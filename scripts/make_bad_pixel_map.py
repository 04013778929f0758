"""Rule make_bad_pixel_map: union of the defect bits of one setup's master darks and flats."""

from ccdflow.tasks import bad_pixel_map_file, setup_logging

setup_logging(snakemake.log[0])
bad_pixel_map_file(
    snakemake.input.masters,
    snakemake.output.bpm,
    setup=snakemake.wildcards.setup,
    user_map=snakemake.input.get("user_map"),
)
