"""End-to-end benchmark: ccdflow vs Siril 1.0.x vs a plain ccdproc script on one generated night.

    python benchmarks/bench_e2e.py [--workdir DIR] [--repeats 3] [--skip-siril] [--skip-ccdproc]

Generates the "benchmark" demo night once (2048x2048, 10 bias, 10 darks of 60 s, 10 flats in
each of V and R, 8 lights of 60 s per filter) into WORKDIR/night (kept and reused), then runs
REPEATS rounds. Each round runs, in this order and each from a clean output folder:

  ccdflow       snakemake ... --until stack_group with cosmics.enabled: false: masters,
                one frame job per light (calibrated and aligned frames, records), the
                selections, stacks; the stages Siril's script also does (calibration,
                alignment, stacking)
  siril         siril-cli -d WORKDIR/siril -s ../shared/bench/siril-preprocess.ssf
                (process/ and results/ wiped first)
  ccdproc       benchmarks/ccdproc_reduce.py (astropy CCD-guide style)
  ccdflow_full  the default ccdflow run: everything above plus L.A.Cosmic cleaning (in the
                frame jobs; its seconds are in each record), raw stacks, previews and the
                QC table
  ccdflow_floor (--floor) the ccdflow run on the same night at 96x128 px (WORKDIR/
                night_floor): the same jobs, processes and imports with negligible
                arithmetic, i.e. what the workflow costs before any pixel work

Measured per run: wall time, CPU time (user + system of the whole process tree, from
os.wait4), the peak RSS of the largest single process (ru_maxrss), and the peak RSS summed
over the process tree (sampled every 0.2 s with psutil). For the ccdflow runs the per-rule
job times come from the Snakemake log (start/finish stamps, 1 s resolution) and from the
rules' benchmark files. Then the stacks are compared (star count, FWHM, sky noise in ADU).
Writes benchmarks/results/e2e.json (or --json) and prints a table of medians (min-max) and
ratios.
"""

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
TOOLS = ("ccdflow", "siril", "ccdproc", "ccdflow_full", "ccdflow_floor")
#: Frame size of the floor night: the benchmark night's frames, arithmetic negligible.
FLOOR_SIZE = (96, 128)
SIRIL_DIRS = {
    "biases": "bias_*.fits",
    "darks": "dark_*.fits",
    "flats_V": "flat_V_*.fits",
    "flats_R": "flat_R_*.fits",
    "lights_V": "light_*_V_*.fits",
    "lights_R": "light_*_R_*.fits",
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- set-up
def make_night(workdir, name="night", size=None):
    """The benchmark night (or, with ``size``, the same frames at another size) in workdir."""
    night = workdir / name
    if (night / "raw").is_dir() and (night / "truth" / "truth.json").exists():
        log(f"reusing night in {night}")
        return night
    log(f"generating the benchmark night in {night}")
    shutil.rmtree(night, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "scripts"))
    cmd = [PYTHON, "-m", "ccdflow.demo", str(night), "--preset", "benchmark"]
    if size:
        cmd += ["--size", *map(str, size)]
    subprocess.run(cmd, check=True, env=env)
    return night


def make_siril_tree(workdir, raw):
    """One folder per frame type and filter (Siril 1.0 cannot select by header): symlinks."""
    root = workdir / "siril"
    for sub, pattern in SIRIL_DIRS.items():
        d = root / "raw" / sub
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        files = sorted(raw.glob(pattern))
        if not files:
            raise SystemExit(f"no {pattern} in {raw}")
        for f in files:
            (d / f.name).symlink_to(f.resolve())
    return root


# ----------------------------------------------------------------------------- measuring
def measure(cmd, log_path, cwd=None):
    """Run cmd; wall, CPU (tree), largest-process and summed-tree peak RSS."""
    import psutil

    with open(log_path, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        peak = [0]
        done = threading.Event()

        def sample():
            try:
                root = psutil.Process(proc.pid)
            except psutil.NoSuchProcess:
                return
            while not done.is_set():
                total = 0
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                peak[0] = max(peak[0], total)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
        "max_rss_mib": round(ru.ru_maxrss / 1024, 1),
        "tree_rss_mib": round(peak[0] / 2**20, 1),
        "returncode": proc.returncode,
    }


