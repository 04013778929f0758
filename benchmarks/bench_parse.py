"""Parse time of the workflow on a directory of 10,000 small raw frames.

What it measures (medians of ``--repeat`` runs, each a fresh process, wall time):

- ``cold_dry_run``: ``snakemake -n`` from an empty working directory (no header cache):
  every header read, fingerprinted, cached; plus the Snakemake DAG of ~30,000 jobs
  (over a minute each, so only ``--dry-repeat`` runs, default 3).
- ``warm_dry_run``: the same again (header cache warm, frames.tsv unchanged).
- ``cold_list_rules``: ``snakemake --list-rules`` from an empty working directory: the
  cold first scan without the DAG. (Files are in the page cache: a scan from a cold disk
  is slower and not measured, that needs root to drop caches.)
- ``ours_cold_in_process``: our calls (below) in an empty working directory.
- ``warm_list_rules``: ``snakemake --list-rules``: Snakemake start-up + executing the
  Snakefile (config validation, inventory, plan, rule definitions) but no DAG. This is
  the parse a no-op run pays before it looks at any job.
- ``snakemake_baseline``: ``snakemake --list-rules`` on a one-rule Snakefile: the
  start-up cost of Snakemake itself, which we do not control.
- ``ours_in_process``: in a fresh Python process, the exact calls ``common.smk`` makes
  (``inventory.scan`` with the warm cache, both ``write_tsv``, ``plan.make_plan``,
  ``reference_sets``, ``groups``), timed with ``perf_counter`` per step; also the
  import time of ``ccdflow.inventory``/``ccdflow.plan``.

DAG time is estimated as ``warm_dry_run - warm_list_rules``; our share of the parse is
``ours_in_process`` (and, as a cross-check, ``warm_list_rules - snakemake_baseline``).

Usage::

    python benchmarks/bench_parse.py [--frames 10000] [--repeat 5] [--out results/parse.json]
    python benchmarks/bench_parse.py --profile   # cProfile of our warm parse, top 25
"""

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

_FILTERS = ("V", "R")
_OBJECTS = ("M51", "M101", "NGC 4565", "M27")


def _card(key, value, comment=""):
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, str):
        text = f"'{value.replace(chr(39), chr(39) * 2):<8}'"
        text = f"{text:<20}"
    elif isinstance(value, int):
        text = f"{value:>20}"
    else:
        text = f"{value!r:>20}".upper()
    card = f"{key:<8}= {text}" + (f" / {comment}" if comment else "")
    return f"{card[:80]:<80}"


