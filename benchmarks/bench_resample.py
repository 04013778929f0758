"""Resampling kernels on a night with truth: cost, alignment, star fluxes, stack noise.

Issue 11 asks for the interpolation kernel of the aligned frames to be chosen by
measurement, keeping the alignment error at most 0.05 px rms, star fluxes within 0.5 % of
the truth and the stack's noise within 5 % of sigma / sqrt(N), and for the README to say
what the kernel does to noise correlation. This compares the kernels `align.resample`
offers (``kernel``: Lanczos 4, the workflow's, and bilinear, both OpenCV's; scipy's
B-splines of order 2, 3 and 5 with their prefilter); uncertainty (bilinear variance) and
mask rules are the same for all.

The night: ``--frames`` (8) lights of ``--size`` px (1024) of one field, made with the
demo's star law and renderer (`ccdflow.demo`): stars of FWHM 3 px (dN/dF ~ F**-1.7, 50 to
2e5 e-/s, 60 s), sky 3.5 e-/s/px, Poisson and 6 e- read noise, each frame dithered by a
random shift (up to 12 px) and rotation (up to 0.3 deg) with the first frame the
reference. Per kernel every light is resampled onto the reference grid through its
transform found by `align.star_list` + `align.match` (what the frame job does), and the
lights are averaged over the pixels all of them cover (a plain mean: the workflow's
stack adds clipping and weights, which are not the kernel's business). Measured:

- ``transform_error_px``: rms over the frame of the distance between the found and the true
  mapping (the kernel does not enter it: one figure per night);
- ``position_rms_px``: rms distance of the stack's windowed centroids (``sep.winpos``) of
  bright isolated stars from their true positions; ``position_rms_native_px`` is the same
  measure on the reference frame itself (its noise floor);
- ``flux_ratio``: median over those stars of the stack's aperture flux (r = 3 FWHM, the
  true sky subtracted) over the true flux, and ``flux_scatter`` the rms of that ratio
  about 1; ``fwhm_ratio``: median second-moment FWHM of the stars in the noise-free
  resampled frames over the truth's;
- noise, on the same resampling of pure noise frames (sigma = 1, the same transforms; the
  kernels are linear, so this is the noise part of the stack): ``pixel_rms_ratio`` per
  frame and ``stack_pixel_ratio`` (pixel rms of the stack x sqrt(N)), ``neighbour_corr``
  (correlation of horizontally adjacent pixels), and ``stack_aperture_ratio``: the rms of
  the stack's sums in disjoint apertures of r = 3 FWHM over sqrt(area / N). 1 is the
  noise of independent pixels; per-pixel figures below 1 are what correlation does;
- ``phase_centroid_rms_px`` / ``phase_centroid_worst_px``: one frame, no stack: two
  noise-free stars shifted by every 1/64 px phase from 0 to 1 along x, y and the
  diagonal, resampled back by the pure shift; rms and largest difference of their
  centroids (17 x 17 px moments) from the true positions (what a single aligned frame
  carries: kernel error plus, for OpenCV, its 1/32 px placement);
- ``cpu_s``: CPU time of one `align.resample` call (data, uncertainty and a mask with
  ~1000 flagged clusters) on a ``--time-size`` (2048) px frame, median and min-max of
  ``--repeat`` (5) calls, kernels alternating.

Usage::

    python benchmarks/bench_resample.py [--frames 8] [--size 1024] [--time-size 2048]
        [--repeat 5] [--out benchmarks/results/resample.json]
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))

from bench_align import grid_rms  # noqa: E402 (this folder, the same measure)

from ccdflow import align, bits  # noqa: E402
from ccdflow.demo import render_stars, transform_positions  # noqa: E402

KERNELS = {
    "bilinear": "bilinear",
    "bspline2": "B-spline 2",
    "bspline3": "cubic B-spline",
    "bspline5": "B-spline 5",
    "lanczos4": "Lanczos 4 (default)",
}
EXPTIME, SKY, READ_NOISE = 60.0, 3.5, 6.0
FWHM = 3.0  # px; --fwhm


def make_night(n_frames, size, seed):
    """Stars (true reference positions, e-), the frames' true matrices, signals, data."""
    rng = np.random.default_rng(seed)
    shape = (size, size)
    n = round(600 * (size / 2048) ** 2)
    lo, hi, index = 50.0, 2.0e5, 1.7
    u = rng.random(n)
    p = 1 - index
    flux = (lo**p + u * (hi**p - lo**p)) ** (1 / p) * EXPTIME
    x, y = rng.uniform(0, size - 1, n), rng.uniform(0, size - 1, n)
    frames = []
    for i in range(n_frames):
        if i == 0:
            dither = dict(dx=0.0, dy=0.0, rot_deg=0.0)
        else:
            dither = dict(
                dx=rng.uniform(-12, 12), dy=rng.uniform(-12, 12), rot_deg=rng.uniform(-0.3, 0.3)
            )
        xs, ys = transform_positions(x, y, shape=shape, **dither)
        signal = render_stars(shape, xs, ys, flux, FWHM) + SKY * EXPTIME
        data = rng.poisson(signal).astype(np.float64) + rng.normal(0.0, READ_NOISE, shape)
        frames.append(
            dict(
                dither=dither,
                matrix=true_matrix(shape, **dither),
                signal=signal.astype(np.float32),
                data=data.astype(np.float32),
                unc=np.sqrt(READ_NOISE**2 + signal).astype(np.float32),
                noise=rng.normal(0.0, 1.0, shape).astype(np.float32),
            )
        )
    return dict(x=x, y=y, flux=flux, shape=shape, frames=frames)


