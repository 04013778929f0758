"""Quality metrics of a calibrated frame, and the group-relative gates that reject frames.

`frame_metrics` measures one calibrated frame (electrons) with its mask; `transparency`
compares its stars with the reference frame's; `gate_group` decides, for all the frames
of one group at once, which are left out of the stack and why.

Record schema (`frame_metrics`; units in the key names, None where not measurable)
-----------------------------------------------------------------------------------
``sky_e``, ``sky_noise_e``
    Sky level and sky noise per pixel (e-): the global level and rms of
    ``sep.Background`` (SExtractor's clipped mode estimator in
    64-px meshes, median-filtered: its global level and rms), the background the star
    detection subtracts. (astropy's ``sigma_clipped_stats`` gave the same within the
    noise but its import cost 0.18 s of CPU in every frame job, which does not otherwise
    import astropy.)
``n_stars``
    Sources detected: ``sep.extract`` above ``detection_sigma`` x the background rms with at
    least ``min_area`` connected pixels (a lone hot pixel or cosmic ray has fewer).
``n_psf_stars``
    Stars used for the PSF: not blended, not touching the frame edge, no masked or
    saturated pixel, no other detection within ``isolation`` x the first FWHM estimate; the
    brightest ``max_psf_stars``. With fewer than ``min_psf_stars`` the PSF is not
    measured (``fwhm_px``, ``ellipticity``: None; ``stars`` empty).
``fwhm_px``, ``fwhm_arcsec``
    Median FWHM of the PSF stars: twice the half-flux radius (``sep.flux_radius``), exact
    for a Gaussian and robust for other profiles; arcsec when ``pixel_scale`` is given.
``ellipticity``
    Median ``1 - b / a`` of the PSF stars (``a``, ``b``: sep's semi-axes of the isophotal
    second moments); 0 for round stars, 0.6 for a star trailed to 2.5 times its width.
``saturated_fraction``
    Fraction of all pixels with `ccdflow.bits.SATURATED` set (or at or above
    ``saturation``, when given).
``stars``
    ``{'x_px': [...], 'y_px': [...], 'flux_e': [...]}``: the brightest ``catalogue_size``
    PSF stars (0-based pixel positions, aperture flux in e- in a radius of ``aperture`` x
    FWHM), what `transparency` needs from the reference frame's record.

Gates (`GATES`, rules as data: a new gate is one row)
-----------------------------------------------------
Each gate compares one metric with either an absolute limit or a multiple of the median of
the *other* frames of the group (so a frame is never compared with itself, and two frames
are enough to tell the bad one). The first failing gate, in table order, is the reason;
all failing gates are listed. The order puts causes before symptoms: a trailed frame also
has a large FWHM, a cloudy one also few stars. Defaults, and why:

* ``saturated``: ``saturated_fraction > 0.05``, BANZAI's empirical limit: that much
  saturation means twilight, the Moon or a wrong exposure, not a few bright stars.
* ``cloudy``: ``transparency < 0.5`` x the group median. An unweighted mean of N frames
  gains S/N from one more frame of relative throughput t only if
  ``t > sqrt(N (N + 1)) - N`` (0.49 for N = 8, 0.5 for large N): below half the
  throughput a frame makes the stack worse. Thin cirrus (10-30 % loss) is kept.
* ``trailed``: ``ellipticity > 0.3``: stars 1.4 times longer than wide, clearly trailed or
  out of guiding; good tracking gives 0.05-0.15 and mild optical aberrations stay below.
* ``bad_seeing``: ``fwhm_px > 1.5`` x the group median: beyond 1.5 x the stack's PSF is
  visibly broadened (and a point source loses a third of its S/N per frame); seeing
  varying by 20-30 % during a night is normal and kept.
* ``few_stars``: ``n_stars < 0.5`` x the group median: half the stars detected means the
  limiting depth dropped by the better part of a magnitude (clouds without matched stars,
  focus lost, a dome in the way), while statistical scatter is a few per cent.
"""

__all__ = [
    "GATES",
    "Gate",
    "flux_ratio",
    "frame_metrics",
    "gate_group",
    "transparency",
]

import dataclasses
import math

import numpy as np

from ccdflow import bits

_GAUSS_FWHM = 2 * math.sqrt(2 * math.log(2))  # FWHM / sigma of a Gaussian


