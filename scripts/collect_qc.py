"""Rule collect_qc: results/qc/frames.tsv, the status and measures of every light frame."""

from ccdflow.tasks import qc_table, setup_logging

setup_logging(snakemake.log[0])
qc_table(snakemake.input.records, snakemake.input.selections, snakemake.output.table)
