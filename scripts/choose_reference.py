"""Rule choose_reference: the alignment reference of one reference set, for quality."""

from ccdflow.reference import choose_reference
from ccdflow.tasks import setup_logging

setup_logging(snakemake.log[0])
choose_reference(
    snakemake.wildcards.reference,
    snakemake.params.frames,
    snakemake.output.reference,
    overscan=snakemake.params.overscan,
    align=snakemake.params.detection,
    override=snakemake.params.override,
)