def frame_metrics(
    data,
    mask=None,
    *,
    pixel_scale=None,
    saturation=None,
    detection_sigma=5.0,
    min_area=5,
    isolation=4.0,
    aperture=2.0,
    max_psf_stars=200,
    catalogue_size=100,
    min_psf_stars=5,
    detection=None,
):
    """Quality metrics of one calibrated frame (the record schema of this module).

    Parameters
    ----------
    data : array
        Calibrated frame (e-), cosmic rays cleaned.
    mask : array or None
        `ccdflow.bits` mask plane (non-zero pixels are not used).
    pixel_scale : float or None
        Pixel scale (arcsec/px), for ``fwhm_arcsec``.
    saturation : float or None
        Level (e-) at or above which a pixel counts as saturated, besides the SATURATED bit.
    detection_sigma : float
        Detection threshold (background rms per pixel).
    min_area : int
        Minimum connected pixels of a detection.
    isolation : float
        A PSF star has no other detection within this many FWHM.
    aperture : float
        Radius of the photometric aperture, in FWHM (2 FWHM hold 99.99 % of a Gaussian).
    max_psf_stars, catalogue_size : int
        Brightest stars used for the PSF, and kept in ``stars``.
    min_psf_stars : int
        Fewest PSF stars for ``fwhm_px``, ``ellipticity`` and ``stars`` (else None and
        empty): the median of fewer is too noisy for a gate to reject a frame on (two
        round stars can give an ellipticity of 0.3), and `transparency` needs 5 anyway.
    detection : ccdflow.align.Detection, optional
        A `ccdflow.align.detect` of this frame (the star list's): used when it left out
        the same pixels with the same threshold and area, else the frame is detected anew.

    Returns
    -------
    dict
        JSON-friendly record (see the module docstring).
    """
    import sep
    from scipy import spatial

    from ccdflow import align

    maskarr = np.zeros(np.shape(data), bits.MASK_DTYPE) if mask is None else np.asarray(mask)
    saturated = (maskarr & bits.SATURATED) != 0
    if saturation is not None:
        saturated |= np.asarray(data, dtype=np.float32) >= saturation
    bad = align.bad_pixels(data, maskarr) | saturated
    if detection is None or not detection.same(bad, detection_sigma, min_area):
        detection = align.detect(data, bad, detection_sigma=detection_sigma, min_area=min_area)
    out = {
        "sky_e": detection.background,
        "sky_noise_e": detection.rms,
        "n_stars": 0,
        "n_psf_stars": 0,
        "fwhm_px": math.nan,
        "fwhm_arcsec": math.nan,
        "ellipticity": math.nan,
        "saturated_fraction": float(saturated.mean()),
        "stars": {"x_px": [], "y_px": [], "flux_e": []},
    }
    image, objects, segments = detection.sub, detection.objects, detection.segments
    out["n_stars"] = len(objects)
    if len(objects) == 0:
        return _json(out)
    # a star touching a bad or saturated pixel is no PSF star
    touched = _touching(segments, bad, len(objects))
    x, y, a, b = (objects[k].astype(np.float64) for k in ("x", "y", "a", "b"))
    candidate = (objects["flag"] == 0) & ~touched & (b > 0)
    if not candidate.any():
        return _json(out)
    first_fwhm = _GAUSS_FWHM * float(np.median(np.sqrt(a * b)[candidate]))
    if len(objects) > 1:
        dist, _ = spatial.cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        candidate &= dist[:, 1] > max(isolation * first_fwhm, 3.0)
    psf = np.flatnonzero(candidate)
    psf = psf[np.argsort(-objects["flux"][psf], kind="stable")][:max_psf_stars]
    if psf.size == 0:
        return _json(out)
    rmax = np.clip(6.0 * a[psf], 3.0, 50.0)
    r_half, flag = sep.flux_radius(image, x[psf], y[psf], rmax, 0.5, subpix=5)
    ok = (flag == 0) & np.isfinite(r_half) & (r_half > 0)
    if not ok.any():
        return _json(out)
    psf = psf[ok]
    out["n_psf_stars"] = int(psf.size)
    if psf.size < min_psf_stars:
        return _json(out)  # a median of 1-4 stars is noise: not measured, no gate decides
    fwhm = 2 * float(np.median(r_half[ok]))
    out["fwhm_px"] = fwhm
    out["fwhm_arcsec"] = fwhm * pixel_scale if pixel_scale else math.nan
    out["ellipticity"] = float(np.median(1 - b[psf] / a[psf]))
    keep = psf[:catalogue_size]
    flux, _, aflag = sep.sum_circle(image, x[keep], y[keep], aperture * fwhm, subpix=5)
    good = aflag == 0
    out["stars"] = {
        "x_px": [round(float(v), 3) for v in x[keep][good]],
        "y_px": [round(float(v), 3) for v in y[keep][good]],
        "flux_e": [float(v) for v in flux[good]],
    }
    return _json(out)