def true_matrix(shape, **dither):
    """Source -> reference matrix of a frame dithered by `demo.transform_positions`."""
    ref = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0]])
    src = np.column_stack(transform_positions(ref[:, 0], ref[:, 1], shape=shape, **dither))
    forward = np.eye(3)  # reference -> source
    forward[:2] = np.linalg.solve(np.column_stack([ref, np.ones(3)]), src).T
    return np.linalg.inv(forward)


def found_matrices(night):
    """Each frame's transform as the frame job finds it (star lists, then match)."""
    lists = [align.star_list(f["data"]) for f in night["frames"]]
    out = []
    for stars in lists:
        result = align.match(stars, lists[0])
        if not result.ok:
            raise RuntimeError(f"a generated frame did not align: {result.reason}")
        out.append(np.asarray(result.matrix))
    return out


def bright_isolated(night, covered):
    x, y, flux = night["x"], night["y"], night["flux"]
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    ny, nx = night["shape"]
    inside = (x > 15) & (x < nx - 16) & (y > 15) & (y < ny - 16)
    inside[inside] &= covered[iy[inside], ix[inside]]
    bright = flux > 200 * math.sqrt(READ_NOISE**2 + SKY * EXPTIME) * 3 * FWHM
    peak = flux / (2 * math.pi * (FWHM / 2.3548) ** 2)
    unsaturated = peak + SKY * EXPTIME < 6.0e4
    return inside & bright & unsaturated & ((d < 20).sum(axis=1) == 0)


def peaks(img, x, y):
    """Highest pixel above the sky within 1 px of each star."""
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    boxes = [img[j - 1 : j + 2, i - 1 : i + 2].max() for i, j in zip(ix, iy, strict=True)]
    return np.asarray(boxes, np.float64) - SKY * EXPTIME


def second_moment_fwhm(img, x, y, half=7):
    out = []
    for xi, yi in zip(x, y, strict=True):
        ix, iy = round(xi), round(yi)
        box = img[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
        box = box - SKY * EXPTIME
        gy, gx = np.mgrid[-half : half + 1, -half : half + 1]
        total = box.sum()
        cx, cy = (box * gx).sum() / total, (box * gy).sum() / total
        var = (box * ((gx - cx) ** 2 + (gy - cy) ** 2)).sum() / total / 2
        out.append(2.3548 * math.sqrt(var))
    return np.array(out)


def aperture_sums(img, covered, radius):
    """Sums of ``img`` in disjoint integer-pixel apertures wholly inside ``covered``."""
    r = math.ceil(radius)
    gy, gx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = np.hypot(gx, gy) <= radius
    sums = []
    step = 2 * r + 2
    for cy in range(r, img.shape[0] - r, step):
        for cx in range(r, img.shape[1] - r, step):
            cut = (slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1))
            if covered[cut][disk].all():
                sums.append(float(img[cut][disk].sum(dtype=np.float64)))
    return np.array(sums), int(disk.sum())


