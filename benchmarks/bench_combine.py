"""Master combine against the time to read its inputs once.

Target: a master combine of N = 10, 25, 50 frames of 4128 x 2080 (the Palomar LFC
size) takes at most 2x the time to read the N files once, with the peak memory within
the configured limit (default 2000 MB) for any N, and each file read once.

For each N this writes synthetic uint16 bias frames (BZERO 32768) once, then per
repeat:

* ``read``: every row of every frame through ``calibrate._RowReader`` (the banded
  reader of ``make_master``), in the bands ``make_master`` uses, converted to float32;
* ``combine``: ``calibrate.make_master(frames, 'bias', sigma_clip)`` in a child
  process under ``/usr/bin/time -v`` (peak RSS); the time is that of the call alone
  (no interpreter start or imports). The child counts the bytes each reader returns
  and fails unless every file was read exactly once.

Both are measured warm (files in the page cache, after a warm-up read; the ratio uses
warm vs warm) and cold (each file's pages dropped first with
``posix_fadvise(DONTNEED)``, which touches only these files; cold read time depends on
the disk, so it is reported but is not the target).

Before that, a child combines a tiny stack twice in a row in fresh processes: the
first compiles the kernel if its cache is empty (``kernel_first_s``), the second
loads it (``kernel_load_s``: importing numba and loading the machine code, which
every ``combine`` run pays once).

Usage::

    python benchmarks/bench_combine.py                 # N = 10 25 50, 3 repeats
    python benchmarks/bench_combine.py --n 10 25 --repeats 3 --data /tmp/frames --keep
    python benchmarks/bench_combine.py --scripts /path/to/other/scripts  # other version
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NX, NY = 4128, 2080
LIMIT_MB = 2000
COMBINE = {"method": "sigma_clip", "sigma_low": 3.0, "sigma_high": 3.0, "maxiters": 5}


def _frames(folder, n, seed=0):
    """Paths of ``n`` synthetic bias frames in ``folder`` (written if missing)."""
    from astropy.io import fits

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"bias_{i:03d}.fits"
        paths.append(path)
        if path.exists():
            continue
        data = 1000 + 4 * rng.standard_normal((NY, NX), dtype=np.float32)
        hits = rng.integers(0, NY * NX, 2000)  # cosmic rays
        data.flat[hits] += rng.uniform(100, 20000, hits.size).astype(np.float32)
        header = fits.Header({"IMAGETYP": "BIAS", "EXPTIME": 0.0})
        hdu = fits.PrimaryHDU(np.clip(np.round(data), 0, 65535).astype(np.uint16), header)
        hdu.writeto(path)  # uint16: BITPIX 16, BZERO 32768
    return paths


def _drop_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _child(args):
    """Run in the child: read once or make the master; print JSON."""
    sys.path.insert(0, args.scripts)
    if args.child == "kernel":
        from ccdflow import combine

        t0 = time.perf_counter()
        combine.combine_stack(np.zeros((3, 2, 2), np.float32))
        kernel = getattr(combine, "_kernel", lambda: None)()
        name = "numpy" if kernel is None else kernel.__name__
        print(json.dumps({"seconds": time.perf_counter() - t0, "kernel": name}))
        return
    from ccdflow import calibrate
    from ccdflow.combine import band_rows

    frames = [(p, 0) for p in args.paths]
    returned = {}
    original = calibrate._RowReader.rows

    def counting(self, y0, y1, *args, **kwargs):
        out = original(self, y0, y1, *args, **kwargs)
        values = out[0] if isinstance(out, tuple) else out  # (values, masks...) or values
        returned[self.path] = returned.get(self.path, 0) + values.size * 2
        return out

    calibrate._RowReader.rows = counting
    if hasattr(calibrate._RowReader, "rows_at"):  # the gates' row sample, read at once
        original_at = calibrate._RowReader.rows_at

        def counting_at(self, ys, *args, **kwargs):
            out = original_at(self, ys, *args, **kwargs)
            returned[self.path] = returned.get(self.path, 0) + out[0].size * 2
            return out

        calibrate._RowReader.rows_at = counting_at
    with open("/proc/self/io") as f:
        io0 = dict(line.split(": ") for line in f.read().splitlines())
    t0, c0 = time.perf_counter(), time.process_time()
    if args.child == "read":
        readers = [calibrate._RowReader(p, 0) for p, _ in frames]
        ny, nx = readers[0].shape
        step = band_rows(len(readers), nx, ny, args.limit)
        for y0 in range(0, ny, step):
            for r in readers:
                r.rows(y0, min(ny, y0 + step))
        for r in readers:
            r.close()
    else:
        from ccdflow import combine

        clip = combine.Clip(**COMBINE) if hasattr(combine, "Clip") else COMBINE  # (older: a dict)
        calibrate.make_master(frames, "bias", clip, mem_limit_mb=args.limit)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    with open("/proc/self/io") as f:
        io1 = dict(line.split(": ") for line in f.read().splitlines())
    size = NX * NY * 2
    if args.child != "read":  # plus the row sample of the calibration-frame gates
        step = max(1, NY // calibrate._MEASURE_ROWS)
        size += 0 if step == 1 else len(range(0, NY, step)) * NX * 2
    once = all(returned.get(p, 0) == size for p, _ in frames)
    disk = int(io1["read_bytes"]) - int(io0["read_bytes"])
    print(json.dumps({"seconds": seconds, "cpu": cpu, "once": once, "disk_bytes": disk}))


def _kernel_first_call(args):
    """Seconds of the first combine in a fresh process, and which kernel it used."""
    cmd = [sys.executable, __file__, "--child", "kernel", "--scripts", args.scripts]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"kernel child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run(kind, paths, args):
    """One child run: seconds, peak RSS (MB), each-file-once flag, bytes from disk."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", kind]
    cmd += ["--scripts", args.scripts, "--limit", str(args.limit), "--paths", *map(str, paths)]
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    result["rss_mb"] = rss_kb / 1024
    if not result["once"]:
        raise RuntimeError(f"{kind}: a file was not read exactly once")
    return result


