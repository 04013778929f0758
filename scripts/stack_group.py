"""Rule stack_group: sigma-clipped stack of the aligned frames of one group."""

from ccdflow.tasks import setup_logging, stack_file

setup_logging(snakemake.log[0])
stack_file(
    snakemake.input.selection,
    snakemake.output.stack,
    group=snakemake.wildcards.group,
    mem_limit_mb=snakemake.resources.mem_mb - 200,  # the interpreter's own share
    **snakemake.params.stack,
)
