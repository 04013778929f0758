"""Per-frame alignment cost and accuracy: ``find_transform``, ``resample``, ``align_file``.

``align_file`` is the alignment part of the frame job (``framejob.process_frame``): read a
cleaned product, its star list (``align.star_list``), the match against the reference's
star list (``align.match``, what the record carries), ``align.resample`` and the write of
the aligned product. The reference's star list is computed in the same call, as the
reference's own frame job does once per group. (Before the frame job this was
``align_file`` in its own ``align_frame`` job; ``--before`` must point at a checkout
that has ``align.star_list``.)

A pair of cleaned-frame products of ``--size`` px (default 2048 x 2048, the benchmark
night's size) is generated once: 600 stars (per 2048^2) of FWHM 3 px with the demo's flux
law, sky, Poisson and read noise in electrons, saturated cores flagged ``SATURATED``, ~1000
cleaned cosmic-ray clusters flagged ``COSMIC``; the source frame is dithered by a known
shift and rotation. ``--pair SRC REF`` times two existing products instead (no truth).

Every measurement runs in a fresh process per variant, as a Snakemake ``script:`` job
does; the variants (this checkout, and ``--before`` another checkout's ``scripts``
folder, e.g. a ``git worktree`` of the previous commit) alternate within each repeat, in
alternating order, so load on a shared machine hits them alike. Per process:

- ``job``: a process that does the alignment part of one frame job (interpreter start,
  ``import ccdflow.align``, one ``align_file`` of the source frame) and exits; wall time
  measured by the parent, CPU time (user + system) of the child;
- then, in a second process: ``align_file_first``, the first ``align_file`` call
  (reading both frames, finding, resampling, writing; it includes the imports the task
  makes on first use); ``align_file`` / ``align_file_reference``, the same call again
  with everything imported, for the source frame and for the reference onto itself (the
  identity: one frame in each group); ``find_transform`` and ``resample``, the two
  library calls alone on data in memory;
- ``imports``: in a third process, after ``import ccdflow.align``, importing the modules
  the first ``align_file`` call imported (``sep``, ``scipy.ndimage``, ... as listed by
  the second process), alone.

Accuracy, per variant: the recovered transform against the truth (rms over a 16 px grid
of the frame of the distance between where the two matrices put each point), pairs and
their rms residual; and between variants, the largest difference of the aligned data
(good pixels, relative to the frame's peak) and whether the masks are identical.

Usage::

    python benchmarks/bench_align.py [--repeat 5] [--before /tmp/align-before/scripts]
        [--size 2048] [--pair SRC REF] [--out benchmarks/results/align.json]
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent / "scripts"
TRUTH = {"dx": 10.4, "dy": -3.55, "rot_deg": -0.23}  # the dither of the source frame

CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
src, ref, out = sys.argv[2], sys.argv[3], sys.argv[4]
import numpy as np
from ccdflow import align, io


def align_file(src, ref, out, reference_name, **params):
    detect = {k: params[k] for k in ("detection_sigma", "max_sharpness") if k in params}
    keys = ("detection_sigma", "min_matches", "max_scale_error", "max_residual")
    d, h, u, m = io.read_product(src, fast=True)
    r, _, _, rm = io.read_product(ref, fast=True)
    stars = align.star_list(d, m, **detect)
    ref_stars = align.star_list(r, rm, **detect)
    result = align.match(stars, ref_stars, **{k: params[k] for k in keys if k in params})
    data, unc, mask = align.resample(d, u, m, result.matrix, r.shape)
    io.write_product(out, data, h, unc, mask)
    return result


def timed(f, *a, **kw):
    w, c = time.perf_counter(), time.process_time()
    r = f(*a, **kw)
    return r, time.perf_counter() - w, time.process_time() - c


params = dict(detection_sigma=5.0, min_matches=6, max_scale_error=0.02, max_residual=0.5,
              max_sharpness=0.7)
res = {"import_align_s": time.perf_counter() - t_start}
if sys.argv[5] == "imports":  # the modules the task imports on first use, in order
    import importlib
    w, c = time.perf_counter(), time.process_time()
    for name in json.loads(sys.argv[6]):
        try:
            importlib.import_module(name)
        except Exception:
            pass
    res.update(imports_wall=time.perf_counter() - w, imports_cpu=time.process_time() - c)
    print("RESULT " + json.dumps(res))
    sys.exit(0)
loaded = set(sys.modules)
_, res["align_file_first_wall"], res["align_file_first_cpu"] = timed(
    align_file, src, ref, out, reference_name="ref", **params)
res["lazy_modules"] = [m for m in list(sys.modules) if m not in loaded]
if sys.argv[5] == "job":  # the alignment part of one frame job
    print("RESULT " + json.dumps(res))
    sys.exit(0)
_, res["align_file_wall"], res["align_file_cpu"] = timed(
    align_file, src, ref, out + ".2.fits", reference_name="ref", **params)
_, res["align_file_reference_wall"], res["align_file_reference_cpu"] = timed(
    align_file, ref, ref, out + ".3.fits", reference_name="ref", **params)
d, _, u, m = io.read_product(src, fast=True)
r, _, _, rm = io.read_product(ref, fast=True)
result, res["find_transform_wall"], res["find_transform_cpu"] = timed(
    align.find_transform, d, r, source_mask=m, reference_mask=rm, **params)
_, res["resample_wall"], res["resample_cpu"] = timed(
    align.resample, d, u, m, result.matrix, r.shape)
res.update(ok=result.ok, reason=result.reason, n_matches=result.n_matches,
           rms_residual=result.rms_residual, matrix=np.asarray(result.matrix).tolist())
print("RESULT " + json.dumps(res))
"""

