# Master calibration frames: bias, darks per exposure group, flats per filter.


rule make_master_bias:
    input:
        unpack(master_inputs("bias")),
    output:
        master="results/masters/bias_{tag}.fits",
        record="results/masters/bias_{tag}.json",
    log:
        "logs/make_master_bias/{tag}.log",
    benchmark:
        "benchmarks/make_master_bias/{tag}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=2000,
    params:
        **master_params("bias"),
        combine=config["combine"]["bias"],
        gates=config["calibration"]["gates"],
        missing_master=config["calibration"]["missing_master"],
        version=VERSION,
    script:
        "../../scripts/make_master_bias.py"


rule make_master_dark:
    input:
        unpack(master_inputs("dark")),
    output:
        master="results/masters/dark_{tag}.fits",
        record="results/masters/dark_{tag}.json",
    log:
        "logs/make_master_dark/{tag}.log",
    benchmark:
        "benchmarks/make_master_dark/{tag}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=2000,
    params:
        **master_params("dark"),
        combine=config["combine"]["dark"],
        gates=config["calibration"]["gates"],
        missing_master=config["calibration"]["missing_master"],
        badpix=ccd_badpix.master_thresholds(config["badpix"], "dark"),
        version=VERSION,
    script:
        "../../scripts/make_master_dark.py"


rule make_master_flat:
    input:
        unpack(master_inputs("flat")),
    output:
        master="results/masters/flat_{tag}.fits",
        record="results/masters/flat_{tag}.json",
    log:
        "logs/make_master_flat/{tag}.log",
    benchmark:
        "benchmarks/make_master_flat/{tag}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=2000,
    params:
        **master_params("flat"),
        combine=config["combine"]["flat"],
        gates=config["calibration"]["gates"],
        missing_master=config["calibration"]["missing_master"],
        floor=config["calibration"]["flat_floor"],
        illumination=ILLUMINATION,
        badpix=ccd_badpix.master_thresholds(config["badpix"], "flat"),
        version=VERSION,
    script:
        "../../scripts/make_master_flat.py"


# With calibration.illumination on, a filter with sky and dome flats: the master its lights
# use is the dome master's pixel structure with the sky master's low-order shape. Only
# the tags of such combinations match (COMBINED_FLAT_TAGS; none when the option is off).
ruleorder: combine_sky_dome_flat > make_master_flat


rule combine_sky_dome_flat:
    input:
        unpack(sky_dome_inputs),
    output:
        master="results/masters/flat_{tag}.fits",
        record="results/masters/flat_{tag}.json",
    log:
        "logs/combine_sky_dome_flat/{tag}.log",
    benchmark:
        "benchmarks/combine_sky_dome_flat/{tag}.tsv"
    wildcard_constraints:
        tag=COMBINED_FLAT_TAGS,
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=2000,
    params:
        identity=sky_dome_identity,
        illumination=ILLUMINATION,
        floor=config["calibration"]["flat_floor"],
        version=VERSION,
    script:
        "../../scripts/combine_sky_dome_flat.py"


# Union of the defect bits (HOT, DEAD, BAD_COLUMN) of a setup's master darks and flats,
# and the user map: for people and the QC. No frame job reads it: each frame inherits the
# bits of the masters it uses (DESIGN §7 rows for new darks and flats hold unchanged).
rule make_bad_pixel_map:
    input:
        unpack(bpm_inputs),
    output:
        bpm="results/masters/bpm_{setup}.fits",
    log:
        "logs/make_bad_pixel_map/{setup}.log",
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1000,
    params:
        version=VERSION,
    script:
        "../../scripts/make_bad_pixel_map.py"


# Gain and read noise measured from pairs of the raw biases and flats, per setup, beside
# the headers' values (the lecture's photon transfer; ccdflow.detector).
rule measure_detector:
    input:
        raw=detector_inputs,
    output:
        detector="results/qc/detector.json",
    log:
        "logs/measure_detector/detector.log",
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=2000,
    params:
        setups=detector_setups,
        version=VERSION,
    script:
        "../../scripts/measure_detector.py"


rule collect_calibration_qc:
    input:
        records=master_records,
    output:
        table="results/qc/calibration.tsv",
    log:
        "logs/collect_calibration_qc/collect_calibration_qc.log",
    conda:
        "../../envs/ccdflow.yaml"
    params:
        version=VERSION,
    script:
        "../../scripts/collect_calibration_qc.py"
