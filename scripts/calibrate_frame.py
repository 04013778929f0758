"""Rule calibrate_frame: bias, scaled dark and flat applied to one raw science frame."""

from ccdflow.tasks import calibrate_file, setup_logging

setup_logging(snakemake.log[0])
calibrate_file(
    snakemake.input.raw,
    output=snakemake.output.frame,
    bias=snakemake.input.get("bias"),
    dark=snakemake.input.get("dark"),
    flat=snakemake.input.get("flat"),
    **snakemake.params.calibration,
)
