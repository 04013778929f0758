# Shared set-up: config validation, the inventory of raw_dir (parse time, cached), the
# calibration plan, wildcard constraints and input functions. No rules here; the logic
# lives in scripts/ccdflow.
import re
import sys
import threading
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

import ccdflow
from ccdflow import badpix as ccd_badpix
from ccdflow import inventory as ccd_inventory
from ccdflow import library as ccd_library
from ccdflow import plan as ccd_plan
from ccdflow import reference as ccd_reference
from ccdflow import sections as ccd_sections
from ccdflow import select as ccd_select
from ccdflow import workdir as ccd_workdir
from ccdflow.config import ConfigError, check as check_config

try:  # one line naming the key, before Snakemake's validate (which fills defaults)
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
validate(config, schema="../schemas/config.schema.yaml")

VERSION = ccdflow.__version__
RAW_DIR = Path(config["raw_dir"]).expanduser() if config["raw_dir"] else None
if RAW_DIR is None or not RAW_DIR.is_dir():
    raise WorkflowError(
        f"raw_dir {config['raw_dir']!r} is not a directory. Point ccdflow at your frames: "
        "snakemake --cores all --config raw_dir=/path/to/night"
    )
OVERSCAN = config["overscan"] if config["overscan"]["enabled"] else None
try:
    INVENTORY = ccd_inventory.scan(
        RAW_DIR,
        config["inventory"],
        cache_path="results/index/header_cache.pkl",
        grouping=config["group_by"],
        detector=config["detector"],
        overscan=OVERSCAN,
    )
except ccd_sections.SectionError as exc:  # a configured section that is none
    raise WorkflowError(f"{exc}; fix it in the configuration") from None
REJECTED_COLUMNS = ("path", "reason", "detail")
if not INVENTORY.frames:
    ccd_inventory.write_tsv("results/index/rejected.tsv", INVENTORY.rejected, REJECTED_COLUMNS)
    raise WorkflowError(
        f"no usable frames in {RAW_DIR}: {ccd_inventory.rejection_summary(INVENTORY.rejected)}."
        " See results/index/rejected.tsv; check inventory.extensions and the keywords"
    )
try:
    LIBRARY, _library_skipped = ccd_library.scan_library(
        config["calibration"]["library"],
        overscan=OVERSCAN is not None,
        utc_offset_hours=config["calibration"]["night_utc_offset_hours"],
    )
except FileNotFoundError as exc:
    raise WorkflowError(str(exc)) from None
try:
    PLAN = ccd_plan.make_plan(INVENTORY, config["calibration"], OVERSCAN, LIBRARY)
except ccd_plan.PlanError as exc:
    # the frame table is still written, so the user can see what was found
    ccd_inventory.write_tsv("results/index/rejected.tsv", INVENTORY.rejected, REJECTED_COLUMNS)
    ccd_inventory.write_tsv("results/index/frames.tsv", INVENTORY.frames, ccd_inventory.COLUMNS)
    raise WorkflowError(str(exc)) from None
# calibration.illumination when enabled, else None (so its other keys rerun nothing)
ILLUMINATION = (
    config["calibration"]["illumination"]
    if config["calibration"]["illumination"]["enabled"]
    else None
)
# Tags of the master flats that are sky/dome combinations (a pattern that matches
# nothing when there are none)
COMBINED_FLAT_TAGS = (
    "|".join(
        re.escape(name.removeprefix("flat_")) for name, m in PLAN.masters.items() if m.components
    )
    or "(?!)"
)
REJECTED = INVENTORY.rejected + PLAN.rejected
ccd_inventory.write_tsv("results/index/rejected.tsv", REJECTED, REJECTED_COLUMNS)
try:
    REFERENCES, REFERENCE_SETS, REFERENCE_FRAMES = ccd_plan.reference_sets(
        PLAN.lights, config["align"]["reference"], config["align"]["reference_frames"]
    )
except ccd_plan.PlanError as exc:
    raise WorkflowError(str(exc)) from None
