"""Per-job overhead of the frame job (rule ``process_frame``: calibrate, clean, align).

Two views, both medians of ``--repeat`` runs, measurements alternated so that load on a
shared machine hits every variant alike:

1. **Per job in Snakemake** (what a user pays): on a small generated night (96x128
   pixels, so arithmetic takes milliseconds), everything is built once, then
   ``snakemake RECORDS --cores 1 --forcerun process_frame`` reruns exactly the N frame
   jobs (checked after each run from the benchmark files Snakemake wrote).
   ``per_job = (wall - wall of the same command with -n) / N``: the dry run pays
   start-up, parse and DAG but runs no job. The same is done with a
   one-rule Snakefile of N ``shell: "true"`` jobs and N empty ``script:`` jobs, the
   floor any rule pays in Snakemake.
2. **Breakdown** (where it goes): fresh ``python -c`` processes timing Python start-up,
   ``import snakemake.script`` (what the preamble of a ``script:`` job loads before it
   unpickles the job), ``import ccdflow.framejob``, everything the frame job imports but
   scipy (``frame_job_without_scipy``), the same with what it has imported by its end
   (``frame_job_deps``: astroalign's ``scipy.spatial`` and ``skimage.transform``,
   L.A.Cosmic's ``scipy.ndimage``), ``scipy.spatial`` alone, and ``astropy.io.fits``
   (which the fast FITS path avoids). These processes get one thread per library
   (``OPENBLAS_NUM_THREADS=1`` ...), as Snakemake gives a job of one thread.

The target (issue 11) is a per-job overhead of at most 0.3 s for ``process_frame``: on
96x128 frames its pixel work is a few milliseconds, so ``per_job_s.process_frame`` is the
overhead, beside ``empty_script_job``, the floor of any Snakemake ``script:`` job.

``--repo`` points at another checkout (e.g. a copy with the old io.py/tasks.py) to get
"before" numbers with the same harness.

Usage::

    python benchmarks/bench_overhead.py [--frames 10] [--repeat 5] [--out results/overhead.json]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = ("process_frame",)
_FRAME_JOB = (
    "import ccdflow.framejob, ccdflow.calibrate, ccdflow.cosmics, ccdflow.align,"
    " ccdflow.metrics, ccdflow.reference, astroscrappy, sep, cv2, astroalign"
)
IMPORTS = {
    "python_startup": "pass",
    "numpy": "import numpy",
    "snakemake_script_preamble": "import snakemake.script",
    "ccdflow_framejob": "import ccdflow.framejob",
    # Everything the frame job imports but scipy; then what it has imported by its end:
    # astroalign's KDTree (scipy.spatial, also the metrics' nearest neighbours) and
    # estimate_transform (skimage.transform), L.A.Cosmic's scipy.ndimage.
    "frame_job_without_scipy": _FRAME_JOB,
    "frame_job_deps": _FRAME_JOB + ", scipy.spatial, scipy.ndimage, skimage.transform",
    "scipy_spatial": "import numpy, scipy.spatial",
    "scipy_special": "import scipy.special",
    "astropy_io_fits": "import astropy.io.fits",
}


_THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _env():
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    return env


def _wall(cmd, cwd):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return wall


def _smk(repo, workdir, raw, *args, targets=()):
    # Targets go first: --quiet, --forcerun and --config each take any number of values,
    # so targets after one of them would be read as its values (the default target, the
    # whole night, would run instead).
    return [
        sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), *targets,
        "--directory", str(workdir), "--cores", "1", "--quiet", *args,
        "--config", f"raw_dir={raw}",
    ]  # fmt: skip


_TRIVIAL = """
N = {n}
rule all:
    input: expand("shell/{{i}}", i=range(N)), expand("script/{{i}}", i=range(N))
rule shell_job:
    output: "shell/{{i}}"
    shell: "touch {{output}}"
rule script_job:
    output: "script/{{i}}"
    script: "empty.py"
"""


def _trivial(folder, n):
    """A Snakefile of n shell jobs and n script jobs that do nothing but touch."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Snakefile").write_text(_TRIVIAL.format(n=n))
    (folder / "empty.py").write_text("open(snakemake.output[0], 'w').close()\n")
    return folder


