"""Rule process_frame: one light frame calibrated, cleaned of cosmic rays and aligned."""

from ccdflow.framejob import process_frame
from ccdflow.tasks import setup_logging

setup_logging(snakemake.log[0])
process_frame(
    snakemake.params.raw,
    snakemake.params.calibration["hdu"],
    frame=snakemake.wildcards.frame,
    group=snakemake.params.group,
    calibrated_path=snakemake.output.calibrated,
    aligned_path=snakemake.output.aligned,
    record_path=snakemake.output.record,
    masters={k: snakemake.input.get(k) for k in ("bias", "dark", "flat")},
    calibration=snakemake.params.calibration,
    cosmics=snakemake.params.cosmics,
    align=snakemake.params.align,
    reference=snakemake.input.reference,
    overscan=snakemake.params.overscan,
    detector_record=snakemake.input.get("detector"),
    user_map=snakemake.params.user_map,
)