# detector values taken from results/qc/detector.json, and the configuration that gives
# the values measure_detector compares its measurements with (the header's for these)
MEASURED = ccd_plan.measured(config["detector"])
HEADER_DETECTOR = config["detector"] | {k: "header" for k in MEASURED}


ccd_inventory.write_tsv(
    "results/index/frames.tsv",
    ccd_plan.frame_table(
        INVENTORY.frames, PLAN, REFERENCES, config["calibration"]["night_utc_offset_hours"]
    ),
    ccd_inventory.COLUMNS + ccd_plan.FRAME_TABLE_COLUMNS,
)
CALIBRATION_ROWS = {r["frame"]: r for r in ccd_plan.calibration_table(PLAN, REFERENCES)}
ccd_inventory.write_tsv(
    "results/index/calibration.tsv",
    list(CALIBRATION_ROWS.values()),
    ccd_plan.CALIBRATION_TABLE_COLUMNS,
)
GROUPS = PLAN.groups()
for _message in PLAN.warnings:
    print(f"ccdflow: {_message}", file=sys.stderr)
for _r in REJECTED:
    print(f"ccdflow: skipped {_r['path']}: {_r['reason']} {_r['detail']}", file=sys.stderr)
for _r in _library_skipped:
    print(f"ccdflow: library: skipped {_r['path']}: {_r['detail']}", file=sys.stderr)
BPM_MASTERS = ccd_plan.bad_pixel_map_masters(PLAN)
_orphans = ccd_workdir.orphaned_products(
    ".",
    PLAN.lights,
    GROUPS,
    [m.path for m in PLAN.masters.values()]
    + [f"results/masters/bpm_{setup}.fits" for setup in BPM_MASTERS],
    REFERENCE_SETS,
)
if _orphans:
    print(
        f"ccdflow: {len(_orphans)} products belong to no frame of {RAW_DIR} any more (raw"
        f" file deleted or renamed?); kept and not used, delete them if unwanted: "
        + ", ".join(_orphans),
        file=sys.stderr,
    )
FUTURE = ccd_inventory.future_mtimes(RAW_DIR, INVENTORY.frames)
for _path, _mtime in FUTURE.items():
    print(
        f"ccdflow: {_path} was modified in the future ({time.ctime(_mtime)}; the clock of"
        " the computer that wrote it is wrong?): used, but not as a Snakemake input",
        file=sys.stderr,
    )


USER_MAP = config["badpix"]["user_map"]
if USER_MAP and not Path(USER_MAP).expanduser().is_file():
    raise WorkflowError(
        f"badpix.user_map {USER_MAP!r} is not a file (a FITS image, non-zero = bad pixel;"
        " a relative path is relative to the working directory); fix it or set it to null"
    )


wildcard_constraints:
    tag=r"[A-Za-z0-9.+-][A-Za-z0-9._+-]*",
    reference=r"[A-Za-z0-9.+-][A-Za-z0-9._+-]*",
    setup=r"[A-Za-z0-9.+-][A-Za-z0-9._+-]*",
    frame=r"[A-Za-z0-9.+-][A-Za-z0-9._+-]*",
    group=r"[A-Za-z0-9.+-][A-Za-z0-9._+-]*",


def _raw_inputs(paths):
    """Raw files as inputs: ``ancient`` (their content is tracked by fingerprint), and
    without the files modified in the future, which would fail Snakemake's check that
    outputs are newer than inputs."""
    return ancient([p for p in paths if p not in FUTURE])


def _master(kind, wildcards):
    name = f"{kind}_{wildcards.tag}"
    try:
        return PLAN.masters[name]
    except KeyError:
        raise WorkflowError(f"no master {name} in the plan of {RAW_DIR}") from None


def _master_path(name):
    return PLAN.spec(name).path if name else None


def master_inputs(kind):
    """Input function of make_master_{kind}: raw frames and the masters it subtracts."""

    def inputs(wildcards):
        spec = _master(kind, wildcards)
        out = {"raw": _raw_inputs([str(RAW_DIR / f["path"]) for f in spec.frames])}
        if spec.bias:
            out["bias"] = _master_path(spec.bias)
        if spec.dark:
            out["dark"] = _master_path(spec.dark)
        return out

    return inputs


