"""Rule select_frames: which frames of one group are stacked, and why the others are not."""

from ccdflow.tasks import select_file, setup_logging

setup_logging(snakemake.log[0])
select_file(
    snakemake.input.records,
    snakemake.output.selection,
    group=snakemake.wildcards.group,
    frames=snakemake.params.frames,
    selection=snakemake.params.selection,
)