TIMES = (
    "imports",
    "align_file_first",
    "align_file",
    "align_file_reference",
    "find_transform",
    "resample",
)


def make_pair(outdir, size, seed=1):
    """Reference and dithered source products (electrons) with the true source->ref matrix."""
    sys.path.insert(0, str(SCRIPTS))
    from ccdflow import bits, io
    from ccdflow.demo import render_stars, transform_positions

    rng = np.random.default_rng(seed)
    shape = (size, size)
    n = round(600 * (size / 2048) ** 2)
    exptime, sky, read_noise, full_well, fwhm = 60.0, 3.5, 6.0, 9.8e4, 3.0
    lo, hi, index = 50.0, 2.0e5, 1.7  # e-/s, dN/dF ~ F**-index (the demo's star law)
    u = rng.random(n)
    flux = (lo ** (1 - index) + u * (hi ** (1 - index) - lo ** (1 - index))) ** (1 / (1 - index))
    x, y = rng.uniform(0, size - 1, n), rng.uniform(0, size - 1, n)
    xs, ys = transform_positions(x, y, shape=shape, **TRUTH)
    paths = {}
    for name, (px, py) in (("reference", (x, y)), ("source", (xs, ys))):
        signal = render_stars(shape, px, py, flux * exptime, fwhm) + sky * exptime
        data = rng.poisson(signal).astype(np.float64) + rng.normal(0.0, read_noise, shape)
        mask = np.zeros(shape, bits.MASK_DTYPE)
        saturated = data >= full_well
        data[saturated] = full_well
        mask[saturated] |= bits.SATURATED
        for _ in range(round(1000 * (size / 2048) ** 2)):  # cleaned cosmic-ray clusters
            cy, cx = rng.integers(0, size, 2)
            length, angle = rng.integers(1, 7), rng.uniform(0, math.pi)
            t = np.arange(length)
            iy = np.clip(np.rint(cy + t * math.sin(angle)).astype(int), 0, size - 1)
            ix = np.clip(np.rint(cx + t * math.cos(angle)).astype(int), 0, size - 1)
            mask[iy, ix] |= bits.COSMIC
            data[iy, ix] = sky * exptime + rng.normal(0.0, math.sqrt(sky * exptime), iy.size)
        unc = np.sqrt(read_noise**2 + np.maximum(data, 0.0))
        header = io.Header()
        header["OBJECT"] = "bench_align"
        header["EXPTIME"] = exptime
        path = Path(outdir) / f"{name}.fits"
        io.write_product(path, data.astype(np.float32), header, unc.astype(np.float32), mask,
                         "electron")  # fmt: skip
        paths[name] = path
    ref = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0]])
    src = np.column_stack(transform_positions(ref[:, 0], ref[:, 1], shape=shape, **TRUTH))
    forward = np.eye(3)  # reference -> source
    forward[:2] = np.linalg.solve(np.column_stack([ref, np.ones(3)]), src).T
    return paths["source"], paths["reference"], np.linalg.inv(forward)


def grid_rms(m1, m2, shape, step=16):
    gy, gx = np.mgrid[0 : shape[0] : step, 0 : shape[1] : step]
    p = np.column_stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    d = (p @ np.asarray(m1).T - p @ np.asarray(m2).T)[:, :2]
    return float(np.sqrt(np.mean((d**2).sum(axis=1))))