def master_params(kind):
    """Parameters of make_master_{kind} that decide its result (rerun trigger)."""

    def frames(wildcards):
        spec = _master(kind, wildcards)
        return [[str(RAW_DIR / f["path"]), f["hdu"]] for f in spec.frames]

    def fingerprints(wildcards):
        return [f["fingerprint"] for f in _master(kind, wildcards).frames]

    def dark_scales(wildcards):
        return _master(kind, wildcards).dark_scales or None

    def saturation(wildcards):
        record = _master(kind, wildcards).frames[0]
        return ccd_plan.detector(record, config["detector"])["saturation"]

    def identity(wildcards):
        return _master(kind, wildcards).identity()

    return {
        "frames": frames,
        "identity": identity,
        "fingerprints": fingerprints,
        "dark_scales": dark_scales,
        "saturation": saturation,
        "overscan": OVERSCAN,
    }


def _light(wildcards):
    try:
        return PLAN.lights[wildcards.frame]
    except KeyError:
        raise WorkflowError(f"{wildcards.frame} is not a light frame of {RAW_DIR}") from None


def frame_inputs(wildcards):
    """Input function of process_frame: the raw frame, its masters, and the reference
    file of its reference set (which carries the reference's star list)."""
    row = _light(wildcards)
    out = {"raw": _raw_inputs([str(RAW_DIR / row["record"]["path"])])}
    for kind in ("bias", "dark", "flat"):
        if row[kind]:
            out[kind] = _master_path(row[kind])
    out["reference"] = f"results/references/{REFERENCES[wildcards.frame]}.json"
    if MEASURED and row["record"]["setup"] in detector_setups():
        # detector.gain / read_noise: measured (a new bias or flat reruns these frames)
        out["detector"] = "results/qc/detector.json"
    if USER_MAP:
        out["user_map"] = USER_MAP
    return out


def frame_calibration(wildcards):
    """What process_frame needs to calibrate its frame, from the plan and the config."""
    row = _light(wildcards)
    record = row["record"]
    return {
        "hdu": record["hdu"],
        "dark_scale": row["dark_scale"],
        "fingerprint": record["fingerprint"],
        "night": row["night"],
        "candidates": ccd_plan.candidates_text(row, informative_only=True),
        **ccd_plan.detector(record, config["detector"]),
        "detector_sources": ccd_plan.detector_sources(record, config["detector"]),
        "read_noise_max_ratio": config["detector"]["read_noise_max_ratio"],
        "pixel_scale": config["detector"]["pixel_scale"],
        "setup": record["setup"],
        "measured": list(MEASURED),
    }


def frame_raw(wildcards):
    """The raw file of a light, as a Path: Snakemake cannot serialise it, so it is no
    rerun trigger (the fingerprint is), and it reaches the job even when it is no input."""
    return RAW_DIR / _light(wildcards)["record"]["path"]


def frame_align(wildcards):
    """The ``align`` configuration the frame job uses (the reference's choice is the
    reference file's, so its keys are no rerun trigger of the frame jobs)."""
    skip = ("reference", "reference_candidates", "reference_frames")
    return {k: v for k, v in config["align"].items() if k not in skip}


_CANDIDATES = {}


def _reference_candidates(name):
    """Candidate frame ids of reference set ``name``: those its existing file lists while
    they are all still in the set, so new frames never move the reference (cached: the
    file is read once per parse)."""
    if name not in _CANDIDATES:
        try:
            members = REFERENCE_SETS[name]
        except KeyError:
            raise WorkflowError(f"no reference set {name} in {RAW_DIR}") from None
        _CANDIDATES[name] = ccd_reference.candidates(
            members,
            ccd_reference.read_candidates(f"results/references/{name}.json"),
            config["align"]["reference_candidates"],
            REFERENCE_FRAMES.get(name),
        )
    return _CANDIDATES[name]


