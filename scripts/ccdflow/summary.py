"""What a run produced, and (for a generated night) how close it came to the truth."""

__all__ = ["format_summary", "inventory_counts", "stack_report", "truth_report"]

import csv
import json
from pathlib import Path

import numpy as np


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def inventory_counts(workdir):
    """(type, filter, exposure group) -> number of frames, from results/index/frames.tsv."""
    counts = {}
    for r in _rows(Path(workdir) / "results/index/frames.tsv"):
        key = (r["imagetyp"], r["filter"] or "-", r["expgroup"])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], float(kv[0][2]))))


def truth_report(workdir, truth):
    """Compare masters and calibrated frames of a run with the truth of a demo night.

    Parameters
    ----------
    workdir : path-like
        Where the workflow ran (holds ``results/``).
    truth : dict
        :func:`ccdflow.demo.load_truth` of the night.

    Returns
    -------
    list of dict
        One row per product: ``product``, ``measure``, ``value``, ``expected`` and
        ``ratio`` (value / expected; about 1 means noise-limited).
    """
    from ccdflow import demo
    from ccdflow.io import empty_product, read_product

    workdir = Path(workdir)
    g, rn = truth["spec"]["gain"], truth["spec"]["read_noise"]
    frames = _rows(workdir / "results/index/frames.tsv")
    n_of = {t: sum(r["imagetyp"] == t for r in frames) for t in ("bias", "dark", "flat")}
    out = []
    for path in sorted((workdir / "results/masters").glob("bias_*.fits")):
        if empty_product(path) is not None:  # an empty master: no image to compare
            continue
        data, header = read_product(path)[:2]
        expected = rn / g / np.sqrt(n_of["bias"])
        true = truth["bias"]
        if "OVSCCORR" in header:  # after the overscan only the 2-D structure is left
            true = true - truth["spec"]["bias_level"]
        rms = float(np.std(data - true))
        out.append(
            dict(product=path.name, measure="rms vs true bias (ADU)", value=rms, expected=expected)
        )
    for path in sorted((workdir / "results/masters").glob("dark_*.fits")):
        if empty_product(path) is not None:  # an empty master: no image to compare
            continue
        data, header = read_product(path)[:2]
        t = float(header["EXPTIME"])
        n = int(header["NCOMBINE"])
        rate = data * g / t
        # frame noise averages down over n darks; the master bias error is common to all
        var = (rn**2 + truth["dark_rate"] * t) / n + rn**2 / n_of["bias"]
        sigma = np.sqrt(var) / t
        out.append(
            dict(
                product=path.name,
                measure="rms vs true dark rate (e-/s)",
                value=float(np.std(rate - truth["dark_rate"])),
                expected=float(np.sqrt(np.mean(sigma**2))),
            )
        )
    levels = {}
    for f in truth["frames"]:
        if f["type"] == "flat":
            levels.setdefault(f["filter"], []).append(f["level_e"])
    for path in sorted((workdir / "results/masters").glob("flat_*.fits")):
        if empty_product(path) is not None:  # an empty master: no image to compare
            continue
        data, header = read_product(path)[:2]
        # the filter of the flat's inputs, whatever keyword the camera writes it in
        first = {f["file"]: f for f in truth["frames"]}.get(str(header.get("IMCMB001", "")))
        filt = first["filter"] if first else ""
        if filt not in truth["flat"]:
            continue
        lv = levels[filt]
        expected = np.sqrt(np.pi / 2) / np.sqrt(len(lv) * np.mean(lv))
        out.append(
            dict(
                product=path.name,
                measure="rms vs true flat",
                value=float(np.std(data - truth["flat"][filt])),
                expected=expected,
            )
        )
    by_stem = {Path(f["file"]).stem: f for f in truth["frames"] if f["type"] == "light"}
    zs = []
    for path in sorted((workdir / "results/calibrated").glob("*.fits")):
        frame = by_stem.get(path.stem)
        if frame is None or empty_product(path) is not None:
            continue
        data, _, unc, mask = read_product(path)
        expected = demo.expected_electrons(truth, frame)
        signal = (expected - truth["dark_rate"] * frame["exptime"]) / truth["flat"][
            frame["filter"]
        ]
        good = (mask == 0) & ~truth["cosmics"][path.stem]
        zs.append(float(np.std((data - signal)[good] / unc[good])))
    if zs:
        out.append(
            dict(
                product=f"{len(zs)} calibrated frames",
                measure="std of (data - truth) / uncertainty",
                value=float(np.median(zs)),
                expected=1.0,
            )
        )
    for row in out:
        row["ratio"] = row["value"] / row["expected"] if row["expected"] else float("nan")
    return out


