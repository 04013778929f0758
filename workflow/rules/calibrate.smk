# Calibrated science frames: bias, scaled dark, flat; uncertainty and mask planes.


rule calibrate_frame:
    input:
        unpack(calibrate_inputs),
    output:
        frame="results/calibrated/{frame}.fits",
    params:
        calibration=calibrate_params,
        version=VERSION,
    log:
        "logs/calibrate_frame/{frame}.log",
    resources:
        mem_mb=500,
    script:
        "../../scripts/calibrate_frame.py"
