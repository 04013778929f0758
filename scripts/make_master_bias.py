"""Rule make_master_bias: master bias (ADU) from raw bias frames."""

from ccdflow.tasks import make_master_file, setup_logging

setup_logging(snakemake.log[0])
make_master_file(
    "bias",
    frames=snakemake.params.frames,
    output=snakemake.output.master,
    record=snakemake.output.record,
    gates=snakemake.params.gates,
    missing_master=snakemake.params.missing_master,
    combine=snakemake.params.combine,
    bias=snakemake.input.get("bias"),
    dark=snakemake.input.get("dark"),
    dark_scales=snakemake.params.dark_scales,
    saturation=snakemake.params.saturation,
    mem_limit_mb=snakemake.resources.mem_mb,
    fingerprints=snakemake.params.fingerprints,
    identity=snakemake.params.identity,
    overscan=snakemake.params.overscan,
)
