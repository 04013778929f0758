# The night report (results/report/index.html) and the items of `snakemake --report`.


report: "../report/workflow.rst"


rule report_masters:
    input:
        masters=[m.path for m in PLAN.masters.values()],
    output:
        part="results/report/parts/masters.json",
    log:
        "logs/report_masters/report_masters.log",
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1500,
    params:
        version=VERSION,
    script:
        "../../scripts/report_masters.py"


rule report_group:
    input:
        unpack(report_group_inputs),
    output:
        part="results/report/parts/groups/{group}.json",
    log:
        "logs/report_group/{group}.log",
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1000,
    params:
        frames=report_group_frames,
        selection=group_selection,
        version=VERSION,
    script:
        "../../scripts/report_group.py"


rule make_report:
    input:
        unpack(report_inputs),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/night.rst",
            category="1. Night report",
        ),
    log:
        "logs/make_report/make_report.log",
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1500,
    params:
        config=config,
        logs_dir="logs",
        version=VERSION,
    script:
        "../../scripts/make_report.py"