def _sky_noise(data, mask):
    from astropy.stats import sigma_clipped_stats

    return float(sigma_clipped_stats(data, mask=mask, sigma=3, stdfunc="mad_std")[2])


def _star_fluxes(data, x, y, radius, annulus=(12.0, 18.0)):
    import sep

    data = np.ascontiguousarray(data, dtype=np.float32)
    flux, _, _ = sep.sum_circle(data, x, y, radius, subpix=5)
    sky, _, _ = sep.sum_circann(data, x, y, *annulus, subpix=5)
    ring = np.pi * (annulus[1] ** 2 - annulus[0] ** 2)
    return flux - sky / ring * np.pi * radius**2


def stack_report(workdir, truth):
    """Per stack: noise gain over a single frame, and star fluxes against the truth.

    Returns rows like :func:`truth_report`. The noise row compares the sky noise of one
    aligned frame with that of the stack (expected: sqrt(N)); the flux row is the median
    ratio of aperture fluxes (r = 3 FWHM) of bright, isolated, unsaturated stars to their
    true flux x exposure.
    """
    from astropy.io import fits

    from ccdflow import demo
    from ccdflow.io import read_product

    workdir = Path(workdir)
    spec = truth["spec"]
    stars = truth["stars"]
    lights = {Path(f["file"]).stem: f for f in truth["frames"] if f["type"] == "light"}
    out = []
    for path in sorted((workdir / "results/stacks").glob("*.fits")):
        with fits.open(path) as hdul:
            header = hdul[0].header
            if hdul[0].data is None:  # an empty group: no frame was stacked
                continue
            data = hdul[0].data.astype(np.float32)
            coverage = hdul["COVERAGE"].data
        n = int(header["NCOMBINE"])
        if n < 2:
            continue
        one, _, _, one_mask = read_product(workdir / "results/aligned" / header["IMCMB001"])
        full = coverage == n
        gain = _sky_noise(one, (one_mask != 0) | ~full) / _sky_noise(data, ~full)
        out.append(
            dict(
                product=path.name,
                measure="single-frame / stack sky noise",
                value=gain,
                expected=float(np.sqrt(n)),
            )
        )
        ref = lights[str(header["ALIGNREF"])]
        frame = lights[Path(str(header["IMCMB001"])).stem]
        filt, t = frame["filter"], frame["exptime"]
        x, y = demo.transform_positions(
            np.asarray(stars["x"]),
            np.asarray(stars["y"]),
            dx=ref["dx"],
            dy=ref["dy"],
            rot_deg=ref["rot_deg"],
            shape=data.shape,
        )
        flux = np.asarray(stars[f"flux_{filt}"]) * t
        radius = 3 * spec["fwhm"]
        ny, nx = data.shape
        inside = (x > 20) & (x < nx - 21) & (y > 20) & (y < ny - 21)
        d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
        np.fill_diagonal(d, np.inf)
        isolated = (d < 20).sum(axis=1) == 0
        saturated = set()
        for f in lights.values():
            saturated.update(f.get("saturated_star_ids", []))
        ok = inside & isolated & ~np.isin(np.arange(len(x)), list(saturated))
        ok &= flux > 200 * np.sqrt(spec["read_noise"] ** 2 + 10 * t)
        if ok.sum() >= 3:
            measured = _star_fluxes(data, x[ok], y[ok], radius)
            out.append(
                dict(
                    product=path.name,
                    measure=f"star flux / truth ({int(ok.sum())} stars)",
                    value=float(np.median(measured / flux[ok])),
                    expected=1.0,
                )
            )
    for row in out:
        row["ratio"] = row["value"] / row["expected"]
    return out