def _summary(values):
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def _measure(n, paths, args):
    keys = ("read_warm", "read_cold", "combine_warm", "combine_cold")
    runs = {key: [] for key in (*keys, "read_warm_cpu", "combine_warm_cpu")}
    rss, disk = [], []
    for _ in range(args.repeats):
        for kind in ("read", "combine"):
            _drop_cache(paths)
            cold = _run(kind, paths, args)
            warm = _run(kind, paths, args)  # the cold run has just cached the files
            runs[f"{kind}_cold"].append(cold["seconds"])
            runs[f"{kind}_warm"].append(warm["seconds"])
            runs[f"{kind}_warm_cpu"].append(warm["cpu"])
            if kind == "combine":
                rss += [cold["rss_mb"], warm["rss_mb"]]
                disk.append(cold["disk_bytes"] / (len(paths) * NX * NY * 2))
    out = {key: _summary(v) for key, v in runs.items()}
    read_s, combine_s = out["read_warm"]["median"], out["combine_warm"]["median"]
    return {
        "n": n,
        "shape": [NY, NX],
        "repeats": args.repeats,
        "read_s": read_s,
        "combine_s": combine_s,
        "ratio": round(combine_s / read_s, 2),
        "ratio_cold": round(out["combine_cold"]["median"] / out["read_cold"]["median"], 2),
        "ratio_cpu": round(out["combine_warm_cpu"]["median"] / out["read_warm_cpu"]["median"], 2),
        "peak_rss_mb": round(max(rss)),
        "limit_mb": args.limit,
        "each_file_read_once": True,  # checked by the child (bytes returned per file)
        "disk_read_per_input_byte_cold": round(statistics.median(disk), 3),
        **out,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=float, default=LIMIT_MB, help="mem_limit_mb (MiB)")
    parser.add_argument("--data", type=Path, help="frame folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the frames")
    parser.add_argument("--scripts", default=str(ROOT / "scripts"), help="ccdflow to time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/combine.json")
    parser.add_argument("--child", choices=["read", "combine", "kernel"], help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    first, load = _kernel_first_call(args), _kernel_first_call(args)
    print(
        f"kernel {load['kernel']}: first call {first['seconds']:.2f} s (compiles when not "
        f"cached), then {load['seconds']:.2f} s per process",
        flush=True,
    )
    folder = args.data or Path(tempfile.mkdtemp(prefix="bench_combine_"))
    results = []
    try:
        paths = _frames(folder, max(args.n))
        for n in sorted(args.n):
            results.append(_measure(n, paths[:n], args))
            r = results[-1]
            print(
                f"N={n:3d}  read {r['read_s']:6.2f} s  combine {r['combine_s']:6.2f} s "
                f"({r['combine_warm']['min']:.2f}-{r['combine_warm']['max']:.2f})  "
                f"ratio {r['ratio']:5.2f} (CPU {r['ratio_cpu']:.2f})  "
                f"cold: read {r['read_cold']['median']:.2f} s "
                f"combine {r['combine_cold']['median']:.2f} s ratio {r['ratio_cold']:.2f}  "
                f"peak RSS {r['peak_rss_mb']} MB / {r['limit_mb']:.0f}",
                flush=True,
            )
    finally:
        if not args.keep:
            for p in folder.glob("bias_*.fits"):
                p.unlink()
            if args.data is None:
                folder.rmdir()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "scripts": args.scripts,
        "combine": COMBINE,
        "cpu_count": os.cpu_count(),
        "kernel": load["kernel"],
        "kernel_first_s": round(first["seconds"], 3),
        "kernel_load_s": round(load["seconds"], 3),
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