def _frame_bytes(kind, i, filt, obj, exptime, shape=(16, 16)):
    """A MaxIm-DL-like uint16 frame (BZERO 32768) as bytes."""
    ny, nx = shape
    day, sec = divmod(i * 7, 86400)
    date = f"2024-03-{1 + day % 28:02d}T{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
    imagetyp = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field"}
    cards = [
        _card("SIMPLE", True, "file does conform to FITS standard"),
        _card("BITPIX", 16, "number of bits per data pixel"),
        _card("NAXIS", 2, "number of data axes"),
        _card("NAXIS1", nx, "length of data axis 1"),
        _card("NAXIS2", ny, "length of data axis 2"),
        _card("BZERO", 32768, "offset data range to that of unsigned short"),
        _card("BSCALE", 1, "default scaling factor"),
        _card("EXPTIME", float(exptime), "Duration of exposure in seconds"),
        _card("EXPOSURE", float(exptime), "Duration of exposure in seconds"),
        _card("SET-TEMP", -20.0, "CCD temperature setpoint in C"),
        _card("CCD-TEMP", -19.8 - (i % 5) * 0.05, "CCD temperature at start of exposure in C"),
        _card("XPIXSZ", 9.0, "Pixel Width in microns (after binning)"),
        _card("YPIXSZ", 9.0, "Pixel Height in microns (after binning)"),
        _card("XBINNING", 1, "Binning factor in width"),
        _card("YBINNING", 1, "Binning factor in height"),
        _card("XORGSUBF", 0, "Subframe X position in binned pixels"),
        _card("YORGSUBF", 0, "Subframe Y position in binned pixels"),
        _card("READOUTM", "Monochrome", "Readout mode of image"),
        _card("FILTER", filt, "Filter used when taking image"),
        _card("IMAGETYP", imagetyp.get(kind, "Light Frame"), "Type of image"),
        _card("DATE-OBS", date, "YYYY-MM-DDThh:mm:ss observation start, UT"),
        _card("SWCREATE", "MaxIm DL Version 6.24 200613 23VP3", "Name of software"),
        _card("SWSERIAL", "23VP3-SPE3X-YPYL4-2YMBE-EF4G8-X9", "Software serial number"),
        _card("EGAIN", 1.4, "Electronic gain in e-/ADU"),
        _card("RDNOISE", 9.5, "[e-] read noise"),
        _card("JD", 2460371.5 + i / 86400, "Julian Date at start of exposure"),
        _card("TELESCOP", "PlaneWave CDK20", "telescope used to acquire this image"),
        _card("INSTRUME", "SBIG STL-1001 3 CCD Camera", "instrument or camera used"),
        _card("OBSERVER", "bench", "observer"),
        _card("SITELAT", "41 49 12", "Latitude of the imaging location"),
        _card("SITELONG", "-72 15 00", "Longitude of the imaging location"),
    ]
    if kind == "light":
        cards.append(_card("OBJECT", obj, ""))
        cards.append(_card("OBJCTRA", "13 29 52", "Nominal Right Ascension of center"))
        cards.append(_card("OBJCTDEC", "+47 11 43", "Nominal Declination of center"))
        cards.append(_card("AIRMASS", 1.0 + (i % 50) / 100, "Relative optical path length"))
    cards.append(f"{'END':<80}")
    head = "".join(cards).encode("ascii")
    head += b" " * (-len(head) % 2880)
    level = {"bias": 1000, "dark": 1010, "flat": 20000}.get(kind, 1500) - 32768
    data = struct.pack(">h", level + i % 17) * (ny * nx)
    data += b"\0" * (-len(data) % 2880)
    return head + data