def measure_kernel(night, matrices, kernel):
    import sep

    shape = night["shape"]
    n = len(night["frames"])
    stack = np.zeros(shape)
    noise_stack = np.zeros(shape)
    covered = np.ones(shape, bool)
    clean_frames, pixel_rms, corr = [], [], []
    for f, m in zip(night["frames"], matrices, strict=True):
        data, _, mask = align.resample(f["data"], f["unc"], None, m, shape, kernel=kernel)
        covered &= (mask & bits.NODATA) == 0
        stack += data
        noise, _, _ = align.resample(f["noise"], None, None, m, shape, kernel=kernel)
        noise_stack += noise
        inner = noise[40:-40, 40:-40].astype(np.float64)
        pixel_rms.append(float(inner.std()))
        corr.append(float(np.corrcoef(inner[:, :-1].ravel(), inner[:, 1:].ravel())[0, 1]))
        if f["dither"]["dx"] != 0.0:  # the resampled noise-free signal's star widths
            clean, _, _ = align.resample(f["signal"], None, None, m, shape, kernel=kernel)
            clean_frames.append(clean)
    stack /= n
    noise_stack /= n
    stars = bright_isolated(night, covered)
    x, y, flux = night["x"][stars], night["y"][stars], night["flux"][stars]
    image = np.ascontiguousarray(stack, dtype=np.float32)
    wx, wy, _ = sep.winpos(image, x, y, FWHM / 2.3548)
    radius = 3 * FWHM
    measured, _, _ = sep.sum_circle(image - np.float32(SKY * EXPTIME), x, y, radius, subpix=5)
    truth_width = np.median(second_moment_fwhm(night["frames"][0]["signal"], x, y))
    widths = [np.median(second_moment_fwhm(img, x, y)) for img in clean_frames]
    truth_peaks = peaks(night["frames"][0]["signal"], x, y)
    peak = np.concatenate([peaks(img, x, y) / truth_peaks for img in clean_frames])
    sums, area = aperture_sums(noise_stack, covered, radius)
    inner = noise_stack[covered]
    ratio = measured / flux
    return {
        "stars": int(stars.sum()),
        "position_rms_px": float(np.sqrt(np.mean((wx - x) ** 2 + (wy - y) ** 2))),
        "flux_ratio": float(np.median(ratio)),
        "flux_scatter": float(np.sqrt(np.mean((ratio - 1) ** 2))),
        "fwhm_ratio": float(np.median(widths) / truth_width),
        "peak_ratio": float(np.median(peak)),
        "peak_ratio_worst": float(peak.min()),
        "pixel_rms_ratio": float(np.median(pixel_rms)),
        "neighbour_corr": float(np.median(corr)),
        "stack_pixel_ratio": float(inner.std() * math.sqrt(n)),
        "stack_aperture_ratio": float(sums.std() / math.sqrt(area / n)),
        "apertures": int(sums.size),
    }


def phase_errors(kernel, size=256):
    """Centroid errors of two stars resampled back by pure shifts at every 1/64 px phase."""
    shape = (size, size)
    x, y, flux = np.array([100.3, 150.7]), np.array([120.6, 80.2]), np.array([2e4, 5e3])
    truth = render_stars(shape, x, y, flux, FWHM)
    errors = []
    for phase in np.linspace(0.0, 1.0, 65):
        for sx, sy in ((phase, 0.0), (0.0, phase), (phase, -phase)):
            source = render_stars(shape, x + sx, y + sy, flux, FWHM)
            matrix = np.array([[1.0, 0.0, -sx], [0.0, 1.0, -sy], [0.0, 0.0, 1.0]])
            data, _, _ = align.resample(source, None, None, matrix, shape, kernel=kernel)
            for xi, yi in zip(x, y, strict=True):
                ix, iy = round(xi), round(yi)
                gy, gx = np.mgrid[iy - 8 : iy + 9, ix - 8 : ix + 9]
                for img, sign in ((data, 1.0), (truth, -1.0)):
                    box = img[iy - 8 : iy + 9, ix - 8 : ix + 9].astype(np.float64)
                    errors.append(sign * (box * gx).sum() / box.sum())
                    errors.append(sign * (box * gy).sum() / box.sum())
    e = np.array(errors).reshape(-1, 2, 2).sum(axis=1)  # got - want, x and y
    return {"phase_centroid_rms_px": float(np.sqrt(np.mean(e**2))),
            "phase_centroid_worst_px": float(np.abs(e).max())}  # fmt: skip


def native_floor(night):
    """The position measure on the reference frame itself, and its noise's figures."""
    import sep

    f = night["frames"][0]
    shape = night["shape"]
    stars = bright_isolated(night, np.ones(shape, bool))
    x, y, flux = night["x"][stars], night["y"][stars], night["flux"][stars]
    image = np.ascontiguousarray(f["data"])
    wx, wy, _ = sep.winpos(image, x, y, FWHM / 2.3548)
    measured, _, _ = sep.sum_circle(image - np.float32(SKY * EXPTIME), x, y, 3 * FWHM, subpix=5)
    inner = f["noise"][40:-40, 40:-40].astype(np.float64)
    n = len(night["frames"])
    stack = np.mean([g["noise"] for g in night["frames"]], axis=0)
    sums, area = aperture_sums(stack, np.ones(shape, bool), 3 * FWHM)
    return {
        "position_rms_native_px": float(np.sqrt(np.mean((wx - x) ** 2 + (wy - y) ** 2))),
        "flux_ratio_native": float(np.median(measured / flux)),
        "pixel_rms": float(inner.std()),
        "neighbour_corr": float(np.corrcoef(inner[:, :-1].ravel(), inner[:, 1:].ravel())[0, 1]),
        "stack_pixel_ratio_native": float(stack.std() * math.sqrt(n)),
        "stack_aperture_ratio_native": float(sums.std() / math.sqrt(area / n)),
    }


