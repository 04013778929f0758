"""Quality measures of frames and stacks, and the per-frame QC table.

A frame's fate is in its record (``results/records/{frame}.json``, written by the frame
job) and in its group's selection (``results/selection/{group}.json``);
``results/qc/frames.tsv`` is built from both.
"""

__all__ = ["QC_COLUMNS", "fwhm", "qc_row"]

import numpy as np

#: Columns of results/qc/frames.tsv.
QC_COLUMNS = (
    "frame",
    "group",
    "status",
    "step",
    "reason",
    "detail",
    "value",
    "threshold",
    "unit",
    "gain",
    "gain_source",
    "read_noise",
    "read_noise_source",
    "sky",
    "sky_noise",
    "cosmic_pixels",
    "cosmic_fraction",
    "n_stars",
    "fwhm_px",
    "fwhm_arcsec",
    "ellipticity",
    "transparency",
    "saturated_fraction",
    "reference",
    "n_matches",
    "rms_residual",
    "dx",
    "dy",
    "rotation_deg",
    "seconds",
)


def _round(value, digits=4):
    return "" if value is None else round(float(value), digits)


def qc_row(record, exclusion=None):
    """One row of the QC table from a frame's record and its selection decision.

    ``exclusion``: the selection's entry for the frame when it was left out, else None.
    ``value`` and ``threshold`` are the measured metric and the limit of the quality gate
    that excluded it (in the metric's unit; empty for other reasons); the metric columns
    come from the record's ``metrics`` (`ccdflow.metrics.frame_metrics`, data unit).
    """
    detector = record.get("detector") or {}
    gain = detector.get("gain") or {}
    rn = detector.get("read_noise") or {}
    cosmics = record.get("cosmics") or {}
    alignment = record.get("alignment") or {}
    quality = record.get("metrics") or {}
    shift = alignment.get("shift") or ("", "")
    ok = exclusion is None and record["status"] == "ok"
    why = exclusion or record
    return {
        "frame": record["frame"],
        "group": record["group"],
        "status": "ok" if ok else "rejected",
        "step": "" if ok else why.get("step", why.get("failed_step", "")),
        "reason": "" if ok else why.get("reason", ""),
        "detail": "" if ok else why.get("detail", ""),
        "value": "" if ok or exclusion is None else _round(exclusion.get("value"), 6),
        "threshold": "" if ok or exclusion is None else _round(exclusion.get("threshold"), 6),
        "unit": record.get("unit") or "",
        "gain": _round(gain.get("value")),
        "gain_source": gain.get("source", ""),
        "read_noise": _round(rn.get("value")),
        "read_noise_source": rn.get("source", ""),
        "sky": _round((record.get("sky") or {}).get("value"), 2),
        "sky_noise": _round((record.get("sky_noise") or {}).get("value"), 3),
        "cosmic_pixels": cosmics.get("n_flagged", ""),
        "cosmic_fraction": _round(cosmics.get("fraction"), 6),
        "n_stars": quality.get("n_stars", ""),
        "fwhm_px": _round(quality.get("fwhm_px"), 3),
        "fwhm_arcsec": _round(quality.get("fwhm_arcsec"), 3),
        "ellipticity": _round(quality.get("ellipticity"), 4),
        "transparency": _round(quality.get("transparency"), 4),
        "saturated_fraction": _round(quality.get("saturated_fraction"), 6),
        "reference": record.get("reference", ""),
        "n_matches": alignment.get("n_matches", ""),
        "rms_residual": _round(alignment.get("rms_residual")),
        "dx": _round(shift[0], 3) if shift[0] != "" else "",
        "dy": _round(shift[1], 3) if shift[1] != "" else "",
        "rotation_deg": _round(alignment.get("rotation_deg"), 5),
        "seconds": _round((record.get("seconds") or {}).get("total"), 2),
    }


def fwhm(data, mask=None, threshold=10.0, max_sources=200):
    """Median FWHM (px) of bright, isolated, unmasked stars: twice the half-flux radius.

    For a Gaussian the half-light diameter equals the FWHM. Returns NaN without stars.
    """
    import sep

    data = np.ascontiguousarray(data, dtype=np.float32)
    bad = None if mask is None else np.ascontiguousarray(mask != 0)
    bkg = sep.Background(data, mask=bad)
    sub = data - bkg.back()
    objects = sep.extract(sub, threshold, err=bkg.globalrms, mask=bad, minarea=5)
    if len(objects) == 0:
        return float("nan")
    keep = (objects["flag"] == 0) & (objects["npix"] < 500)
    objects = objects[keep]
    if len(objects) == 0:
        return float("nan")
    objects = objects[np.argsort(objects["flux"])[::-1][:max_sources]]
    radius, flags = sep.flux_radius(
        sub, objects["x"], objects["y"], 6.0 * objects["a"], 0.5, subpix=5
    )
    good = (flags == 0) & np.isfinite(radius) & (radius > 0)
    return float(2 * np.median(radius[good])) if good.any() else float("nan")
