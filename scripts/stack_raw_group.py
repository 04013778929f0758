"""Rule stack_raw_group: the group's raw frames, aligned with the same transforms, averaged."""

from ccdflow.tasks import raw_stack_file, setup_logging

setup_logging(snakemake.log[0])
raw_stack_file(snakemake.input.selection, snakemake.output.stack, group=snakemake.wildcards.group)
