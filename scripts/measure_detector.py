"""Rule measure_detector: gain and read noise from pairs of raw frames, per setup."""

from ccdflow.tasks import measure_detector_file, setup_logging

setup_logging(snakemake.log[0])
measure_detector_file(snakemake.params.setups, snakemake.output.detector)
