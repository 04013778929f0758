"""Cosmic-ray cleaning on 2048 x 2048 frames: time, recall and false flags against the truth.

Usage::

    python benchmarks/bench_cosmics.py                       # night in /tmp/ccdflow-bench-cosmics
    python benchmarks/bench_cosmics.py --night DIR --frames 8 --repeat 1 --out results.json
    python benchmarks/bench_cosmics.py --before OLD/cosmics.py   # also time an older module
    #   e.g. git show 920a679:scripts/ccdflow/cosmics.py > /tmp/cosmics_before.py

``--night`` is a demo night of the ``benchmark`` preset (2048 x 2048, 16 lights of 60 s in
V and R, ~750 cosmic-ray events a frame); it is generated there (``demo.make_night``, ~20
s) when it has no ``truth/truth.json``. Each light is calibrated with the true bias, dark
rate and flat of the truth (``((raw - bias) * gain - dark_rate * t) / flat``, electrons;
``bits.SATURATED`` where the raw frame is at the saturation level), so the frames carry
Poisson and read noise only. Methods, each on the same frame:

- ``whole``: ``clean_cosmics(tiled=False)``: astroscrappy on the whole (padded) frame;
- ``tiled``: ``clean_cosmics()`` (the default): astroscrappy only on tiles around the
  candidate pixels, same parameters and inputs;
- ``plain``: ``astroscrappy.detect_cosmics`` with its defaults on the frame in ADU
  (``gain`` and ``readnoise`` of the detector given, no mask);
- ``before`` (with ``--before FILE``): ``clean_cosmics`` of another version of the module.

Per method: seconds per frame (wall and process CPU of the call; median, min and max over
the frames; with ``--repeat N`` the least of N calls of each frame), ``recall`` (flagged
injected cosmic-ray pixels / injected ones, unmasked pixels only), ``false_flags`` (flagged
pixels farther than 1 px from any injected cosmic-ray pixel) and ``core_flags`` (flagged
pixels within 1 FWHM of a bright, unsaturated star: noiseless peak > 5000 e-, not touching
a cosmic ray); ``false_flags_at_hot_pixels``: those of the false flags within 1 px of a hot
pixel (true dark rate > 1 e-/s: subtracting the true dark leaves its Poisson noise, which
the noise model does not know; a real reduction masks them). ``agreement`` compares
``tiled`` with ``whole``: ``jaccard`` = |T & W| / |T | W|, ``recall`` = |T & W| / |W|,
``precision`` = |T & W| / |T|, summed over the frames, and whether the cleaned data are
identical. OpenMP is set to one thread
(``OMP_NUM_THREADS=1``) before astroscrappy is imported. JSON goes to stdout, or ``--out``.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy / astroscrappy load their OpenMP runtime
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from ccdflow import bits, demo
from ccdflow.cosmics import clean_cosmics

#: Noiseless peak (e-) above which a star counts as bright (as in tests/unit/test_cosmics.py).
BRIGHT_PEAK = 5000.0
#: Dark rate (e-/s) above which a pixel is hot (the demo's others have 0.05 e-/s).
HOT_RATE = 1.0


def calibrated_lights(night, n_frames):
    """Yield (name, electrons, mask, cosmic-ray truth, bright-core pixels, hot pixels, spec)
    per light."""
    from astropy.io import fits
    from scipy import ndimage

    truth = demo.load_truth(night)
    spec = truth["spec"]
    lights = [f for f in truth["frames"] if f["type"] == "light"][:n_frames]
    unit_peak = demo.render_stars((33, 33), [16.0], [16.0], [1.0], spec["fwhm"]).max()
    stars = truth["stars"]
    hot = truth["dark_rate"] > HOT_RATE
    for f in lights:
        raw = fits.getdata(truth["raw_dir"] / f["file"]).astype(np.float32)
        t = f["exptime"]
        bias = demo.frame_bias(truth, f).astype(np.float32)
        electrons = (raw - bias) * np.float32(spec["gain"]) - truth["dark_rate"] * np.float32(t)
        electrons /= truth["flat"][f["filter"]]
        mask = np.zeros(raw.shape, bits.MASK_DTYPE)
        mask[raw >= spec["saturation"]] |= bits.SATURATED
        cosmic = truth["cosmics"][Path(f["file"]).stem]
        dither = {k: f[k] for k in ("dx", "dy", "rot_deg")}
        x, y = demo.transform_positions(stars["x"], stars["y"], shape=raw.shape, **dither)
        peak = np.asarray(stars[f"flux_{f['filter']}"]) * t * unit_peak
        bright = (peak > BRIGHT_PEAK) & ~np.isin(stars["id"], f["saturated_star_ids"])
        core = np.zeros(raw.shape, bool)
        r = int(np.ceil(spec["fwhm"]))
        for xi, yi in zip(x[bright], y[bright], strict=True):
            x0, y0 = round(xi), round(yi)
            ys = slice(max(y0 - r, 0), min(y0 + r + 1, raw.shape[0]))
            xs = slice(max(x0 - r, 0), min(x0 + r + 1, raw.shape[1]))
            yy, xx = np.mgrid[ys, xs]
            core[ys, xs] |= (xx - xi) ** 2 + (yy - yi) ** 2 <= spec["fwhm"] ** 2
        core &= (mask == 0) & ~ndimage.binary_dilation(cosmic, np.ones((3, 3), bool))
        yield f["file"], electrons.astype(np.float32), mask, cosmic, core, hot, spec


def timed(call, repeat):
    """(result of the last call, least wall s, least process CPU s) over ``repeat`` calls."""
    best_wall = best_cpu = np.inf
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = call()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return out, best_wall, best_cpu


def stats(values):
    """Median, min and max, rounded."""
    v = np.asarray(values, float)
    return {
        "median": round(float(np.median(v)), 3),
        "min": round(float(v.min()), 3),
        "max": round(float(v.max()), 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--night", type=Path, default=Path("/tmp/ccdflow-bench-cosmics"))
    parser.add_argument("--frames", type=int, default=16, help="lights to use (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="calls per frame and method")
    parser.add_argument("--before", type=Path, help="an older cosmics.py to time as 'before'")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)

    import astroscrappy
    from scipy import ndimage

    if not (args.night / "truth" / "truth.json").exists():
        demo.make_night(args.night, preset="benchmark")
    methods = {}
    if args.before:
        spec_ = importlib.util.spec_from_file_location("cosmics_before", args.before)
        before = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(before)
        methods["before"] = lambda e, m, s: before.clean_cosmics(e, m, read_noise=s["read_noise"])
    methods["whole"] = lambda e, m, s: clean_cosmics(e, m, read_noise=s["read_noise"], tiled=False)
    methods["tiled"] = lambda e, m, s: clean_cosmics(e, m, read_noise=s["read_noise"])

    def plain(e, m, s):
        adu = e / np.float32(s["gain"])
        return astroscrappy.detect_cosmics(adu, gain=s["gain"], readnoise=s["read_noise"])

    methods["plain"] = plain
    load = [os.getloadavg()[0]]
    per = {
        k: {
            "wall_s": [],
            "cpu_s": [],
            "recall": [],
            "false_flags": [],
            "core_flags": [],
            "false_hot": [],
        }
        for k in methods
    }
    frames, agree = [], {"both": 0, "whole": 0, "tiled": 0, "same_data": True}
    for name, e, m, cosmic, core, hot, spec in calibrated_lights(args.night, args.frames):
        truth = cosmic & (m == 0)
        near = ndimage.binary_dilation(cosmic, np.ones((3, 3), bool))
        near_hot = ndimage.binary_dilation(hot, np.ones((3, 3), bool)) & ~near
        row = {"frame": name, "cosmic_pixels": int(truth.sum()), "core_pixels": int(core.sum())}
        flags = {}
        for key, run in methods.items():
            out, wall, cpu = timed(lambda run=run, e=e, m=m, s=spec: run(e, m, s), args.repeat)
            if key == "plain":
                f, data = out[0], None
            else:
                assert out.ok, f"{key} {name}: {out.detail}"
                f, data = (out.mask & bits.COSMIC) != 0, out.data
                row[f"{key}_detail"] = out.detail
            flags[key] = (f, data)
            p = per[key]
            p["wall_s"].append(wall)
            p["cpu_s"].append(cpu)
            p["recall"].append(float((f & truth).sum() / truth.sum()))
            p["false_flags"].append(int((f & ~near).sum()))
            p["core_flags"].append(int((f & core).sum()))
            p["false_hot"].append(int((f & near_hot).sum()))
            row[key] = {
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "flags": int(f.sum()),
                "recall": round(p["recall"][-1], 5),
                "false_flags": p["false_flags"][-1],
                "core_flags": p["core_flags"][-1],
                "false_flags_at_hot_pixels": p["false_hot"][-1],
            }
        (w, wd), (t, td) = flags["whole"], flags["tiled"]
        agree["both"] += int((w & t).sum())
        agree["whole"] += int(w.sum())
        agree["tiled"] += int(t.sum())
        agree["same_data"] &= bool(np.array_equal(wd, td, equal_nan=True))
        row["agreement_jaccard"] = round(float((w & t).sum() / max((w | t).sum(), 1)), 6)
        frames.append(row)
        print(
            f"{name}: "
            + ", ".join(f"{k} {row[k]['wall_s']:.2f} s" for k in methods)
            + f"; agreement {row['agreement_jaccard']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    load.append(os.getloadavg()[0])
    both, nw, nt = agree["both"], agree["whole"], agree["tiled"]
    summary = {
        k: {
            "wall_s": stats(p["wall_s"]),
            "cpu_s": stats(p["cpu_s"]),
            "recall": stats(p["recall"]),
            "recall_all": round(
                float(np.average(p["recall"], weights=[f["cosmic_pixels"] for f in frames])), 5
            ),
            "false_flags": stats(p["false_flags"]),
            "false_flags_at_hot_pixels": stats(p["false_hot"]),
            "core_flags_total": int(sum(p["core_flags"])),
        }
        for k, p in per.items()
    }
    doc = {
        "night": str(args.night),
        "n_frames": len(frames),
        "repeat": args.repeat,
        "omp_num_threads": os.environ["OMP_NUM_THREADS"],
        "load_average_1min": {"start": load[0], "end": load[1]},
        "methods": summary,
        "agreement_tiled_vs_whole": {
            "jaccard": round(both / max(nw + nt - both, 1), 6),
            "recall": round(both / max(nw, 1), 6),
            "precision": round(both / max(nt, 1), 6),
            "flags_whole": nw,
            "flags_tiled": nt,
            "cleaned_data_identical": agree["same_data"],
        },
        "frames": frames,
    }
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