def time_kernels(size, repeat, seed):
    rng = np.random.default_rng(seed)
    shape = (size, size)
    data = (SKY * EXPTIME + rng.normal(0.0, 15.0, shape)).astype(np.float32)
    unc = np.full(shape, 15.0, np.float32)
    mask = np.zeros(shape, bits.MASK_DTYPE)
    for cy, cx in rng.integers(0, size - 4, (round(1000 * (size / 2048) ** 2), 2)):
        mask[cy, cx : cx + 3] |= bits.COSMIC
    matrix = true_matrix(shape, dx=10.4, dy=-3.55, rot_deg=-0.23)
    times = {k: [] for k in KERNELS}
    kernels = list(KERNELS)
    align.resample(data, unc, mask, matrix, shape)  # first-use imports outside the timing
    for rep in range(repeat):
        for k in kernels if rep % 2 == 0 else kernels[::-1]:
            t = time.process_time()
            align.resample(data, unc, mask, matrix, shape, kernel=k)
            times[k].append(time.process_time() - t)
    summary = {}
    for k, v in times.items():
        summary[k] = {"median": statistics.median(v), "min": min(v), "max": max(v)}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--time-size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--fwhm", type=float, default=3.0, help="star FWHM, px")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "resample.json")
    args = parser.parse_args(argv)
    global FWHM
    FWHM = args.fwhm

    night = make_night(args.frames, args.size, args.seed)
    matrices = found_matrices(night)
    truths = [f["matrix"] for f in night["frames"]]
    errors = [grid_rms(m, t, night["shape"]) for m, t in zip(matrices, truths, strict=True)]
    floor = native_floor(night)
    results = {}
    for k, name in KERNELS.items():
        results[k] = {"kernel": name, **measure_kernel(night, matrices, k), **phase_errors(k)}
        print(f"{name:26s} " + " ".join(f"{key} {v:.4g}" for key, v in results[k].items()
                                         if isinstance(v, float)), flush=True)  # fmt: skip
    timing = time_kernels(args.time_size, args.repeat, args.seed)
    for k in KERNELS:
        results[k]["cpu_s"] = timing[k]
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": [round(v, 2) for v in os.getloadavg()],
        },
        "night": {
            "frames": args.frames,
            "shape": list(night["shape"]),
            "stars": len(night["x"]),
            "seed": args.seed,
            "fwhm_px": FWHM,
            "transform_error_px": {"median": statistics.median(errors[1:]), "max": max(errors)},
            **floor,
        },
        "time_shape": [args.time_size, args.time_size],
        "repeat": args.repeat,
        "kernels": {str(k): v for k, v in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"transform error vs truth: median {statistics.median(errors[1:]):.4f} px, "
          f"max {max(errors):.4f} px; native position rms "
          f"{floor['position_rms_native_px']:.4f} px")  # fmt: skip
    print("native (the frames not resampled): " + ", ".join(
        f"{k} {v:.4g}" for k, v in floor.items()))  # fmt: skip
    head = ("kernel", "cpu s", "pos px", "flux", "scatter", "fwhm", "peak", "worst", "px rms",
            "corr",
            "stack px", "stack ap", "phase rms", "phase worst")  # fmt: skip
    print(" | ".join(head))
    for r in results.values():
        print(" | ".join([r["kernel"], f"{r['cpu_s']['median']:.3f}",
              f"{r['position_rms_px']:.4f}", f"{r['flux_ratio']:.4f}",
              f"{r['flux_scatter']:.4f}", f"{r['fwhm_ratio']:.3f}",
              f"{r['peak_ratio']:.3f}", f"{r['peak_ratio_worst']:.3f}",
              f"{r['pixel_rms_ratio']:.3f}", f"{r['neighbour_corr']:.3f}",
              f"{r['stack_pixel_ratio']:.3f}", f"{r['stack_aperture_ratio']:.3f}",
              f"{r['phase_centroid_rms_px']:.4f}",
              f"{r['phase_centroid_worst_px']:.4f}"]))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