def _touching(segments, bad, n):
    """Per source (label 1..n of ``segments``): does it hold or border a bad pixel?

    Bad pixels were set to the background, so they are never inside a segment (a
    saturated core is a hole in its star's segment): the labels of their 8 neighbours
    are what counts. O(bad pixels); `scipy.ndimage.maximum` over the labels would sort
    the whole frame (0.2 s at 2048 x 2048).
    """
    touched = np.zeros(n + 1, bool)
    ys, xs = np.nonzero(bad)
    ny, nx = segments.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            touched[segments[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]] = True
    return touched[1:]


def flux_ratio(flux, ref_flux, *, min_stars=5):
    """Robust flux ratio of matched stars: the median of ``flux / ref_flux``.

    Parameters
    ----------
    flux, ref_flux : sequence of float
        Fluxes (e-) of the same stars in the frame and in the reference, in the same order.
    min_stars : int
        Fewest usable pairs (both fluxes positive and finite) for a ratio.

    Returns
    -------
    (float, int)
        The ratio (NaN with fewer than ``min_stars`` pairs) and the number of pairs used.
    """
    f, r = np.asarray(flux, float), np.asarray(ref_flux, float)
    if f.shape != r.shape:
        raise ValueError(f"flux lists differ in length: {f.shape} and {r.shape}")
    ok = np.isfinite(f) & np.isfinite(r) & (f > 0) & (r > 0)
    n = int(ok.sum())
    return (float(np.median(f[ok] / r[ok])) if n >= min_stars else math.nan), n


def transparency(stars, ref_stars, matrix=None, *, radius=3.0, min_stars=5):
    """Transparency of a frame relative to its reference, from the stars of both records.

    Stars are matched one-to-one by position: the frame's positions are mapped into the
    reference by ``matrix`` (3x3, frame pixel -> reference pixel, `ccdflow.align`'s
    convention; identity when None) and paired with the nearest reference star within
    ``radius`` px; a reference star claimed twice keeps neither pairing.

    Parameters
    ----------
    stars, ref_stars : dict
        ``stars`` entries of two `frame_metrics` records (``x_px``, ``y_px``, ``flux_e``).
    matrix : array or None
        Frame -> reference transform.
    radius : float
        Matching radius (px).
    min_stars : int
        Fewest matched stars for a value.

    Returns
    -------
    dict
        ``{'transparency': float or None, 'n_matched': int}``: median of the flux ratios of
        the matched stars (1 for the reference itself); None with too few matches.
    """
    from scipy import spatial

    xy = np.column_stack([stars["x_px"], stars["y_px"]]).astype(float).reshape(-1, 2)
    ref = np.column_stack([ref_stars["x_px"], ref_stars["y_px"]]).astype(float).reshape(-1, 2)
    if len(xy) == 0 or len(ref) == 0:
        return {"transparency": None, "n_matched": 0}
    if matrix is not None:
        m = np.asarray(matrix, float)
        xy = xy @ m[:2, :2].T + m[:2, 2]
    dist, index = spatial.cKDTree(ref).query(xy, distance_upper_bound=radius)
    hit = np.isfinite(dist)
    counts = np.bincount(index[hit], minlength=len(ref))
    hit &= counts[np.minimum(index, len(ref) - 1)] == 1
    ratio, n = flux_ratio(
        np.asarray(stars["flux_e"], float)[hit],
        np.asarray(ref_stars["flux_e"], float)[index[hit]],
        min_stars=min_stars,
    )
    return {"transparency": None if math.isnan(ratio) else ratio, "n_matched": n}