def make_frames(folder, n):
    """``n`` raw frames in ``folder`` (created once; a marker file records completion).

    Mix: 5% bias, 5% dark (2 exposures), 10% flat (2 filters), 80% lights (4 objects x
    2 filters, one exposure), in nightly subfolders like a real archive.
    """
    folder = Path(folder)
    marker = folder / f".complete-{n}"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        r = i % 20
        if r == 0:
            kind, filt, obj, t = "bias", "V", "", 0.0
        elif r == 1:
            kind, filt, obj, t = "dark", "V", "", (60.0, 120.0)[i // 20 % 2]
        elif r in (2, 3):
            kind, filt, obj, t = "flat", _FILTERS[r - 2], "", 3.0
        else:
            kind, filt = "light", _FILTERS[i % 2]
            obj, t = _OBJECTS[i // 2 % len(_OBJECTS)], 120.0
        sub = folder / f"night{i // 2500:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"{kind}_{i:05d}.fits").write_bytes(_frame_bytes(kind, i, filt, obj, t))
    marker.write_text("ok\n")
    return folder


def _run(cmd, cwd):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return wall


def _env():
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def _smk(workdir, raw, *args, snakefile=REPO / "Snakefile"):
    cmd = [*SNAKEMAKE, "-s", str(snakefile), "--directory", str(workdir), *args]
    if raw is not None:
        cmd += ["--config", f"raw_dir={raw}"]
    return cmd


_IN_PROCESS = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {scripts!r})
import yaml
from ccdflow import inventory, plan
t_import = time.perf_counter() - t0
config = yaml.safe_load(open({config!r}))
t = {{}}
s = time.perf_counter()
inv = inventory.scan({raw!r}, config["inventory"], cache_path="results/index/header_cache.pkl",
                     grouping=config["group_by"])
t["scan"] = time.perf_counter() - s
s = time.perf_counter()
inventory.write_tsv("results/index/frames.tsv", inv.frames, inventory.COLUMNS)
inventory.write_tsv("results/index/rejected.tsv", inv.rejected, ("path", "reason", "detail"))
t["write_tsv"] = time.perf_counter() - s
s = time.perf_counter()
p = plan.make_plan(inv, config["calibration"])
refs = plan.reference_sets(p.lights, config["align"]["reference"])
groups = p.groups()
t["plan"] = time.perf_counter() - s
t["import"] = t_import
t["total"] = time.perf_counter() - t0
t["n_frames"] = len(inv.frames)
t["n_lights"] = len(p.lights)
print(json.dumps(t))
"""


def _in_process(workdir, raw):
    code = _IN_PROCESS.format(
        scripts=str(REPO / "scripts"), config=str(REPO / "config" / "config.yaml"), raw=str(raw)
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _profile(workdir, raw):
    import cProfile
    import pstats

    import yaml

    sys.path.insert(0, str(REPO / "scripts"))
    from ccdflow import inventory, plan

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    os.chdir(workdir)

    def work():
        inv = inventory.scan(
            raw, config["inventory"], "results/index/header_cache.pkl", config["group_by"]
        )
        inventory.write_tsv("results/index/frames.tsv", inv.frames, inventory.COLUMNS)
        p = plan.make_plan(inv, config["calibration"])
        plan.reference_sets(p.lights, config["align"]["reference"])
        p.groups()

    work()  # warm the cache
    prof = cProfile.Profile()
    prof.runcall(work)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


def _med(values):
    return round(statistics.median(values), 3) if values else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dry-repeat", type=int, default=3, help="runs of the full dry runs")
    ap.add_argument("--data", default=Path(tempfile.gettempdir()) / "ccdflow-bench-parse")
    ap.add_argument("--out", default=HERE / "results" / "parse.json")
    ap.add_argument("--profile", action="store_true", help="cProfile our warm parse and stop")
    args = ap.parse_args(argv)

    data = Path(args.data)
    t0 = time.perf_counter()
    raw = make_frames(data / f"raw{args.frames}", args.frames)
    print(f"frames ready in {time.perf_counter() - t0:.1f} s: {raw}", file=sys.stderr)
    trivial = data / "Snakefile.trivial"
    trivial.write_text('rule all:\n    shell: "true"\n')

    with tempfile.TemporaryDirectory(dir=data) as tmp:
        tmp = Path(tmp)
        if args.profile:
            work = tmp / "profile"
            work.mkdir()
            _profile(work, raw)
            return
        runs = {k: [] for k in ("cold_dry_run", "warm_dry_run", "cold_list_rules")}
        runs |= {k: [] for k in ("warm_list_rules", "snakemake_baseline")}
        runs |= {"ours_cold_in_process": [], "ours_in_process": []}
        steps, cold_steps = [], []
        for i in range(args.repeat):
            # Alternate the measurements so load changes on the machine hit all alike.
            if i < args.dry_repeat:
                dry = tmp / f"dry{i}"
                dry.mkdir()
                cmd = _smk(dry, raw, "-n", "--quiet", "all")
                runs["cold_dry_run"].append(_run(cmd, dry))
                runs["warm_dry_run"].append(_run(cmd, dry))
            cold = tmp / f"cold{i}"
            cold.mkdir()
            runs["cold_list_rules"].append(_run(_smk(cold, raw, "--list-rules"), cold))
            runs["warm_list_rules"].append(_run(_smk(cold, raw, "--list-rules"), cold))
            runs["snakemake_baseline"].append(
                _run(_smk(cold, None, "--list-rules", snakefile=trivial), cold)
            )
            fresh = tmp / f"fresh{i}"
            fresh.mkdir()
            t = time.perf_counter()
            cold_steps.append(_in_process(fresh, raw))
            runs["ours_cold_in_process"].append(time.perf_counter() - t)
            t = time.perf_counter()
            steps.append(_in_process(fresh, raw))
            runs["ours_in_process"].append(time.perf_counter() - t)
            print(
                f"run {i + 1}/{args.repeat}: "
                + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items() if v),
                file=sys.stderr,
            )
    med = {k: _med(v) for k, v in runs.items()}
    keys = ("import", "scan", "write_tsv", "plan", "total")
    ours = {k: _med([s[k] for s in steps]) for k in keys}
    ours_cold = {k: _med([s[k] for s in cold_steps]) for k in keys}
    result = {
        "frames": args.frames,
        "lights": steps[0]["n_lights"],
        "repeat": args.repeat,
        "median_s": med,
        "ours_steps_median_s": {"warm": ours, "cold": ours_cold},
        "derived_s": {
            "dag_and_job_checks": round(med["warm_dry_run"] - med["warm_list_rules"], 3)
            if med["warm_dry_run"] is not None
            else None,
            "parse_minus_snakemake_startup": round(
                med["warm_list_rules"] - med["snakemake_baseline"], 3
            ),
        },
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
