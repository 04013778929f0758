"""Rule clean_cosmics: flag and clean cosmic rays of one calibrated frame (astroscrappy)."""

from ccdflow.tasks import clean_file, setup_logging

setup_logging(snakemake.log[0])
clean_file(snakemake.input.calibrated, snakemake.output.cleaned, **snakemake.params.cosmics)
