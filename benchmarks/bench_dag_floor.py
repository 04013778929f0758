"""What Snakemake alone costs for a no-op dry run of one job per frame (issue 11, target 4).

Target 4 asks for ``snakemake -n`` on the 10,000-frame directory of ``bench_parse.py`` in
at most 10 s. This benchmark separates what ccdflow adds from what any Snakefile of the
same size pays, on the same directory (8,000 lights in 32 groups of 250), with the header
cache of ccdflow warm. Three workflows, each a dry run from the same working directory,
alternated, ``--repeat`` times:

- ``bare``: the smallest one-job-per-frame workflow: one rule per light (its raw file and
  one master as input, one output, a constant ``params``) and one stack per group.
- ``shape``: the shape of ccdflow's DAG with trivial input functions and no parse: the
  frame job with three outputs, a log, a benchmark, resources, six ``params``, and the
  record of its group's reference as input; per group a selection (all its records), a
  stack (selection + aligned frames) and a raw stack (selection + raw frames); a QC table
  and a report over every record.
- ``ccdflow``: ``snakemake -n`` with the project's Snakefile (parse included).

Reported per workflow: median (min-max) wall time and CPU time (user + system of the
child), in seconds. CPU time is the steadier number on a shared machine.

Usage::

    python benchmarks/bench_dag_floor.py [--frames 10000] [--repeat 3]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_parse import make_frames  # noqa: E402

_HEAD = """import glob, os
RAW = sorted(glob.glob({raw!r} + "/*/*.fits"))
LIGHTS = {{os.path.basename(p)[:-5]: p for p in RAW if "light" in os.path.basename(p)}}
GROUPS = {{}}
for i, f in enumerate(sorted(LIGHTS)):
    GROUPS.setdefault(f"g{{i % 32}}", []).append(f)
REF = {{f: fs[0] for fs in GROUPS.values() for f in fs}}
"""

BARE = """
rule all:
    input:
        [f"stacks/{g}.fits" for g in GROUPS],

rule frame:
    input:
        raw=lambda w: LIGHTS[w.frame],
        bias="masters/bias.fits",
    output:
        "records/{frame}.json",
    params:
        cfg={"a": 1, "b": [1, 2]},
    script:
        "s.py"

rule stack:
    input:
        lambda w: [f"records/{f}.json" for f in GROUPS[w.group]],
    output:
        "stacks/{group}.fits",
    script:
        "s.py"

rule bias:
    output:
        "masters/bias.fits",
    script:
        "s.py"
"""

SHAPE = """
rule all:
    input:
        [f"stacks/{g}.fits" for g in GROUPS],
        [f"records/{f}.json" for f in sorted(LIGHTS)],
        "report.html",

rule frame:
    input:
        raw=lambda w: LIGHTS[w.frame],
        bias="masters/bias.fits",
        ref=lambda w: [] if REF[w.frame] == w.frame else [f"records/{REF[w.frame]}.json"],
    output:
        rec="records/{frame}.json",
        cal="calibrated/{frame}.fits",
        ali="aligned/{frame}.fits",
    log:
        "logs/{frame}.log",
    benchmark:
        "bench/{frame}.tsv"
    resources:
        mem_mb=1500,
    params:
        cfg={"a": 1, "b": [1, 2]},
        raw=lambda w: LIGHTS[w.frame],
        cal=lambda w: {"hdu": 0, "scale": 1.0, "frame": w.frame, "gain": 1.2},
        ref=lambda w: REF[w.frame],
        group=lambda w: "g",
        version="0",
    script:
        "s.py"

rule select:
    input:
        lambda w: [f"records/{f}.json" for f in GROUPS[w.group]],
    output:
        "sel/{group}.json",
    script:
        "s.py"

rule stack:
    input:
        "sel/{group}.json",
        lambda w: [f"aligned/{f}.fits" for f in GROUPS[w.group]],
    output:
        "stacks/{group}.fits",
    script:
        "s.py"

rule rawstack:
    input:
        "sel/{group}.json",
        lambda w: [LIGHTS[f] for f in GROUPS[w.group]],
    output:
        "raw/{group}.fits",
    script:
        "s.py"

rule qc:
    input:
        [f"records/{f}.json" for f in sorted(LIGHTS)],
        [f"sel/{g}.json" for g in GROUPS],
    output:
        "qc.tsv",
    script:
        "s.py"

rule report:
    input:
        [f"records/{f}.json" for f in sorted(LIGHTS)],
        [f"stacks/{g}.fits" for g in GROUPS],
        [f"raw/{g}.fits" for g in GROUPS],
        "qc.tsv",
    output:
        "report.html",
    script:
        "s.py"

rule bias:
    output:
        "masters/bias.fits",
    script:
        "s.py"
"""


def _dry_run(snakefile, workdir, config=()):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-n", "-q"]
    cmd += ["--directory", str(workdir), *config]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _summary(values):
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=Path(tempfile.gettempdir()) / "ccdflow-bench-parse")
    ap.add_argument("--out", default=HERE / "results" / "dag_floor.json")
    args = ap.parse_args(argv)

    raw = make_frames(Path(args.data) / f"raw{args.frames}", args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "s.py").write_text("pass\n")
        flows = {}
        for name, body in (("bare", BARE), ("shape", SHAPE)):
            path = tmp / f"Snakefile.{name}"
            path.write_text(_HEAD.format(raw=str(raw)) + body)
            flows[name] = (path, tmp, ())
        work = tmp / "ccdflow"
        work.mkdir()
        flows["ccdflow"] = (REPO / "Snakefile", work, ("--config", f"raw_dir={raw}"))
        _dry_run(*flows["ccdflow"])  # fill ccdflow's header cache: a warm no-op run
        runs = {name: {"wall": [], "cpu": []} for name in flows}
        for i in range(args.repeat):
            for name, flow in flows.items():
                wall, cpu = _dry_run(*flow)
                runs[name]["wall"].append(wall)
                runs[name]["cpu"].append(cpu)
                print(f"run {i + 1} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr)
    result = {
        "frames": args.frames,
        "repeat": args.repeat,
        "seconds": {name: {k: _summary(v) for k, v in r.items()} for name, r in runs.items()},
        "runs_s": {
            name: {k: [round(x, 2) for x in v] for k, v in r.items()} for name, r in runs.items()
        },
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