@dataclasses.dataclass(frozen=True)
class Gate:
    """One quality gate.

    Attributes
    ----------
    reason : str
        Reason code recorded for a frame that fails the gate (and the gate's config name).
    metric : str
        Record key it tests.
    rule : str
        ``'above'``: fails when value > threshold; ``'below'``: when value < threshold;
        ``'at_most'``: when value <= threshold;
        ``'above_median'``: when value > threshold x the median of the other frames;
        ``'below_median'``: when value < threshold x that median.
    threshold : float
        Default limit (or factor of the median).
    key : str
        Key of the ``selection`` configuration that sets the threshold (its default there
        is ``threshold``); ``''`` for a gate that is not configurable.
    """

    reason: str
    metric: str
    rule: str
    threshold: float
    key: str = ""


#: The gates, in the order their reasons are given (see the module docstring for why).
GATES = (
    Gate("saturated", "saturated_fraction", "above", 0.05, "max_saturated_fraction"),
    Gate("cloudy", "transparency", "below_median", 0.5, "min_transparency_ratio"),
    Gate("trailed", "ellipticity", "above", 0.3, "max_ellipticity"),
    Gate("bad_seeing", "fwhm_px", "above_median", 1.5, "max_fwhm_ratio"),
    Gate("few_stars", "n_stars", "below_median", 0.5, "min_stars_ratio"),
)

_RULES = {
    "above": (False, lambda value, limit: value > limit, ">"),
    "below": (False, lambda value, limit: value < limit, "<"),
    "above_median": (True, lambda value, limit: value > limit, ">"),
    "below_median": (True, lambda value, limit: value < limit, "<"),
    "at_most": (False, lambda value, limit: value <= limit, "<="),
}


def gate_group(records, thresholds=None, gates=GATES):
    """Accept or reject each frame of one group.

    Parameters
    ----------
    records : sequence of dict
        One metrics dict per frame of the group (`frame_metrics` keys, plus
        ``transparency`` from `transparency`). A missing or None value skips that gate
        for that frame (it is not evidence either way).
    thresholds : dict or None
        ``reason -> threshold`` overrides of the gates' defaults; None disables a gate.
    gates : sequence of Gate
        The gate table.

    Returns
    -------
    list of dict
        Per frame, in the order of ``records``: ``status`` (``'ok'`` or ``'rejected'``),
        ``reason`` (code of the first failing gate, ``''`` when ok), ``value`` and
        ``threshold`` (the metric and the limit it was held to, in the metric's unit; None
        when ok), ``detail`` (one line for people) and ``failed`` (all failing codes).
    """
    thresholds = dict(thresholds or {})
    unknown = set(thresholds) - {g.reason for g in gates}
    if unknown:
        raise ValueError(f"unknown quality gate(s) {sorted(unknown)}; known: {_names(gates)}")
    values = {g.metric: [_number(r.get(g.metric)) for r in records] for g in gates}
    out = []
    for i, _ in enumerate(records):
        failures = []
        for gate in gates:
            threshold = thresholds.get(gate.reason, gate.threshold)
            value = values[gate.metric][i]
            if threshold is None or value is None:
                continue
            relative, fails, sign = _RULES[gate.rule]
            limit, basis = float(threshold), ""
            if relative:
                others = [v for j, v in enumerate(values[gate.metric]) if j != i and v is not None]
                if not others:
                    continue
                median = float(np.median(others))
                limit, basis = threshold * median, f" = {threshold:g} x group median {median:.4g}"
            if fails(value, limit):
                detail = f"{gate.metric} {value:.4g} {sign} {limit:.4g}{basis}"
                failures.append((gate.reason, value, limit, detail))
        if failures:
            reason, value, limit, detail = failures[0]
            out.append(
                {
                    "status": "rejected",
                    "reason": reason,
                    "value": value,
                    "threshold": limit,
                    "detail": detail,
                    "failed": [f[0] for f in failures],
                }
            )
        else:
            out.append(
                {
                    "status": "ok",
                    "reason": "",
                    "value": None,
                    "threshold": None,
                    "detail": "",
                    "failed": [],
                }
            )
    return out


def _names(gates):
    return [g.reason for g in gates]


def _number(value):
    """float, or None for a missing, None or non-finite value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _json(record):
    """NaN -> None, numpy scalars -> Python numbers, recursively."""
    if isinstance(record, dict):
        return {k: _json(v) for k, v in record.items()}
    if isinstance(record, list):
        return [_json(v) for v in record]
    if isinstance(record, (float, np.floating)):
        return float(record) if math.isfinite(record) else None
    if isinstance(record, np.integer):
        return int(record)
    return record
