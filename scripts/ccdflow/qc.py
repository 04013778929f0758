"""Quality measures of frames and stacks, and the per-frame QC table.

A frame's fate is carried in its product header (``QCSTATUS`` ok/rejected,
``QCREASON``, ``QCDETAIL``), so every later step, and ``results/qc/frames.tsv``,
can read it without a side channel.
"""

__all__ = ["QC_COLUMNS", "fwhm", "mark", "qc_row", "sky_level"]

import numpy as np

from ccdflow import provenance

#: Columns of results/qc/frames.tsv.
QC_COLUMNS = (
    "frame",
    "group",
    "status",
    "reason",
    "detail",
    "cosmic_fraction",
    "reference",
    "n_matches",
    "rms_residual",
    "dx",
    "dy",
    "rotation_deg",
)


def mark(header, ok, reason="", detail=""):
    """Record a frame's QC status in its product header (in place)."""
    provenance.add_step(header, "QCSTATUS", "ok" if ok else "rejected")
    if not ok:
        provenance.add_step(header, "QCREASON", reason)
        if detail:
            provenance.add_step(header, "QCDETAIL", detail[:60])
    return header


def qc_row(frame, group, header):
    """One row of the QC table from an aligned product's header."""
    get = header.get
    return {
        "frame": frame,
        "group": group,
        "status": get("QCSTATUS", "ok"),
        "reason": get("QCREASON", ""),
        "detail": get("QCDETAIL", ""),
        "cosmic_fraction": get("CRFRAC", ""),
        "reference": get("ALIGNREF", ""),
        "n_matches": get("ALNNMAT", ""),
        "rms_residual": get("ALNRMS", ""),
        "dx": get("ALNDX", ""),
        "dy": get("ALNDY", ""),
        "rotation_deg": get("ALNROT", ""),
    }


def sky_level(data, mask=None, step=4):
    """Robust sky level and noise: sigma-clipped median and MAD std of a pixel subsample."""
    from astropy.stats import sigma_clipped_stats

    sub = data[::step, ::step]
    good = None if mask is None else mask[::step, ::step] != 0
    _, median, std = sigma_clipped_stats(sub, mask=good, sigma=3.0, stdfunc="mad_std")
    return float(median), float(std)


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
