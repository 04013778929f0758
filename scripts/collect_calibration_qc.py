"""Rule collect_calibration_qc: results/qc/calibration.tsv from the masters' records."""

from ccdflow.tasks import calibration_table, setup_logging

setup_logging(snakemake.log[0])
calibration_table(snakemake.input.records, snakemake.output.table)
