# Stacks per group (calibrated and raw), previews, and the per-frame QC table.


rule stack_group:
    input:
        aligned=group_aligned,
    output:
        stack="results/stacks/{group}.fits",
    log:
        "logs/stack_group/{group}.log",
    benchmark:
        "benchmarks/stack_group/{group}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=2000,
    params:
        stack=config["stack"],
        version=VERSION,
    script:
        "../../scripts/stack_group.py"


rule stack_raw_group:
    input:
        raw=group_raw,
        aligned=group_aligned,
    output:
        stack="results/stacks/raw/{group}.fits",
    log:
        "logs/stack_raw_group/{group}.log",
    benchmark:
        "benchmarks/stack_raw_group/{group}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=2000,
    params:
        frames=group_raw_frames,
        version=VERSION,
    script:
        "../../scripts/stack_raw_group.py"


rule make_preview:
    input:
        stack="results/stacks/{group}.fits",
        raw_stack="results/stacks/raw/{group}.fits",
    output:
        png="results/qc/previews/{group}.png",
    log:
        "logs/make_preview/{group}.log",
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1000,
    params:
        version=VERSION,
    script:
        "../../scripts/make_preview.py"


rule collect_qc:
    input:
        aligned=[aligned_path(frame) for frame in sorted(PLAN.lights)],
    output:
        table="results/qc/frames.tsv",
    log:
        "logs/collect_qc/collect_qc.log",
    conda:
        "../../envs/ccdflow.yaml"
    params:
        frames=sorted(PLAN.lights),
        groups=[PLAN.lights[f]["record"]["group"] for f in sorted(PLAN.lights)],
        version=VERSION,
    script:
        "../../scripts/collect_qc.py"
