# Registration of every cleaned frame onto the pixel grid of a stable reference frame.


rule align_frame:
    input:
        unpack(align_inputs),
    output:
        aligned="results/aligned/{group}/{frame}.fits",
    log:
        "logs/align_frame/{group}/{frame}.log",
    benchmark:
        "benchmarks/align_frame/{group}/{frame}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1000,
    params:
        align=config["align"],
        reference=align_reference,
        version=VERSION,
    script:
        "../../scripts/align_frame.py"
