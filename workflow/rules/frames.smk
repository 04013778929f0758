# Per reference set (stack group, or object) the alignment reference, chosen for quality
# among its earliest raw frames; one job per light frame: calibrate, clean cosmic rays,
# align, in one process; its calibrated and aligned frames and its record. Then per group
# the selection step.


rule choose_reference:
    input:
        raw=reference_inputs,
    output:
        reference="results/references/{reference}.json",
    log:
        "logs/choose_reference/{reference}.log",
    benchmark:
        "benchmarks/choose_reference/{reference}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    params:
        frames=reference_frames,
        override=reference_override,
        detection=reference_detection,
        overscan=OVERSCAN,
        version=VERSION,
    script:
        "../../scripts/choose_reference.py"


rule process_frame:
    input:
        unpack(frame_inputs),
    output:
        calibrated="results/calibrated/{frame}.fits",
        aligned="results/aligned/{frame}.fits",
        record="results/records/{frame}.json",
    log:
        "logs/process_frame/{frame}.log",
    benchmark:
        "benchmarks/process_frame/{frame}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    resources:
        mem_mb=1500,
    params:
        raw=frame_raw,
        user_map=USER_MAP,
        calibration=frame_calibration,
        cosmics=config["cosmics"],
        align=frame_align,
        overscan=OVERSCAN,
        group=frame_group,
        version=VERSION,
    script:
        "../../scripts/process_frame.py"


rule select_frames:
    input:
        records=group_records,
    output:
        selection="results/selection/{group}.json",
    log:
        "logs/select_frames/{group}.log",
    benchmark:
        "benchmarks/select_frames/{group}.tsv"
    conda:
        "../../envs/ccdflow.yaml"
    params:
        frames=group_frame_files,
        selection=group_selection,
        version=VERSION,
    script:
        "../../scripts/select_frames.py"