def format_summary(workdir, truth=None):
    """Human-readable summary of a run (and of its truth comparison, if given)."""
    workdir = Path(workdir)
    lines = [f"Results in {workdir / 'results'}", "", "Frames found (type, filter, exposure):"]
    for (t, f, e), n in inventory_counts(workdir).items():
        lines.append(f"  {t:6s} {f:10s} {e:>8s} s  {n:4d}")
    rejected = _rows(workdir / "results/index/rejected.tsv")
    lines.append(f"  rejected: {len(rejected)} (results/index/rejected.tsv)")
    from ccdflow.io import empty_product

    masters, empty_masters = [], []
    for path in sorted((workdir / "results/masters").glob("*.fits")):
        header = empty_product(path)
        if header is None:
            masters.append(path.name)
        elif not path.name.startswith("bpm_"):
            why = header.get("EMPTYWHY", "")
            empty_masters.append(f"  {path.name}: empty ({header.get('QCREASON', '')}: {why})")
    lines += ["", f"Masters made: {len(masters)}", *(f"  {m}" for m in masters)]
    if empty_masters:
        lines += [f"Empty masters (their frames rejected, no_good_master): {len(empty_masters)}"]
        lines += empty_masters
    bpms = sorted((workdir / "results/masters").glob("bpm_*.fits"))
    if bpms:
        from astropy.io import fits

        lines += ["", "Bad pixels per setup (results/masters/bpm_{setup}.fits):"]
        for path in bpms:
            h = fits.getheader(path)
            if "NBADPIX" not in h:  # every master of the setup was empty
                lines.append(f"  {path.stem.removeprefix('bpm_')}: none (every master empty)")
                continue
            counts = ", ".join(
                f"{name} {h[card]}"
                for name, card in (
                    ("hot", "NHOT"),
                    ("dead", "NDEAD"),
                    ("bad column", "NBADCOL"),
                    ("below flat floor", "NFLATLOW"),
                    ("user map", "NUSERBAD"),
                )
                if card in h
            )
            lines.append(f"  {path.stem.removeprefix('bpm_')}: {counts}; any {h['NBADPIX']}")
    calibrated = list((workdir / "results/calibrated").glob("*.fits"))
    lines += ["", f"Frames calibrated: {len(calibrated)} (results/calibrated/)"]
    selections = [
        json.loads(p.read_text()) for p in sorted((workdir / "results/selection").glob("*.json"))
    ]
    empty = [s for s in selections if not s["selected"]]
    made = len(selections) - len(empty)
    lines += ["", f"Stacks: {made} (results/stacks/, previews in results/qc/previews/)"]
    for s in empty:
        reasons = ", ".join(sorted({e["reason"] for e in s["excluded"]}))
        lines.append(f"  group {s['group']}: no stack, every frame was excluded ({reasons})")
    qc_path = workdir / "results/qc/frames.tsv"
    if qc_path.exists():
        excluded = [r for r in _rows(qc_path) if r["status"] != "ok"]
        lines.append(f"  frames excluded from stacks: {len(excluded)} (results/qc/frames.tsv)")
        lines += [f"    {r['frame']}: {r['reason']} {r['detail']}" for r in excluded]
    if truth is not None:
        lines += ["", "Against the truth of the generated night (ratio ~1 = noise-limited):"]
        for r in truth_report(workdir, truth) + stack_report(workdir, truth):
            lines.append(
                f"  {r['product']:32s} {r['measure']:38s} {r['value']:10.4g}"
                f"  expected {r['expected']:9.4g}  ratio {r['ratio']:5.2f}"
            )
    return "\n".join(lines)
