"""Rule align_frame: register one cleaned frame onto its reference (astroalign)."""

from ccdflow.tasks import align_file, setup_logging

setup_logging(snakemake.log[0])
align_file(
    snakemake.input.cleaned,
    snakemake.input.reference,
    snakemake.output.aligned,
    reference_name=snakemake.params.reference,
    **{k: v for k, v in snakemake.params.align.items() if k != "reference"},
)
