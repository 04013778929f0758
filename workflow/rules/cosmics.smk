# Cosmic rays: astroscrappy (L.A.Cosmic) on each calibrated frame.


rule clean_cosmics:
    input:
        calibrated="results/calibrated/{frame}.fits",
    output:
        cleaned="results/cleaned/{frame}.fits",
    log:
        "logs/clean_cosmics/{frame}.log",
    benchmark:
        "benchmarks/clean_cosmics/{frame}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1000,
    params:
        cosmics=config["cosmics"],
        version=VERSION,
    script:
        "../../scripts/clean_cosmics.py"