def reference_inputs(wildcards):
    """Input function of choose_reference: the raw frames of its candidates."""
    frames = _reference_candidates(wildcards.reference)
    return _raw_inputs([str(RAW_DIR / PLAN.lights[f]["record"]["path"]) for f in frames])


def reference_frames(wildcards):
    """The candidates as choose_reference measures them (their fingerprints: a candidate
    re-copied with other bytes chooses again)."""
    out = []
    for frame in _reference_candidates(wildcards.reference):
        record = PLAN.lights[frame]["record"]
        values = ccd_plan.detector(record, config["detector"])
        out.append(
            {
                "frame": frame,
                "raw": str(RAW_DIR / record["path"]),
                "hdu": record["hdu"],
                "fingerprint": record["fingerprint"],
                "gain": values["gain"],
                "saturation": values["saturation"],
            }
        )
    return out


def reference_override(wildcards):
    return wildcards.reference in REFERENCE_FRAMES


def reference_detection(wildcards=None):
    return {k: v for k, v in config["align"].items() if k in ccd_reference.DETECT_KEYS}


def frame_group(wildcards):
    return _light(wildcards)["record"]["group"]


def _members(wildcards):
    try:
        return GROUPS[wildcards.group]
    except KeyError:
        raise WorkflowError(f"no stack group {wildcards.group} in {RAW_DIR}") from None


def group_records(wildcards):
    """The records of a stack group's frames."""
    return [f"results/records/{frame}.json" for frame in _members(wildcards)]


def group_aligned(wildcards):
    """The aligned frames of a stack group."""
    return [f"results/aligned/{frame}.fits" for frame in _members(wildcards)]


def group_frame_files(wildcards):
    """Per frame of a group: its aligned product and its raw file (for the selection)."""
    out = {}
    for frame in _members(wildcards):
        r = PLAN.lights[frame]["record"]
        out[frame] = {
            "aligned": f"results/aligned/{frame}.fits",
            "raw": str(RAW_DIR / r["path"]),
            "hdu": r["hdu"],
        }
    return out


def group_selection(wildcards):
    """The selection configuration as this group sees it (rerun trigger of its own)."""
    members = _members(wildcards)
    raws = {f: PLAN.lights[f]["record"]["path"] for f in members}
    return ccd_select.group_config(config["selection"], raws)


def group_raw(wildcards):
    """The raw frames of a stack group (content tracked by fingerprint, see params)."""
    records = [PLAN.lights[f]["record"] for f in _members(wildcards)]
    return _raw_inputs([str(RAW_DIR / r["path"]) for r in records])


def group_fingerprints(wildcards):
    return [PLAN.lights[f]["record"]["fingerprint"] for f in _members(wildcards)]


def sky_dome_inputs(wildcards):
    """Input function of combine_sky_dome_flat: the sky and the dome master flat."""
    spec = _master("flat", wildcards)
    return {part: _master_path(name) for part, name in spec.components.items()}


def sky_dome_identity(wildcards):
    return _master("flat", wildcards).identity()


def bpm_inputs(wildcards):
    """Input function of make_bad_pixel_map: the setup's master darks and flats."""
    try:
        out = {"masters": BPM_MASTERS[wildcards.setup]}
    except KeyError:
        raise WorkflowError(f"no master dark or flat of setup {wildcards.setup}") from None
    if USER_MAP:
        out["user_map"] = USER_MAP
    return out


def master_records(wildcards):
    """Input function of collect_calibration_qc: the JSON record of every master made."""
    return [f"results/masters/{name}.json" for name in sorted(PLAN.masters)]


