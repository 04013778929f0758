"""Rule make_preview: PNG of the raw stack beside the calibrated stack (zscale)."""

from ccdflow.tasks import preview_file, setup_logging

setup_logging(snakemake.log[0])
preview_file(
    snakemake.input.stack,
    snakemake.input.raw_stack,
    snakemake.input.selection,
    snakemake.output.png,
    title=snakemake.wildcards.group,
)
