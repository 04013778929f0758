"""Rule make_report: the night report, results/report/index.html (one self-contained page)."""

from ccdflow.report import write_report
from ccdflow.tasks import setup_logging

setup_logging(snakemake.log[0])
write_report(
    snakemake.output.html,
    records=snakemake.input.records,
    selections=snakemake.input.selections,
    qc_table=snakemake.input.qc,
    frames_table=snakemake.input.frames,
    rejected_table=snakemake.input.rejected,
    calibration_table=snakemake.input.calibration,
    masters_part=snakemake.input.masters,
    group_parts=snakemake.input.parts,
    previews=snakemake.input.previews,
    stacks=snakemake.input.stacks,
    raw_stacks=snakemake.input.raw_stacks,
    config=snakemake.params.config,
    version=snakemake.params.version,
    logs_dir=snakemake.params.logs_dir,
    detector=snakemake.input.detector[0] if snakemake.input.detector else None,
)