_STAMP = re.compile(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")


def snakemake_job_times(workdir):
    """Per-rule job wall times (s) from the newest Snakemake log (1 s stamps)."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return {}
    ts, rule, start, rule_of = None, None, {}, {}
    times = collections.defaultdict(list)
    for line in logs[-1].read_text().splitlines():
        m = _STAMP.match(line)
        if m:
            ts = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            continue
        m = re.match(r"(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"\s+jobid: (\d+)", line)
        if m and rule:
            start[m.group(1)], rule_of[m.group(1)], rule = ts, rule, None
            continue
        m = re.match(r"Finished jobid: (\d+)", line)
        if m and m.group(1) in start:
            jid = m.group(1)
            times[rule_of[jid]].append((ts - start[jid]).total_seconds())
    return {
        r: {"jobs": len(v), "sum_s": sum(v), "mean_s": round(sum(v) / len(v), 1)}
        for r, v in times.items()
        if r != "all"
    }


def snakemake_benchmarks(workdir):
    """The rules' benchmark: files (seconds and cpu_time per job)."""
    out = collections.defaultdict(lambda: {"jobs": 0, "s": 0.0, "cpu_time": 0.0, "max_rss": 0.0})
    for tsv in (workdir / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "benchmarks").parts[0]
        head, row = tsv.read_text().splitlines()[:2]
        rec = dict(zip(head.split("\t"), row.split("\t"), strict=False))
        o = out[rule]
        o["jobs"] += 1
        o["s"] = round(o["s"] + float(rec["s"]), 2)
        o["cpu_time"] = round(o["cpu_time"] + float(rec.get("cpu_time") or 0), 2)
        o["max_rss"] = max(o["max_rss"], float(rec.get("max_rss") or 0))
    return dict(out)


def code_fingerprint():
    """sha256 over the workflow's code and config (the tree may change between runs)."""
    import hashlib

    h = hashlib.sha256()
    for sub in ("Snakefile", "workflow", "scripts", "config"):
        root = REPO / sub
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- the runs
def run_ccdflow(workdir, raw, cores, full, name=None):
    run = workdir / (name or ("ccdflow_full" if full else "ccdflow"))
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cmd = [
        str(Path(PYTHON).with_name("snakemake")),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(run),
        "--cores",
        str(cores),
    ]
    if not full:
        # Nested override through a small configfile (deep-merged over config/config.yaml).
        cfg = workdir / "no_cosmics.yaml"
        cfg.write_text("cosmics:\n  enabled: false\n")
        cmd += ["--configfile", str(cfg), "--until", "stack_group"]
    cmd += ["--config", f"raw_dir={raw}"]
    rec = measure(cmd, workdir / f"{run.name}.log")
    rec["rules"] = snakemake_job_times(run)
    rec["benchmarks"] = snakemake_benchmarks(run)
    rec["stacks"] = sorted(str(p) for p in (run / "results" / "stacks").glob("*.fits"))
    return rec


def run_siril(workdir, script):
    root = workdir / "siril"
    shutil.rmtree(root / "process", ignore_errors=True)
    shutil.rmtree(root / "results", ignore_errors=True)
    (root / "results").mkdir()
    rec = measure(["siril-cli", "-d", str(root), "-s", str(script)], workdir / "siril.log")
    rec["stacks"] = sorted(str(p) for p in (root / "results").glob("result_*.fit"))
    return rec


def run_ccdproc(workdir, raw):
    out = workdir / "ccdproc"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [PYTHON, str(HERE / "ccdproc_reduce.py"), str(raw), str(out)]
    rec = measure(cmd, workdir / "ccdproc.log")
    rec["stacks"] = sorted(str(p) for p in (out / "stacks").glob("*.fits"))
    return rec


# ----------------------------------------------------------------------------- quality
def stack_quality(path, gain):
    """Star count (sep, 5 sigma), median FWHM of isolated unsaturated stars, sky noise (ADU)."""
    import numpy as np
    import sep
    from astropy.io import fits

    with fits.open(path) as hdul:
        data = hdul[0].data.astype(np.float64)
        unit = str(hdul[0].header.get("BUNIT", "")).strip().lower()
    name = Path(path).name
    if name.startswith("result_"):  # Siril: float in [0, 1] = ADU / 65535
        data *= 65535.0
    elif unit.startswith("electron"):  # ccdflow: electrons
        data /= gain
    ny, nx = data.shape
    cut = data[64 : ny - 64, 64 : nx - 64].copy()  # drop the dither borders
    cut[~np.isfinite(cut)] = np.nanmedian(cut)
    bkg = sep.Background(np.ascontiguousarray(cut))
    sub = cut - bkg
    objs = sep.extract(sub, 5.0, err=bkg.globalrms, minarea=5)
    peak = objs["peak"]
    ok = (objs["flag"] == 0) & (peak > 20 * bkg.globalrms) & (peak < np.percentile(peak, 90))
    # FWHM from the second moments of a Gaussian: 2.3548 * sqrt((a^2 + b^2) / 2)
    fwhm = 2.3548 * np.sqrt((objs["a"][ok] ** 2 + objs["b"][ok] ** 2) / 2)
    return {
        "stars": len(objs),
        "fwhm_px": round(float(np.median(fwhm)), 2) if ok.any() else None,
        "sky_adu": round(float(bkg.globalback), 2),
        "sky_noise_adu": round(float(bkg.globalrms), 3),
    }


# ----------------------------------------------------------------------------- report
def summarise(runs):
    summary = {}
    for tool in TOOLS:
        recs = [r for r in runs if r["tool"] == tool and r["returncode"] == 0]
        if not recs:
            continue
        s = {"n": len(recs)}
        for key in ("wall_s", "cpu_s", "max_rss_mib", "tree_rss_mib"):
            vals = [r[key] for r in recs]
            s[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        if tool.startswith("ccdflow"):
            rules = collections.defaultdict(list)
            for r in recs:
                for rule, v in r["rules"].items():
                    rules[rule].append(v["sum_s"])
            s["rule_job_s_median"] = {k: statistics.median(v) for k, v in rules.items()}
        summary[tool] = s
    ratios = {}

    def ratio(a, b, key):
        if a in summary and b in summary:
            return round(summary[a][key]["median"] / summary[b][key]["median"], 2)
        return None

    for key in ("wall_s", "cpu_s"):
        ratios[f"ccdflow/siril {key}"] = ratio("ccdflow", "siril", key)
        ratios[f"ccdproc/ccdflow {key}"] = ratio("ccdproc", "ccdflow", key)
        ratios[f"ccdflow_full/siril {key}"] = ratio("ccdflow_full", "siril", key)
        ratios[f"ccdproc/siril {key}"] = ratio("ccdproc", "siril", key)
        ratios[f"ccdflow_floor/siril {key}"] = ratio("ccdflow_floor", "siril", key)
    return summary, ratios


def print_table(summary, ratios, quality):
    def mm(d, fmt="{:.1f}"):
        return f"{fmt.format(d['median'])} ({fmt.format(d['min'])}-{fmt.format(d['max'])})"

    print()
    print(
        f"{'tool':13s} {'n':>2s}  {'wall s: median (min-max)':28s} {'CPU s':>8s} "
        f"{'RSS MiB (largest proc)':>23s} {'RSS MiB (tree)':>15s}"
    )
    for tool, s in summary.items():
        print(
            f"{tool:13s} {s['n']:2d}  {mm(s['wall_s']):28s} {s['cpu_s']['median']:8.1f} "
            f"{s['max_rss_mib']['median']:23.0f} {s['tree_rss_mib']['median']:15.0f}"
        )
    print()
    for k, v in ratios.items():
        if v is not None:
            print(f"  {k:28s} {v:6.2f}")
    for tool, s in summary.items():
        if "rule_job_s_median" in s:
            print(f"\n{tool}: job seconds per rule (sum over jobs, median over repeats)")
            for rule, v in sorted(s["rule_job_s_median"].items(), key=lambda kv: -kv[1]):
                print(f"  {rule:18s} {v:7.0f}")
    if quality:
        print("\nstacks (ADU; ccdflow divided by its gain, Siril multiplied by 65535):")
        for tool, rows in quality.items():
            for name, q in rows.items():
                print(
                    f"  {tool:13s} {name:22s} stars={q['stars']:5d} fwhm={q['fwhm_px']} px "
                    f"sky={q['sky_adu']:.1f} noise={q['sky_noise_adu']:.2f}"
                )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="night + runs (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--skip-siril", action="store_true")
    parser.add_argument("--skip-ccdproc", action="store_true")
    parser.add_argument(
        "--skip-full", action="store_true", help="no default (cosmics, previews) ccdflow run"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run ccdflow_floor: the ccdflow run on the same frames at 96x128 px",
    )
    parser.add_argument(
        "--full-repeats",
        type=int,
        help="run ccdflow_full only in the first N rounds (default: every round)",
    )
    parser.add_argument(
        "--siril-script",
        type=Path,
        default=REPO.parent / "shared" / "bench" / "siril-preprocess.ssf",
    )
    parser.add_argument("--gain", type=float, default=1.5, help="e-/ADU of the demo camera")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "e2e.json")
    args = parser.parse_args(argv)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ccdflow-e2e-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    night = make_night(workdir)
    raw = night / "raw"

    tools = ["ccdflow"]
    if args.skip_siril:
        log("Siril skipped (--skip-siril)")
    elif shutil.which("siril-cli") is None:
        log("siril-cli not found: Siril skipped (install it: apt-get install siril)")
    elif not args.siril_script.resolve().exists():
        log(f"{args.siril_script} not found: Siril skipped")
    else:
        tools.append("siril")
        make_siril_tree(workdir, raw)
        version = subprocess.run(["siril-cli", "--version"], capture_output=True, text=True)
        log(f"Siril: {version.stdout.strip()}")
    if not args.skip_ccdproc:
        tools.append("ccdproc")
    if not args.skip_full:
        tools.append("ccdflow_full")
    if args.floor:
        tools.append("ccdflow_floor")
        floor_raw = make_night(workdir, "night_floor", size=FLOOR_SIZE) / "raw"

    runs = []
    for i in range(args.repeats):
        for tool in tools:
            if tool == "ccdflow_full" and args.full_repeats is not None and i >= args.full_repeats:
                continue
            log(f"repeat {i + 1}/{args.repeats}: {tool}")
            if tool == "ccdflow":
                rec = run_ccdflow(workdir, raw, args.cores, full=False)
            elif tool == "ccdflow_full":
                rec = run_ccdflow(workdir, raw, args.cores, full=True)
            elif tool == "ccdflow_floor":
                rec = run_ccdflow(workdir, floor_raw, args.cores, full=False, name=tool)
            elif tool == "siril":
                rec = run_siril(workdir, args.siril_script.resolve())
            else:
                rec = run_ccdproc(workdir, raw)
            rec.update(tool=tool, repeat=i + 1, code=code_fingerprint())
            runs.append(rec)
            log(
                f"  wall {rec['wall_s']:.1f} s, CPU {rec['cpu_s']:.1f} s, "
                f"RSS {rec['max_rss_mib']:.0f} MiB (tree {rec['tree_rss_mib']:.0f}), "
                f"exit {rec['returncode']}"
            )

    quality = {}
    for tool in tools:
        if tool == "ccdflow_floor":
            continue  # 96x128 stacks: nothing to measure
        last = [r for r in runs if r["tool"] == tool and r["returncode"] == 0]
        if last:
            quality[tool] = {Path(p).name: stack_quality(p, args.gain) for p in last[-1]["stacks"]}
    summary, ratios = summarise(runs)
    print_table(summary, ratios, quality)

    load = os.getloadavg()
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    result = {
        "git_head": git.stdout.decode().strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": [round(x, 2) for x in load],
        },
        "night": {"path": str(night), "preset": "benchmark"},
        "order": tools,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "quality": quality,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
