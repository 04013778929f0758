"""Rule stack_raw_group: the group's raw frames, aligned with the same transforms, averaged."""

from ccdflow.tasks import raw_stack_file, setup_logging

setup_logging(snakemake.log[0])
raw_stack_file(
    [(path, hdu) for path, hdu, _ in snakemake.params.frames],
    snakemake.input.aligned,
    snakemake.output.stack,
    group=snakemake.wildcards.group,
)
