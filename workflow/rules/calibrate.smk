# Calibrated science frames: bias, scaled dark, flat; uncertainty and mask planes.


rule calibrate_frame:
    input:
        unpack(calibrate_inputs),
    output:
        frame="results/calibrated/{frame}.fits",
    log:
        "logs/calibrate_frame/{frame}.log",
    benchmark:
        "benchmarks/calibrate_frame/{frame}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=500,
    params:
        calibration=calibrate_params,
        version=VERSION,
    script:
        "../../scripts/calibrate_frame.py"