def run_child(scripts, src, ref, out, mode, modules=()):
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", CHILD, str(scripts), str(src), str(ref), str(out), mode]
    proc = subprocess.run(
        [*cmd, json.dumps(list(modules))],
        capture_output=True, text=True, env=env, cwd=str(Path(out).parent),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed for {scripts}:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    res["job_wall"] = wall
    res["job_cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res


def summary(values):
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--before", type=Path, help="scripts folder of the old version")
    parser.add_argument("--pair", nargs=2, type=Path, metavar=("SRC", "REF"))
    parser.add_argument("--workdir", type=Path, help="keep the generated pair here")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "align.json")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="bench_align_")
    workdir = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.pair:
        src, ref = (p.resolve() for p in args.pair)
        truth = None
    else:
        src, ref, truth = make_pair(workdir, args.size)
    variants = {"after": SCRIPTS}
    if args.before:
        variants = {"before": args.before.resolve(), **variants}
    load_start = os.getloadavg()
    runs = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.repeat):
        for name in names if rep % 2 == 0 else names[::-1]:
            out = workdir / f"aligned_{name}.fits"
            job = run_child(variants[name], src, ref, out, "job")
            res = run_child(variants[name], src, ref, out, "detail")
            imports = run_child(variants[name], src, ref, out, "imports", res["lazy_modules"])
            res.update(job_wall=job["job_wall"], job_cpu=job["job_cpu"])
            res.update(imports_wall=imports["imports_wall"], imports_cpu=imports["imports_cpu"])
            runs[name].append(res)
            print(f"repeat {rep} {name:6s} job {res['job_wall']:.2f} s wall, "
                  f"{res['job_cpu']:.2f} s cpu; align_file {res['align_file_wall']:.3f} s",
                  flush=True)  # fmt: skip

    sys.path.insert(0, str(SCRIPTS))
    from ccdflow import io

    shape = io.read_product(ref, fast=True)[0].shape
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(v, 2) for v in load_start],
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "frames": {
            "source": str(src) if args.pair else "generated",
            "reference": str(ref) if args.pair else "generated",
            "shape": list(shape),
            "truth": None if truth is None else {**TRUTH, "matrix": truth.tolist()},
        },
        "repeat": args.repeat,
        "variants": {name: str(path) for name, path in variants.items()},
        "results": {},
    }
    for name, rs in runs.items():
        out = {}
        out["import_align_s"] = summary([r["import_align_s"] for r in rs])
        for key in ("job", *TIMES):
            out[f"{key}_wall_s"] = summary([r[f"{key}_wall"] for r in rs])
            out[f"{key}_cpu_s"] = summary([r[f"{key}_cpu"] for r in rs])
        last = rs[-1]
        out["transform"] = {
            "ok": last["ok"],
            "reason": last["reason"],
            "n_matches": last["n_matches"],
            "rms_residual_px": last["rms_residual"],
            "error_vs_truth_px": None if truth is None else grid_rms(last["matrix"], truth, shape),
            "same_matrix_every_repeat": all(r["matrix"] == last["matrix"] for r in rs),
        }
        top = {m.split(".")[0] for m in last["lazy_modules"]}
        out["imported_on_first_use"] = sorted(  # packages, not the standard library
            m for m in top if not m.startswith("_") and m not in sys.stdlib_module_names
        )
        report["results"][name] = out
    if "before" in runs:
        ratios = {}
        for key in ("job", *TIMES):
            for kind in ("wall", "cpu"):
                b = report["results"]["before"][f"{key}_{kind}_s"]["median"]
                a = report["results"]["after"][f"{key}_{kind}_s"]["median"]
                ratios[f"{key}_{kind}"] = round(b / a, 2) if a > 0 else None
        report["ratio_before_over_after"] = ratios
        old = io.read_product(workdir / "aligned_before.fits", fast=True)
        new = io.read_product(workdir / "aligned_after.fits", fast=True)
        good = new[3] == 0
        peak = float(np.abs(old[0][good]).max())
        report["after_vs_before"] = {
            "max_abs_diff_data_good_px": float(np.abs(new[0] - old[0])[good].max()),
            "data_peak": peak,
            "max_abs_diff_uncertainty_good_px": float(np.abs(new[2] - old[2])[good].max()),
            "mask_identical": bool(np.array_equal(new[3], old[3])),
            "matrix_max_abs_diff": float(
                np.abs(
                    np.subtract(runs["after"][-1]["matrix"], runs["before"][-1]["matrix"])
                ).max()
            ),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{'median s (min-max)':34s}" + "".join(f"{n:>24s}" for n in runs))
    for key in ("job", *TIMES):
        for kind in ("wall", "cpu"):
            cells = []
            for name in runs:
                v = report["results"][name][f"{key}_{kind}_s"]
                cells.append(f"{v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})")
            ratio = report.get("ratio_before_over_after", {}).get(f"{key}_{kind}")
            extra = f"   x{ratio}" if ratio else ""
            print(f"{key + ' ' + kind:34s}" + "".join(f"{c:>24s}" for c in cells) + extra)
    for name in runs:
        print(name, json.dumps(report["results"][name]["transform"]))
        print(name, "imports on first use:", report["results"][name]["imported_on_first_use"])
    if "after_vs_before" in report:
        print("after vs before", json.dumps(report["after_vs_before"]))
    print(f"written {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
