# Stacks per group (calibrated and raw), previews, and the per-frame QC table.


rule stack_group:
    input:
        selection="results/selection/{group}.json",
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
        selection="results/selection/{group}.json",
        raw=group_raw,
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
        fingerprints=group_fingerprints,
        version=VERSION,
    script:
        "../../scripts/stack_raw_group.py"


rule make_preview:
    input:
        stack="results/stacks/{group}.fits",
        raw_stack="results/stacks/raw/{group}.fits",
        selection="results/selection/{group}.json",
    output:
        png=report(
            "results/qc/previews/{group}.png",
            caption="../report/preview.rst",
            category="2. Stacks",
            labels={"group": "{group}"},
        ),
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
        records=[f"results/records/{frame}.json" for frame in sorted(PLAN.lights)],
        selections=[f"results/selection/{group}.json" for group in GROUPS],
    output:
        table=report(
            "results/qc/frames.tsv",
            caption="../report/qc.rst",
            category="3. Frame quality",
        ),
    log:
        "logs/collect_qc/collect_qc.log",
    conda:
        "../../envs/ccdflow.yaml"
    params:
        version=VERSION,
    script:
        "../../scripts/collect_qc.py"