def _check_ran(work, since, expected):
    """The jobs a timed run ran, from the benchmark files Snakemake wrote, must be the
    ones its time is divided by."""
    ran = {}
    for tsv in (work / "benchmarks").rglob("*.tsv"):
        if tsv.stat().st_mtime >= since:
            rule = tsv.relative_to(work / "benchmarks").parts[0]
            ran[rule] = ran.get(rule, 0) + 1
    if ran != expected:
        raise RuntimeError(f"the timed run ran {ran}, expected {expected}")


def _import_time(repo, code):
    cmd = [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(repo / 'scripts')!r}); {code}",
    ]
    # One thread per library, as Snakemake's shell() sets them for a job of one thread
    # (without, OpenBLAS's idle threads double the CPU time of a scipy import).
    env = _env() | {k: "1" for k in _THREAD_VARS}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True)
    # An older checkout (--repo) may lack a module: that entry is left out, not fatal.
    return time.perf_counter() - t0 if proc.returncode == 0 else None


def _night(folder, n_lights):
    sys.path.insert(0, str(HERE.parent / "scripts"))
    from ccdflow import demo

    raw = folder / "raw"
    if not raw.is_dir():
        demo.make_night(folder, preset="test", n_lights=n_lights)
    return raw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10, help="light frames (n_lights of demo)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--repo", default=HERE.parent, help="checkout to measure")
    ap.add_argument("--out", default=HERE / "results" / "overhead.json")
    args = ap.parse_args(argv)
    repo = Path(args.repo).resolve()

    with tempfile.TemporaryDirectory(prefix="ccdflow-overhead-") as tmp:
        tmp = Path(tmp)
        raw = _night(tmp / "night", args.frames)
        work = tmp / "work"
        work.mkdir()
        t0 = time.perf_counter()
        _wall(_smk(repo, work, raw), work)  # build everything once
        print(f"full run {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        n_jobs = {r: len(list((work / "logs" / r).rglob("*.log"))) for r in RULES}
        targets = sorted(str(p.relative_to(work)) for p in (work / "results/records").glob("*"))
        trivial = _trivial(tmp / "trivial", args.frames)
        names = (*RULES, *(f"{r}_dry" for r in RULES), "trivial_shell", "trivial_script")
        runs = {k: [] for k in (*names, "trivial_noop")}
        imports = {k: [] for k in IMPORTS}
        for i in range(args.repeat):
            for rule in RULES:
                # The records as targets: `--until process_frame` would stop after the
                # group references (the other frames' jobs need their records, so
                # Snakemake counts them as past the --until point).
                forced = _smk(repo, work, raw, "--forcerun", rule, targets=targets)
                runs[f"{rule}_dry"].append(_wall([*forced, "-n"], work))
                started = time.time()
                runs[rule].append(_wall(forced, work))
                _check_ran(work, started, {rule: n_jobs[rule]})
            for kind in ("shell", "script"):
                shutil.rmtree(trivial / kind, ignore_errors=True)
                cmd = [sys.executable, "-m", "snakemake", "-s", str(trivial / "Snakefile"),
                       "--cores", "1", "--quiet", "--forcerun", f"{kind}_job",
                       "--until", f"{kind}_job"]  # fmt: skip
                runs[f"trivial_{kind}"].append(_wall(cmd, trivial))
            cmd = [sys.executable, "-m", "snakemake", "-s", str(trivial / "Snakefile"),
                   "--cores", "1", "--quiet"]  # fmt: skip
            runs["trivial_noop"].append(_wall(cmd, trivial))
            for key, code in IMPORTS.items():
                imports[key].append(_import_time(repo, code))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()),
                  file=sys.stderr)  # fmt: skip

    med = {k: statistics.median(v) for k, v in runs.items()}
    per_job = {
        rule: round((med[rule] - med[f"{rule}_dry"]) / max(n_jobs[rule], 1), 3) for rule in RULES
    }
    for kind in ("shell", "script"):
        per_job[f"empty_{kind}_job"] = round(
            (med[f"trivial_{kind}"] - med["trivial_noop"]) / args.frames, 3
        )
    result = {
        "repo": str(repo),
        "frames": args.frames,
        "jobs_per_rule": n_jobs,
        "repeat": args.repeat,
        "per_job_s": per_job,
        "import_process_median_s": {
            k: round(statistics.median(t), 3) if (t := [x for x in v if x is not None]) else None
            for k, v in imports.items()
        },
        "wall_median_s": {k: round(v, 3) for k, v in med.items()},
        "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
