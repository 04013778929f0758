"""Incremental cost: one new light frame on a large night.

Target (issue): adding one light frame to a 1,000-frame night costs at most 1.2x the time
of processing that one frame plus re-stacking its group.

1. A night of ``--lights`` light frames (2 filters x 2 exposures, small 96x128 frames so
   the arithmetic is cheap and what is measured is the workflow) plus its calibrations
   is generated once in ``--workdir``; one light frame is held back.
2. The night is reduced once (the default target: masters, frames, stacks, raw stacks,
   previews, QC table). Its wall time is recorded.
3. The held-back frame is copied in and the same command runs again: ``incremental_s``
   is its wall time, and the jobs it ran are read from the Snakemake log. (Between
   repeats the frame is removed again, its products deleted, and the workflow run
   without it.)
4. ``baseline_s`` is what the issue compares with: the processing of that one frame and
   the re-stacking of its group, i.e. the run times of its frame job (``process_frame``:
   calibrate, clean, align) and of its group's ``select_frames`` and ``stack_group`` jobs
   from their ``benchmark:`` files (each is the wall time of the job's own process,
   start-up included).
   ``ratio = incremental_s / baseline_s``.

Steps 3-4 are repeated ``--repeat`` times; the run without the frame between repeats is
timed as ``removal_s``. The time Snakemake spends before
the first job (start-up, parse, DAG of all jobs, checking every output) is reported as
``dry_run_s`` (the same command with ``-n``).

Usage::

    python benchmarks/bench_incremental.py [--lights 1000] [--repeat 3] [--workdir DIR]

Results: ``benchmarks/results/incremental.json``.
"""

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "scripts"))


def _snakemake(work, raw, *args, cores=2):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    cmd += ["--directory", str(work), "--cores", str(cores), "--config", f"raw_dir={raw}", *args]
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def _jobs_run(log):
    """rule -> number of jobs a real run executed (from its 'rule X:' lines)."""
    counts = {}
    for rule in re.findall(r"^(?:local)?rule (\w+):$", log, re.M):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def _bench_seconds(path):
    with open(path) as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    return float(row["s"])


def _forget(work, frame_id):
    """Delete the products of a frame, so that adding it again makes it new (its outputs
    would otherwise still be there and up to date, and rightly not be made again)."""
    for pattern in (
        f"results/calibrated/{frame_id}.fits",
        f"results/aligned/{frame_id}.fits",
        f"results/records/{frame_id}.json",
    ):
        for path in work.glob(pattern):
            path.unlink()


def _night(workdir, lights, preset):
    from ccdflow import demo

    per_group = max(1, lights // 4)
    night = workdir / "night"
    raw = night / "raw"
    held = workdir / "held"
    if not raw.is_dir():
        print(f"generating a night of {per_group * 4} light frames in {night}", flush=True)
        demo.make_night(night, preset=preset, seed=3, n_lights=per_group)
    if not held.is_dir():
        held.mkdir()
        last = sorted(raw.glob("light_*V_060s_*.fit*"))[-1]
        shutil.move(str(last), held / last.name)
    (frame,) = list(held.iterdir())
    return raw, frame


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lights", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--preset",
        default="test",
        help="demo preset of the frames: test (96x128, default) or demo (512x512)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ccdflow-bench-incremental"))
    parser.add_argument("--out", type=Path, default=HERE / "results/incremental.json")
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    raw, frame = _night(args.workdir, args.lights, args.preset)
    work = args.workdir / "work"
    work.mkdir(exist_ok=True)
    n_raw = len(list(raw.iterdir()))
    print(f"{n_raw} raw frames; full reduction (once) ...", flush=True)
    full_s, log = _snakemake(work, raw)
    print(f"  full run {full_s:.1f} s: {_jobs_run(log)}", flush=True)

    results = []
    stem = frame.name.split(".")[0]
    for path in (work / "results/calibrated").glob(f"{stem}*.fits"):
        _forget(work, path.stem)  # left by an interrupted run of this benchmark
    for i in range(args.repeat):
        dry_s, _ = _snakemake(work, raw, "-n")
        shutil.copy2(frame, raw / frame.name)
        inc_s, log = _snakemake(work, raw)
        jobs = _jobs_run(log)
        ids = [f for f in os.listdir(work / "results/calibrated") if f.startswith(stem)]
        frame_id = ids[0].removesuffix(".fits")
        record = json.loads((work / f"results/records/{frame_id}.json").read_text())
        group = record["group"]
        bench = work / "benchmarks"
        parts = {
            "process_frame": _bench_seconds(bench / f"process_frame/{frame_id}.tsv"),
            "select_frames": _bench_seconds(bench / f"select_frames/{group}.tsv"),
            "stack_group": _bench_seconds(bench / f"stack_group/{group}.tsv"),
        }
        baseline = sum(parts.values())
        # Also rerun by the table, not part of the baseline: the raw stack of the group.
        raw_stack_s = _bench_seconds(bench / f"stack_raw_group/{group}.tsv")
        (raw / frame.name).unlink()
        _forget(work, frame_id)
        removal_s, _ = _snakemake(work, raw)
        row = {
            "incremental_s": inc_s,
            "baseline_s": baseline,
            "ratio": inc_s / baseline,
            "parts_s": parts,
            "stack_raw_group_s": raw_stack_s,
            "dry_run_s": dry_s,
            "removal_s": removal_s,
            "jobs_run": jobs,
            "group": group,
        }
        results.append(row)
        print(
            f"repeat {i + 1}: incremental {inc_s:.2f} s, baseline {baseline:.2f} s "
            f"({', '.join(f'{k} {v:.2f}' for k, v in parts.items())}), "
            f"ratio {row['ratio']:.2f}; dry run {dry_s:.2f} s; jobs {jobs}",
            flush=True,
        )

    def summary(key):
        values = [r[key] for r in results]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    out = {
        "preset": args.preset,
        "n_raw_frames": n_raw,
        "n_lights": len([p for p in raw.iterdir() if p.name.startswith("light")]) + 1,
        "full_run_s": full_s,
        "incremental_s": summary("incremental_s"),
        "baseline_s": summary("baseline_s"),
        "ratio": summary("ratio"),
        "dry_run_s": summary("dry_run_s"),
        "removal_s": summary("removal_s"),
        "target_ratio": 1.2,
        "repeats": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(
        f"ratio median {out['ratio']['median']:.2f} "
        f"({out['ratio']['min']:.2f}-{out['ratio']['max']:.2f}); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