def detector_setups(wildcards=None):
    """Per detector setup, the raw biases and flats (per filter) of this run's masters and
    the gain and read noise the headers (or config) give: what measure_detector needs."""
    setups = {}
    for spec in PLAN.masters.values():
        if spec.kind not in ("bias", "flat"):
            continue
        entry = setups.setdefault(spec.setup, {"bias": [], "flats": {}})
        frames = [[str(RAW_DIR / f["path"]), f["hdu"]] for f in spec.frames]
        if spec.kind == "bias":
            entry["bias"] = frames
            values = ccd_plan.detector(spec.frames[0], HEADER_DETECTOR)
            entry["header"] = {k: values[k] for k in ("gain", "read_noise")}
        elif frames:  # sky and dome flats apart: their illuminations differ
            key = f"{spec.filter}_{spec.flat_kind}" if spec.flat_kind else spec.filter
            entry["flats"][key] = frames
    return {s: e for s, e in setups.items() if len(e["bias"]) >= 2}


def detector_inputs(wildcards):
    setups = detector_setups()
    paths = [p for e in setups.values() for p, _ in e["bias"]]
    paths += [p for e in setups.values() for fr in e["flats"].values() for p, _ in fr]
    return _raw_inputs(paths)


def final_outputs():
    """Every product of a full run."""
    masters = [m.path for m in PLAN.masters.values()]
    frames = [f"results/records/{frame}.json" for frame in sorted(PLAN.lights)]
    stacks = [f"results/stacks/{g}.fits" for g in GROUPS]
    raw_stacks = [f"results/stacks/raw/{g}.fits" for g in GROUPS]
    previews = [f"results/qc/previews/{g}.png" for g in GROUPS]
    qc = ["results/qc/frames.tsv", "results/report/index.html"] if GROUPS else []
    qc += ["results/qc/calibration.tsv"] if PLAN.masters else []
    detector = ["results/qc/detector.json"] if detector_setups() else []
    bpm = [f"results/masters/bpm_{setup}.fits" for setup in BPM_MASTERS]
    return masters + bpm + frames + stacks + raw_stacks + previews + qc + detector


def report_inputs(wildcards):
    """Input function of make_report: every product the night report shows."""
    return {
        "records": [f"results/records/{frame}.json" for frame in sorted(PLAN.lights)],
        "selections": [f"results/selection/{g}.json" for g in GROUPS],
        "parts": [f"results/report/parts/groups/{g}.json" for g in GROUPS],
        "previews": [f"results/qc/previews/{g}.png" for g in GROUPS],
        "stacks": [f"results/stacks/{g}.fits" for g in GROUPS],
        "raw_stacks": [f"results/stacks/raw/{g}.fits" for g in GROUPS],
        "masters": "results/report/parts/masters.json",
        "qc": "results/qc/frames.tsv",
        "frames": "results/index/frames.tsv",
        "rejected": "results/index/rejected.tsv",
        "calibration": "results/index/calibration.tsv",
        "detector": ["results/qc/detector.json"] if detector_setups() else [],
    }


def report_group_inputs(wildcards):
    """Input function of report_group: the group's records and selection, and one of its
    calibrated frames (shown with its cosmic-ray mask)."""
    frames = sorted(_members(wildcards))
    return {
        "records": group_records(wildcards),
        "selection": f"results/selection/{wildcards.group}.json",
        "cosmics": f"results/calibrated/{frames[0]}.fits",
    }


def report_group_frames(wildcards):
    """Per frame of the group: its calibration.tsv row and its DATE-OBS. A parameter, not
    the tables (which change with every new frame), so that only its group is redrawn."""
    return {
        frame: CALIBRATION_ROWS[frame] | {"date": PLAN.lights[frame]["record"].get("date", "")}
        for frame in sorted(_members(wildcards))
    }


def _cancel_rescheduling_timers():
    """End the run now instead of up to one rate-limit timespan later.

    Snakemake's job-rate limiter (``--max-jobs-per-timespan``: 100/1s by default, 1000/10s
    in our profiles) arms a ``threading.Timer`` of one timespan after every scheduling
    round. Those threads are not daemons, so the finished workflow waits for the last of
    them before it exits (with 100/1s: 1.8 s -> 0.75 s on a one-rule Snakefile). When the
    workflow is over nothing is left to reschedule, so the pending timers are cancelled.
    """
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()


onsuccess:
    _cancel_rescheduling_timers()


onerror:
    _cancel_rescheduling_timers()
