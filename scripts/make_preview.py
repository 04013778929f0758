"""Rule make_preview: PNG of the raw stack beside the calibrated stack (zscale)."""

from ccdflow.report import write_preview
from ccdflow.tasks import setup_logging

setup_logging(snakemake.log[0])
write_preview(
    snakemake.input.stack,
    snakemake.input.raw_stack,
    snakemake.input.selection,
    snakemake.output.png,
    title=snakemake.wildcards.group,
)
