"""Rule report_masters: the masters' pictures for the night report."""

from ccdflow.report import write_masters_part
from ccdflow.tasks import setup_logging

setup_logging(snakemake.log[0])
write_masters_part(snakemake.output.part, snakemake.input.masters)
