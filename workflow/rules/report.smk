# The night report (results/report/index.html) and the items of `snakemake --report`.


report: "../report/workflow.rst"


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
