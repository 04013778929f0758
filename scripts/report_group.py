"""Rule report_group: one stack group's pictures for the night report."""

from ccdflow.report import write_group_part
from ccdflow.tasks import setup_logging

setup_logging(snakemake.log[0])
write_group_part(
    snakemake.output.part,
    group=snakemake.wildcards.group,
    records=snakemake.input.records,
    selection=snakemake.input.selection,
    cosmics=snakemake.input.cosmics,
    frames=snakemake.params.frames,
    selection_cfg=snakemake.params.selection,
)
