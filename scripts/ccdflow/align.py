"""Registration: the similarity transform of a frame onto a reference, and resampling.

Coordinates are pixel ``(x, y)``, 0-based, pixel centres at integers, ``x`` along a row
(FITS NAXIS1). A transform is a 3x3 homogeneous matrix ``M`` that maps a SOURCE pixel
``(x, y, 1)`` to the REFERENCE pixel it shows: ``(x_ref, y_ref, 1) = M @ (x, y, 1)``; it is
the identity for the reference itself.

Finding the transform (`find_transform`)
----------------------------------------
1. Masked pixels (any bit set) and non-finite pixels are replaced by the local background
   (the ``sep`` background mesh), so they cannot make sources.
2. Sources (`detect`, which the frame job's metrics share): ``sep.extract`` above
   ``detection_sigma`` times the global background rms
   with at least ``min_area`` connected pixels; positions are windowed centroids
   (Source Extractor's ``XWIN_IMAGE``), about twice as precise as isophotal barycentres.
3. Point-like sources are dropped before matching. A hot pixel (fixed pattern: the same
   detector position in every frame) is a single-pixel spike, while a star is spread over
   several pixels by the seeing. The *sharpness* ``peak / (sum of the 3x3 box around the
   peak)`` is about 1 for a spike, 0.16 for a star of FWHM 3 px, 0.45 for FWHM 1.2 px and
   0.6 for FWHM 1 px; sources sharper than ``max_sharpness`` (0.7) are not stars. A rule
   on shape rather than on the solution is used because a zero shift is legitimate (an
   undithered, well-guided series), and because spikes removed before matching cannot pull
   a real solution either. The limit: a frame with FWHM below about 1 px has no star-like
   sources and fails with ``no_stars``.
4. ``astroalign.find_transform`` on the brightest ``max_control_points`` star-like sources
   of each frame gives a first similarity transform (triangle asterisms + RANSAC).
   (Measured, ``benchmarks/bench_align.py``: astroalign's Python loops take about 0.12 s
   a frame and its scikit-image and scipy.spatial imports about 0.11 s a job, a fifth of
   an align job; a vectorised rewrite was tried and matched its decisions, but the
   library is kept: it is not the bottleneck, and it is the well-kept implementation.)
5. Refinement: astroalign's RANSAC draws from an unseeded random generator, so its
   matrix differs slightly from run to run. The result is therefore refitted
   deterministically: star-like sources (up to ``4 * max_control_points`` per frame) are
   paired one-to-one with their nearest neighbour under the first transform (within 2 px),
   a similarity transform is fitted by linear least squares, pairs farther than 3 times
   the robust rms (1.2 x the median distance) are dropped and the fit is repeated until the
   pairs stop changing. Windowed centroids are measured only for these sources.
6. Validation, in this order: at least ``min_matches`` pairs (``few_matches``), ``|scale -
   1| <= max_scale_error`` (``bad_scale``), rms residual ``<= max_residual`` px
   (``large_residual``). A frame whose stars do not match (``no_match``, ``few_matches``)
   while point-like sources coincide at identical positions gets ``hot_pixels_only``.

`find_transform` never raises for a bad frame: it returns ``AlignResult(ok=False, reason=...)``.

Resampling (`resample`)
-----------------------
Output pixel ``p`` takes the source value at ``inv(M) @ p``.

* Data: Lanczos interpolation of order 4 (OpenCV's ``warpAffine``, ``INTER_LANCZOS4``:
  8 x 8 taps, ``sinc(x) sinc(x / 4)`` normalised to sum 1, edge values beyond the frame).
  It is interpolating and keeps the PSF; bilinear does not. OpenCV evaluates the kernel
  at source positions rounded to 1/32 px (its weight table), so each output pixel is
  placed within 1/64 px of where the transform puts it (0.009 px rms per axis). Its
  negative lobes would ring around spikes, so masked pixels are first replaced by the
  value of the nearest good pixel. Values are multiplied by the Jacobian ``|det inv(M)|``
  (the source area of an output pixel), so counts per pixel stay counts per pixel when
  the scale is not exactly 1. `resample` offers other kernels (`KERNELS`: bilinear, and
  scipy's B-splines of order 2, 3 and 5 with their prefilter);
  ``benchmarks/bench_resample.py`` compares them with Lanczos on a night with truth
  (cost, positions, fluxes, widths, peaks, noise correlation): see the README there.
* Uncertainty: the variance is interpolated bilinearly (positive weights, so it stays
  positive) and its square root taken. This is ``sum w_i sigma_i^2``, not the variance of
  the interpolated value ``sum w_i^2 sigma_i^2``: it keeps the input noise level per pixel,
  which is what sums over several output pixels (apertures, stacks) see once the
  correlation between neighbours is accounted for; it overestimates the scatter of single
  resampled pixels.
* Mask: each bit separately. An output pixel gets a bit when the bilinear weight of the
  input pixels carrying it exceeds 0.5, or when it is the output pixel nearest to where an
  input pixel carrying it lands (so an isolated bad pixel is never lost, even at half-pixel
  shifts where all its bilinear weights are 0.25). A bad pixel becomes 1, at most 2, bad
  output pixels: masks do not grow. Output pixels whose source position falls outside the
  source frame get `ccdflow.bits.NODATA`, with data and uncertainty 0.

Cost (one 2048 x 2048 frame; ``benchmarks/bench_resample.py``): OpenCV's Lanczos and
bilinear warps (about 0.1 s and 0.01 s of CPU) are a third of it; the rest is arranged
to give the same result with less work: the nearest good pixel of each masked pixel
comes from small windows, not a distance transform of the whole frame; the mask rule is
evaluated only where a bilinear neighbour carries a bit; the footprint is solved per
row. The identity (the reference itself) is returned as it is. Everything runs in one
thread (OpenCV's own threads are set to one for the call): the workflow already runs one
job per core, and threads would not lower the CPU time a job costs.
"""

__all__ = [
    "KERNELS",
    "MAX_SIDE",
    "REASONS",
    "AlignResult",
    "Detection",
    "bad_pixels",
    "detect",
    "find_transform",
    "match",
    "resample",
    "star_list",
]

import contextlib
import dataclasses
import math
import threading
import warnings

import numpy as np

from ccdflow import bits

#: Reason codes of a failed `find_transform`, with what they mean.
REASONS = {
    "bad_input": "the images are not 2-D arrays with at least 16 x 16 pixels",
    "detection_failed": "source extraction raised an error (e.g. pixel buffer overflow)",
    "no_stars": "fewer than 3 star-like sources in one of the frames",
    "no_match": "astroalign found no consistent set of matching asterisms",
    "few_matches": "fewer than min_matches stars paired after the fit",
    "bad_scale": "the fitted scale differs from 1 by more than max_scale_error",
    "large_residual": "rms residual of the paired stars above max_residual",
    "hot_pixels_only": "the only sources common to both frames are point-like spikes at "
    "identical positions (fixed-pattern hot pixels)",
}

_MATCH_RADIUS = 2.0  # px, pairing radius of the refinement (astroalign's PIXEL_TOL)
_CLIP = 3.0  # pairs beyond this many (robust) rms are dropped by the refinement
_MIN_SIZE = 16  # px, smallest image side accepted
#: Kernels of `resample`: the workflow's first, then those the benchmark compares.
KERNELS = ("lanczos4", "bilinear", "bspline2", "bspline3", "bspline5")
_CV_FLAGS = {"lanczos4": 4, "bilinear": 1}  # cv2.INTER_LANCZOS4, cv2.INTER_LINEAR
#: OpenCV's warpAffine takes images and grids with sides below this (SHRT_MAX), px;
#: `resample` warps larger ones in tiles.
MAX_SIDE = 32767
_FOOTPRINT_TOL = 1e-6  # px, slack of the footprint test against rounding


@dataclasses.dataclass
class AlignResult:
    """Outcome of `find_transform`.

    Attributes
    ----------
    ok : bool
        The transform was found and passed validation.
    reason : str
        ``''`` when ``ok``, else a key of `REASONS`.
    detail : str
        Human-readable explanation (numbers measured, limits applied).
    matrix : numpy.ndarray
        3x3 float64 homogeneous matrix mapping SOURCE pixel ``(x, y)`` to REFERENCE pixel
        ``(x, y)``; the identity when no transform was found.
    n_matches : int
        Star pairs used by the final fit.
    rms_residual : float
        Root mean square of the 2-D distance (px) between the reference positions of the
        pairs and the transformed source positions; NaN when there was no fit.
    scale : float
        Scale of the transform (reference px per source px).
    rotation_deg : float
        Counter-clockwise rotation of the transform (degrees).
    shift : tuple of float
        ``(dx, dy)`` px: where the centre of the source frame lands in the reference minus
        where it is (for frames of equal size, minus the dither of the source frame).
    """

    ok: bool
    reason: str = ""
    detail: str = ""
    matrix: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    n_matches: int = 0
    rms_residual: float = math.nan
    scale: float = math.nan
    rotation_deg: float = math.nan
    shift: tuple = (math.nan, math.nan)

    @classmethod
    def identity(cls, detail="reference frame"):
        """Result for the reference frame itself: the identity transform."""
        return cls(
            ok=True,
            detail=detail,
            rms_residual=0.0,
            scale=1.0,
            rotation_deg=0.0,
            shift=(0.0, 0.0),
        )

    def as_dict(self):
        """JSON-friendly dict of the fields (``matrix`` as a nested list)."""
        out = dataclasses.asdict(self)
        out["matrix"] = np.asarray(self.matrix, float).tolist()
        out["shift"] = [float(v) for v in self.shift]
        return out


# --------------------------------------------------------------------------------------
# Source detection


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
    """One source extraction of a frame (`detect`), which `star_list` and
    `ccdflow.metrics.frame_metrics` share when they would compute the same one.

    Attributes
    ----------
    bad : numpy.ndarray
        bool, the pixels left out (set to the local background in ``sub``).
    background, rms : float
        sep's global background level and rms (image units).
    sub : numpy.ndarray
        float32 background-subtracted image, 0 at ``bad``. Read, never written, by its users.
    objects, segments : numpy.ndarray
        ``sep.extract``'s sources (in its order) and segmentation map.
    detection_sigma : float
        Threshold of the extraction (``rms`` units).
    min_area : int
        Fewest connected pixels of a source.
    """

    bad: np.ndarray
    background: float
    rms: float
    sub: np.ndarray
    objects: np.ndarray
    segments: np.ndarray
    detection_sigma: float
    min_area: int

    def same(self, bad, detection_sigma, min_area):
        """Would `detect` with these arguments give this detection?"""
        return (
            float(detection_sigma) == self.detection_sigma
            and int(min_area) == self.min_area
            and np.array_equal(bad, self.bad)
        )


def bad_pixels(image, mask=None):
    """Pixels a detection leaves out.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (any unit).
    mask : numpy.ndarray, optional
        Data-quality plane (`ccdflow.bits`) of ``image``.

    Returns
    -------
    numpy.ndarray
        bool: non-finite in float32 (what sep sees), or any mask bit set.
    """
    bad = ~np.isfinite(np.asarray(image, dtype=np.float32))
    if mask is not None:
        bad |= np.asarray(mask) != 0
    return bad


def detect(image, bad, *, detection_sigma=5.0, min_area=5):
    """Background and sources of one image, as sep finds them.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (any unit, e.g. e-). Not modified.
    bad : numpy.ndarray
        bool, pixels left out (`bad_pixels`): they set neither background nor sources.
    detection_sigma : float
        Threshold, in units of the global background rms.
    min_area : int
        Fewest connected pixels of a source.

    Returns
    -------
    Detection
        ``sep.Background`` (64-px meshes, SExtractor's clipped mode estimator) subtracted,
        and ``sep.extract``'s sources with their segmentation map.

    Raises
    ------
    Exception
        What sep raises (a plain ``Exception``, e.g. when its pixel buffer overflows).
    """
    import sep

    sub = np.array(image, dtype=np.float32, order="C")  # a copy: the input is not modified
    bad = np.asarray(bad, dtype=bool)
    bad_index = np.flatnonzero(bad)
    if bad_index.size:
        sub.reshape(-1)[bad_index] = 0.0  # sep needs finite values everywhere
    background = sep.Background(sub, mask=bad if bad_index.size else None)
    background.subfrom(sub)
    if bad_index.size:
        sub.reshape(-1)[bad_index] = 0.0  # masked pixels become local background
    rms = float(background.globalrms)
    objects, segments = sep.extract(
        sub, detection_sigma, err=rms, minarea=int(min_area), segmentation_map=True
    )
    return Detection(
        bad=bad,
        background=float(background.globalback),
        rms=rms,
        sub=sub,
        objects=objects,
        segments=segments,
        detection_sigma=float(detection_sigma),
        min_area=int(min_area),
    )


def _sources(image, mask, detection_sigma, min_area, max_sharpness, detection=None):
    """Sources of one frame, brightest first (from ``detection`` when it is the one `detect`
    would give here).

    Returns a dict of arrays ``x``, ``y`` (isophotal barycentres, px), ``flux`` (isophotal,
    image units) and ``sharp`` (peak / 3x3 sum), plus ``rms`` (global background rms),
    ``sub`` (the background-subtracted image) and ``sig`` (window of the windowed
    centroids); `_windowed` gives the windowed positions of the sources that are used.
    """
    import sep

    bad = bad_pixels(image, mask)
    if detection is None or not detection.same(bad, detection_sigma, min_area):
        detection = detect(image, bad, detection_sigma=detection_sigma, min_area=min_area)
    del bad
    sub, rms, objects = detection.sub, detection.rms, detection.objects
    objects = objects[np.argsort(-objects["flux"], kind="stable")]
    n = len(objects)
    out = {"rms": rms, "n": n, "sub": sub, "sig": 1.0}
    if n == 0:
        out |= {k: np.zeros(0) for k in ("x", "y", "flux", "sharp")}
        return out
    # Sharpness: peak pixel over the 3x3 box around it (zero outside the frame).
    ny, nx = sub.shape
    xp, yp = objects["xpeak"].astype(np.int64), objects["ypeak"].astype(np.int64)
    box = 0
    for j in (-1, 0, 1):
        for i in (-1, 0, 1):
            yy, xx = yp + j, xp + i
            on = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            value = sub[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)]
            box = box + np.where(on, value, np.float32(0))
    peak = sub[yp, xp]
    sharp = np.where(box > 0, peak / np.where(box > 0, box, 1), 1.0)
    x, y = objects["x"].astype(np.float64), objects["y"].astype(np.float64)
    # Window of the windowed centroids: the frame's PSF (half-light radius of the
    # brighter sources that are not spikes).
    extended = np.flatnonzero(sharp < max_sharpness)[:30]
    if extended.size:
        rmax = np.clip(6.0 * objects["a"][extended], 3.0, 30.0).astype(np.float64)
        r_half, _ = sep.flux_radius(sub, x[extended], y[extended], rmax, 0.5, subpix=5)
        out["sig"] = float(np.clip(np.median(r_half) / 1.1774, 0.5, 10.0))  # Gaussian sigma
    out["x"], out["y"] = x, y
    out["flux"], out["sharp"] = objects["flux"].astype(np.float64), sharp.astype(np.float64)
    return out


def _windowed(cat, index):
    """Windowed centroids ``(n, 2)`` of the sources ``index`` of a `_sources` catalogue.

    Only the sources a fit can use are measured (each position is independent of the
    others): the isophotal barycentre is kept where the windowed one fails or moves by
    1.5 px or more.
    """
    import sep

    index = np.asarray(index, dtype=np.intp)
    x, y = cat["x"][index], cat["y"][index]
    if index.size == 0:
        return np.zeros((0, 2))
    xw, yw, flag = sep.winpos(cat["sub"], x, y, np.full(index.size, cat["sig"]))
    good = (flag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 1.5)
    return np.column_stack([np.where(good, xw, x), np.where(good, yw, y)])


# --------------------------------------------------------------------------------------
# Geometry


def _apply(matrix, xy):
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def _fit_similarity(src, dst):
    """Least-squares similarity (scale, rotation, shift; no reflection): src -> dst."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    p, q = src - ms, dst - md
    norm = float((p**2).sum())
    a = float((p * q).sum()) / norm
    b = float((p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum()) / norm
    rot = np.array([[a, -b], [b, a]])
    matrix = np.eye(3)
    matrix[:2, :2] = rot
    matrix[:2, 2] = md - rot @ ms
    return matrix


def _nearest(points, targets, radius):
    """Index of the nearest of ``targets`` to each of ``points`` and its distance, or -1 and
    inf when none is closer than ``radius`` (strictly; ties go to the lower index)."""
    index = np.full(len(points), -1, np.intp)
    dist = np.full(len(points), np.inf)
    if len(points) == 0 or len(targets) == 0:
        return index, dist
    step = max(1, 1_000_000 // len(targets))  # bounded memory for long lists
    for k in range(0, len(points), step):
        d = points[k : k + step, None, :] - targets[None, :, :]
        d = np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2)
        j = np.argmin(d, axis=1)
        best = d[np.arange(len(j)), j]
        near = best < radius
        index[k : k + step][near] = j[near]
        dist[k : k + step][near] = best[near]
    return index, dist


def _pair(matrix, src, ref, radius):
    """One-to-one nearest-neighbour pairs (i_src, i_ref) within ``radius`` px."""
    j, dist = _nearest(_apply(matrix, src), ref, radius)
    i = np.flatnonzero(j >= 0)
    j, dist = j[i], dist[i]
    order = np.lexsort((i, dist))  # closest first; ties broken by index (deterministic)
    _, first = np.unique(j[order], return_index=True)
    keep = np.sort(order[first])
    return i[keep], j[keep]


def _refine(matrix, src, ref):
    """Deterministic refit of a first transform on all pairable sources.

    Returns ``(matrix, n_pairs, rms)``; ``n_pairs < 2`` means no fit was possible.
    """
    pairs = None
    radius = _MATCH_RADIUS
    for _ in range(10):
        i, j = _pair(matrix, src, ref, radius)
        if i.size < 2:
            return matrix, int(i.size), math.nan
        key = (tuple(i), tuple(j))
        if key == pairs:
            break
        pairs = key
        matrix = _fit_similarity(src[i], ref[j])
        resid = np.hypot(*(_apply(matrix, src[i]) - ref[j]).T)
        # Robust rms: for Gaussian errors the 2-D distance is Rayleigh-distributed and its
        # rms is 1.2011 times its median, which outliers barely move.
        robust_rms = 1.2011 * float(np.median(resid))
        radius = min(_MATCH_RADIUS, max(_CLIP * robust_rms, 0.05))
    resid = np.hypot(*(_apply(matrix, src[i]) - ref[j]).T)
    return matrix, int(i.size), float(np.sqrt(np.mean(resid**2)))


def _describe(matrix, shape):
    """(scale, rotation_deg, shift of the frame centre) of a similarity matrix."""
    scale = float(math.hypot(matrix[0, 0], matrix[1, 0]))
    rotation = float(math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])))
    centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
    dx, dy = _apply(matrix, centre[None, :])[0] - centre
    return scale, rotation, (float(dx), float(dy))


# --------------------------------------------------------------------------------------
# Public API


def star_list(
    image,
    mask=None,
    *,
    detection_sigma=5.0,
    min_area=5,
    max_control_points=50,
    max_sharpness=0.7,
    detection=None,
):
    """The stars of one frame that `match` needs, as plain JSON-friendly values.

    This is what a frame's record carries, so that the frames of a group align onto their
    reference without reading its image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (any unit, e.g. e-), preferably cleaned of cosmic rays. Not modified.
    mask : numpy.ndarray, optional
        Data-quality plane (`ccdflow.bits`); pixels with any bit set make no sources.
    detection_sigma, min_area, max_control_points, max_sharpness
        As for `find_transform`.
    detection : Detection, optional
        A `detect` of this image; used when it is the one these arguments give (same
        pixels left out, threshold and area), else the image is detected anew.

    Returns
    -------
    dict
        ``shape`` ``[ny, nx]``; ``stars``: windowed centroids ``[x, y]`` (px) of the
        brightest ``4 * max_control_points`` star-like sources, brightest first (empty when
        fewer than 3); ``flux``: their isophotal fluxes (image units); ``spikes``: windowed
        positions of the point-like sources (hot pixels); ``n_detected``, ``n_starlike``;
        ``error``: ``''`` or why source extraction failed.
    """
    image = np.asarray(image)
    out = {
        "shape": [int(s) for s in image.shape],
        "stars": [],
        "flux": [],
        "spikes": [],
        "n_detected": 0,
        "n_starlike": 0,
        "error": "",
    }
    if image.ndim != 2 or min(image.shape) < _MIN_SIZE:
        out["error"] = f"bad_input: image shape {image.shape}"
        return out
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"mask has shape {np.shape(mask)}, image {image.shape}")
    try:
        cat = _sources(image, mask, detection_sigma, min_area, max_sharpness, detection)
        keep = np.flatnonzero(cat["sharp"] < max_sharpness)
        n_fit = 4 * int(max_control_points)
        if len(keep) >= 3:
            out["stars"] = _windowed(cat, keep[:n_fit]).tolist()
            out["flux"] = cat["flux"][keep[:n_fit]].tolist()
        out["spikes"] = _windowed(cat, np.flatnonzero(cat["sharp"] >= max_sharpness)).tolist()
    except Exception as exc:  # sep raises plain Exception for its buffer overflows
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["n_detected"], out["n_starlike"] = int(cat["n"]), len(keep)
    return out


def _points(values):
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)


def match(
    source,
    reference,
    *,
    detection_sigma=5.0,
    max_control_points=50,
    min_matches=6,
    max_scale_error=0.02,
    max_residual=0.5,
):
    """Similarity transform mapping a source frame onto its reference, from star lists.

    Parameters
    ----------
    source, reference : dict
        `star_list` of each frame (with the same ``max_control_points``).
    detection_sigma : float
        Only quoted in the explanation of ``no_stars``.
    max_control_points, min_matches, max_scale_error, max_residual
        As for `find_transform`.

    Returns
    -------
    AlignResult
        As `find_transform`.
    """
    n_ctrl = int(max_control_points)
    n_fit = 4 * n_ctrl
    for name, cat in (("source", source), ("reference", reference)):
        if cat["error"]:
            reason = "bad_input" if cat["error"].startswith("bad_input") else "detection_failed"
            return AlignResult(False, reason, f"{name}: {cat['error']}")

    def failed(reason, detail, **fit):
        # Stars present but not matching, while spikes coincide: the frames share nothing
        # but the detector's fixed pattern. (A frame without stars stays ``no_stars``.)
        a, b = _points(source["spikes"]), _points(reference["spikes"])
        n_spikes = int(np.count_nonzero(_nearest(a, b, 0.5)[0] >= 0))
        if n_spikes >= min(3, min_matches):
            note = f"{n_spikes} point-like sources (hot pixels?) at identical positions"
            if reason in ("no_match", "few_matches"):
                detail = f"{note} in both frames were not used; without them: {reason} ({detail})"
                reason = "hot_pixels_only"
            else:
                detail = f"{detail}; {note} ignored"
        return AlignResult(False, reason, detail, **fit)

    for name, cat in (("source", source), ("reference", reference)):
        if len(cat["stars"]) < 3:
            detail = (
                f"{cat['n_starlike']} star-like sources in the {name} frame "
                f"({cat['n_detected']} detected above {detection_sigma:g} sigma, "
                f"{cat['n_detected'] - cat['n_starlike']} point-like)"
            )
            return failed("no_stars", detail)
    src, ref = _points(source["stars"])[:n_fit], _points(reference["stars"])[:n_fit]

    import astroalign

    try:
        with warnings.catch_warnings():
            # Degenerate asterisms make scikit-image/numpy warn inside astroalign's RANSAC.
            warnings.simplefilter("ignore", RuntimeWarning)
            first, _ = astroalign.find_transform(
                src[:n_ctrl], ref[:n_ctrl], max_control_points=n_ctrl
            )
        matrix = np.asarray(first.params, dtype=np.float64)
    except (astroalign.MaxIterError, ValueError, TypeError, IndexError) as exc:
        return failed("no_match", f"astroalign: {type(exc).__name__}: {exc}")
    if not np.all(np.isfinite(matrix)):
        return failed("no_match", "astroalign returned a non-finite transform")

    matrix, n_pairs, rms = _refine(matrix, src, ref)
    scale, rotation, shift = _describe(matrix, tuple(source["shape"]))
    fit = dict(
        matrix=matrix,
        n_matches=n_pairs,
        rms_residual=rms,
        scale=scale,
        rotation_deg=rotation,
        shift=shift,
    )
    summary = (
        f"{n_pairs} pairs, rms {rms:.3f} px, scale {scale:.5f}, rotation {rotation:.4f} deg, "
        f"shift ({shift[0]:.2f}, {shift[1]:.2f}) px"
    )
    if n_pairs < min_matches:
        return failed("few_matches", f"{summary}; fewer than {min_matches} pairs", **fit)
    if not abs(scale - 1.0) <= max_scale_error:
        return failed("bad_scale", f"{summary}; |scale - 1| > {max_scale_error:g}", **fit)
    if not rms <= max_residual:
        return failed("large_residual", f"{summary}; rms > {max_residual:g} px", **fit)
    return AlignResult(True, "", summary, **fit)


def find_transform(
    source,
    reference,
    *,
    source_mask=None,
    reference_mask=None,
    detection_sigma=5.0,
    min_area=5,
    max_control_points=50,
    min_matches=6,
    max_scale_error=0.02,
    max_residual=0.5,
    max_sharpness=0.7,
):
    """Similarity transform mapping ``source`` pixels onto ``reference`` pixels, validated.

    `star_list` of each image, then `match`.

    Parameters
    ----------
    source, reference : numpy.ndarray
        2-D images (any unit, e.g. e-), preferably cleaned of cosmic rays. Not modified.
    source_mask, reference_mask : numpy.ndarray, optional
        Data-quality planes (`ccdflow.bits`); pixels with any bit set make no sources.
    detection_sigma : float
        Detection threshold, in units of the global background rms.
    min_area : int
        Fewest connected pixels (px) above the threshold that make a source.
    max_control_points : int
        Brightest star-like sources of each frame used for triangle matching.
    min_matches : int
        Fewest star pairs the final fit must use.
    max_scale_error : float
        Largest accepted ``|scale - 1|`` (dimensionless).
    max_residual : float
        Largest accepted rms residual of the pairs (px).
    max_sharpness : float
        Sources with ``peak / 3x3 sum`` at or above this are point-like spikes (hot pixels),
        not stars, and are never matched (see the module docstring).

    Returns
    -------
    AlignResult
        ``ok=False`` with a `REASONS` code for a frame that cannot be aligned; the
        transform parameters are still filled in when a fit exists (e.g. ``bad_scale``).

    Raises
    ------
    ValueError
        Only for a programming error: a mask whose shape differs from its image.
    """
    source, reference = np.asarray(source), np.asarray(reference)
    if any(a.ndim != 2 or min(a.shape) < _MIN_SIZE for a in (source, reference)):
        shapes = f"{source.shape} and {reference.shape}"
        return AlignResult(False, "bad_input", f"image shapes {shapes}")
    for name, image, mask in (
        ("source", source, source_mask),
        ("reference", reference, reference_mask),
    ):
        if mask is not None and np.shape(mask) != image.shape:
            raise ValueError(f"{name}_mask has shape {np.shape(mask)}, image {image.shape}")
    detect = dict(
        detection_sigma=detection_sigma,
        min_area=min_area,
        max_control_points=max_control_points,
        max_sharpness=max_sharpness,
    )
    return match(
        star_list(source, source_mask, **detect),
        star_list(reference, reference_mask, **detect),
        detection_sigma=detection_sigma,
        max_control_points=max_control_points,
        min_matches=min_matches,
        max_scale_error=max_scale_error,
        max_residual=max_residual,
    )


def resample(data, uncertainty, mask, matrix, shape, *, kernel="lanczos4"):
    """Resample data, uncertainty and mask of a frame onto the reference pixel grid.

    Parameters
    ----------
    data : numpy.ndarray
        2-D source image (any unit per pixel, e.g. e-). Not modified.
    uncertainty : numpy.ndarray or None
        Standard deviation of ``data`` (same unit), or None.
    mask : numpy.ndarray or None
        Data-quality bits (`ccdflow.bits`) of ``data``; non-finite data values count as
        `ccdflow.bits.BAD`.
    matrix : array_like
        3x3 matrix mapping source pixel ``(x, y)`` to reference pixel ``(x, y)``
        (`AlignResult.matrix`).
    shape : tuple of int
        ``(ny, nx)`` of the reference grid (px).
    kernel : str
        Kernel of the data (`KERNELS`): ``"lanczos4"`` (what the workflow uses, OpenCV);
        ``"bilinear"`` (OpenCV) and ``"bspline2"``, ``"bspline3"``, ``"bspline5"``
        (``scipy.ndimage`` with its prefilter) for comparison
        (``benchmarks/bench_resample.py``). Uncertainty and mask do not depend on it.

    Returns
    -------
    data : numpy.ndarray
        float32, interpolated, times the Jacobian ``|det inv(M)|``; 0 outside the
        footprint of the source frame.
    uncertainty : numpy.ndarray or None
        float32, sqrt of the bilinearly interpolated variance (times the Jacobian); 0
        outside the footprint.
    mask : numpy.ndarray
        ``bits.MASK_DTYPE`` plane: each input bit where it carries more than half the
        bilinear weight or where an input pixel carrying it lands; `bits.NODATA` outside the
        footprint.

    Raises
    ------
    ValueError
        If ``data`` is not 2-D, a plane's shape differs from it, or the kernel is unknown.

    Notes
    -----
    See the module docstring for the interpolators and their effect on noise and PSF.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    data = np.asarray(data)
    if data.ndim != 2 or min(data.shape) < 2:
        raise ValueError(f"data must be a 2-D image of at least 2 x 2 pixels, got {data.shape}")
    ny_out, nx_out = (int(n) for n in shape)
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse = np.linalg.inv(matrix)
    jacobian = abs(float(np.linalg.det(inverse[:2, :2])))

    for name, plane in (("uncertainty", uncertainty), ("mask", mask)):
        if plane is not None and np.shape(plane) != data.shape:
            raise ValueError(f"{name} has shape {np.shape(plane)}, data {data.shape}")
    in_mask = np.zeros(data.shape, bits.MASK_DTYPE) if mask is None else np.asarray(mask)
    in_mask = in_mask.astype(bits.MASK_DTYPE, copy=True)
    finite = np.isfinite(data)
    if not finite.all():
        in_mask[~finite] |= bits.BAD
    del finite
    flagged = np.flatnonzero(in_mask != 0)  # flat indices of the pixels carrying bits
    identity = matrix.shape == (3, 3) and np.array_equal(matrix, np.eye(3))
    identity &= (ny_out, nx_out) == data.shape

    # Masked pixels take the value of the nearest good pixel, so the kernel cannot ring
    # around them (a filled hot pixel is no spike). float32 (the data's own precision):
    # copies, the inputs are never modified.
    values = np.array(data, dtype=np.float32, order="C")
    planes = [values]
    if uncertainty is not None:
        unc = np.array(uncertainty, dtype=np.float32, order="C")
        # The identity keeps the standard deviation itself (exactly the input's).
        planes.append(unc if identity else np.square(unc, out=unc))  # variance in place
    fill = flagged
    if uncertainty is not None:
        invalid = np.flatnonzero(~np.isfinite(planes[1]))
        if invalid.size:
            fill = np.union1d(flagged, invalid)
    _fill_nearest_good(planes, fill)

    if identity:  # exactly the input: the kernels interpolate, bilinear weights are 1
        out_unc = planes[1] if uncertainty is not None else None
        return values, out_unc, in_mask

    out_data = _warp(values, inverse, (ny_out, nx_out), kernel)
    del values
    out_unc = None
    if uncertainty is not None:
        out_unc = _warp(planes[1], inverse, (ny_out, nx_out), "bilinear")
        np.sqrt(np.maximum(out_unc, 0.0, out=out_unc), out=out_unc)
    del planes

    lo, hi = _footprint(inverse, data.shape, (ny_out, nx_out))
    blocks = _outside_blocks(lo, hi, nx_out)
    out_mask = _resample_mask(in_mask, flagged, matrix, inverse, (ny_out, nx_out), lo, hi, blocks)
    if jacobian != 1.0:
        out_data *= np.float32(jacobian)
        if out_unc is not None:
            out_unc *= np.float32(jacobian)
    for rows, cols, outside in blocks:
        for plane in (out_data, out_unc):
            if plane is not None:
                if outside is None:
                    plane[rows, cols] = 0.0
                else:
                    plane[rows, cols][outside] = 0.0
        if outside is None:
            out_mask[rows, cols] |= bits.NODATA
        else:
            out_mask[rows, cols][outside] |= bits.NODATA
    return out_data, out_unc, out_mask


# --------------------------------------------------------------------------------------
# Resampling helpers

_FILL_MARGIN = 2  # px, half-side of the first window searched around each masked pixel
# Fill and mask rule work on the whole frame once windows would cover this fraction of it.
_WHOLE_FRAME = 0.25


def _fill_nearest_good(planes, bad):
    """Give the flat pixels ``bad`` of every plane the value of the nearest good pixel.

    Good pixels are those not in ``bad``. The nearest is what the Euclidean distance
    transform of the whole frame (``scipy.ndimage.distance_transform_edt``) returns, but
    it is computed on a small window around each masked pixel: all windows side by side
    in one image, one transform. A pixel whose nearest good pixel is within the window's
    half-side is done (no pixel outside the window can be nearer); the others get windows
    twice as large, and when the windows would hold a quarter of the frame, the whole frame
    is transformed instead. Windows choose the same pixel as the whole frame among equally
    near ones (checked on the masks of generated nights, and on random pixels, blobs,
    bleed columns and frame edges).
    """
    from scipy import ndimage

    shape = planes[0].shape
    ny, nx = shape
    if bad.size == 0:
        return
    if bad.size == planes[0].size:
        for plane in planes:
            plane[...] = 0.0
        return
    masked = np.zeros(shape, bool)
    masked.reshape(-1)[bad] = True
    nearest = np.empty(bad.size, np.intp)
    todo = np.arange(bad.size)
    margin = _FILL_MARGIN
    while todo.size:
        side = 2 * margin + 1
        if todo.size * side * side > _WHOLE_FRAME * masked.size:
            index = ndimage.distance_transform_edt(
                masked, return_distances=False, return_indices=True
            )
            cells = bad[todo]
            nearest[todo] = index[0].reshape(-1)[cells] * nx + index[1].reshape(-1)[cells]
            break
        y, x = np.divmod(bad[todo], nx)
        off = np.arange(-margin, margin + 1)
        yy = y[:, None, None] + off[None, :, None]
        xx = x[:, None, None] + off[None, None, :]
        beyond = (yy < 0) | (yy >= ny) | (xx < 0) | (xx >= nx)  # off the frame: not good
        windows = masked[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)] | beyond
        dist, index = ndimage.distance_transform_edt(
            windows.reshape(-1, side), return_indices=True
        )
        centre = np.arange(todo.size) * side + margin  # row of each window's centre
        done = dist[centre, margin] <= margin
        dy = index[0][centre, margin] - centre
        dx = index[1][centre, margin] - margin
        nearest[todo[done]] = (y + dy)[done] * nx + (x + dx)[done]
        todo = todo[~done]
        margin *= 2
    for plane in planes:
        flat = plane.reshape(-1)
        flat[bad] = flat[nearest]


def _warp(values, inverse, shape, kernel):
    """``values`` (float32, C order) at the source positions ``inverse @ p`` of the output
    pixels ``p`` of ``shape``, edge values beyond the frame, in one thread; float32.

    OpenCV indexes images with sides below `MAX_SIDE` only: a larger image or grid is warped
    in output tiles of at most `_TILE` px a side, each from the part of the source its
    kernel reaches (`_tiles`).
    """
    ny, nx = shape
    if kernel.startswith("bspline"):
        from scipy import ndimage

        linear, offset = inverse[:2, :2][::-1, ::-1], inverse[:2, 2][::-1]
        return ndimage.affine_transform(
            values, linear, offset, order=int(kernel[-1]), mode="nearest",
            output_shape=shape, output=np.float32,
        )  # fmt: skip
    import cv2

    with _one_cv_thread(cv2):
        if max(*values.shape, ny, nx) < MAX_SIDE:
            return _cv_warp(cv2, values, inverse, shape, kernel)
        out = np.empty(shape, np.float32)
        for rows, cols, src_rows, src_cols in _tiles(inverse, values.shape, shape):
            tile_inverse = inverse.copy()  # output tile pixel -> source crop pixel
            tile_inverse[0, 2] += inverse[0, 0] * cols.start + inverse[0, 1] * rows.start
            tile_inverse[1, 2] += inverse[1, 0] * cols.start + inverse[1, 1] * rows.start
            tile_inverse[0, 2] -= src_cols.start
            tile_inverse[1, 2] -= src_rows.start
            out[rows, cols] = _cv_warp(
                cv2, np.ascontiguousarray(values[src_rows, src_cols]), tile_inverse,
                (rows.stop - rows.start, cols.stop - cols.start), kernel,
            )  # fmt: skip
        return out


_CV_THREADS = threading.Lock()
_cv_users = 0  # warps running now, in any thread
_cv_threads_before = 0  # OpenCV's thread count before the first of them


@contextlib.contextmanager
def _one_cv_thread(cv2):
    """OpenCV on one thread while any warp runs (the workflow runs one job per core).

    ``cv2.setNumThreads`` is process-wide: the first warp to enter saves the caller's
    setting and the last to leave restores it, so concurrent warps in several Python
    threads (warpAffine releases the GIL) cannot leave the process at one thread.
    """
    global _cv_users, _cv_threads_before
    with _CV_THREADS:
        if _cv_users == 0:
            _cv_threads_before = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv_users += 1
    try:
        yield
    finally:
        with _CV_THREADS:
            _cv_users -= 1
            if _cv_users == 0:
                cv2.setNumThreads(_cv_threads_before)


def _cv_warp(cv2, values, inverse, shape, kernel):
    ny, nx = shape
    return cv2.warpAffine(
        values, np.ascontiguousarray(inverse[:2]), (nx, ny),
        flags=_CV_FLAGS[kernel] | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


_TILE = 8192  # px, side of the output tiles of a warp beyond `MAX_SIDE`
_TILE_MARGIN = 8  # px of source around a tile's footprint (Lanczos 4 reaches 4)


def _tiles(inverse, in_shape, out_shape):
    """Output tiles ``(rows, cols)`` (slices) of ``out_shape`` with the source slices
    ``(src_rows, src_cols)`` their kernel reads: the bounding box of the tile's source
    positions, `_TILE_MARGIN` px wider, within the source frame. A tile whose positions all
    fall off the frame reads the nearest edge pixels (BORDER_REPLICATE, as without tiles).
    """
    ny_in, nx_in = in_shape
    ny, nx = out_shape
    for r0 in range(0, ny, _TILE):
        for c0 in range(0, nx, _TILE):
            r1, c1 = min(r0 + _TILE, ny), min(c0 + _TILE, nx)
            xs, ys = _source_xy(inverse, [r0, r0, r1 - 1, r1 - 1], [c0, c1 - 1, c0, c1 - 1])
            x0 = int(np.clip(np.floor(xs.min()) - _TILE_MARGIN, 0, nx_in - 1))
            x1 = int(np.clip(np.ceil(xs.max()) + _TILE_MARGIN, 0, nx_in - 1)) + 1
            y0 = int(np.clip(np.floor(ys.min()) - _TILE_MARGIN, 0, ny_in - 1))
            y1 = int(np.clip(np.ceil(ys.max()) + _TILE_MARGIN, 0, ny_in - 1)) + 1
            if max(y1 - y0, x1 - x0) >= MAX_SIDE:
                raise ValueError(
                    f"a {r1 - r0} x {c1 - c0} px tile of the grid reads {y1 - y0} x "
                    f"{x1 - x0} px of the source: the transform scales by more than "
                    f"{MAX_SIDE / _TILE:.1f}"
                )
            yield slice(r0, r1), slice(c0, c1), slice(y0, y1), slice(x0, x1)


def _source_xy(inverse, rows, cols):
    """Source ``(x, y)`` of output pixels, computed exactly as over the whole grid."""
    x = np.asarray(cols, dtype=np.float64)
    y = np.asarray(rows, dtype=np.float64)
    xs = inverse[0, 0] * x + (inverse[0, 1] * y + inverse[0, 2])
    ys = inverse[1, 0] * x + (inverse[1, 1] * y + inverse[1, 2])
    return xs, ys


def _inside(inverse, in_shape, rows, cols):
    ny, nx = in_shape
    xs, ys = _source_xy(inverse, rows, cols)
    ok = (xs >= -_FOOTPRINT_TOL) & (xs <= nx - 1 + _FOOTPRINT_TOL)
    ok &= (ys >= -_FOOTPRINT_TOL) & (ys <= ny - 1 + _FOOTPRINT_TOL)
    return ok


def _footprint(inverse, in_shape, out_shape):
    """Columns ``lo[r]..hi[r]`` of each output row ``r`` whose source position is inside the
    source frame (empty when ``lo > hi``).

    The source position is affine along a row, so the inside pixels of a row are one run;
    its ends are solved for, then moved until the test `_inside` applies to every pixel of
    the grid (the same floating-point expression) holds exactly at them.
    """
    ny_out, nx_out = out_shape
    rows = np.arange(ny_out, dtype=np.float64)
    lower = np.full(ny_out, -np.inf)
    upper = np.full(ny_out, np.inf)
    for k, n in ((0, in_shape[1]), (1, in_shape[0])):
        slope = inverse[k, 0]
        start = inverse[k, 1] * rows + inverse[k, 2]  # position at column 0
        a, b = -_FOOTPRINT_TOL - start, n - 1 + _FOOTPRINT_TOL - start
        if slope == 0:
            outside = (a > 0) | (b < 0)
            lower[outside], upper[outside] = np.inf, -np.inf
        else:
            c1, c2 = a / slope, b / slope
            lower = np.maximum(lower, np.minimum(c1, c2))
            upper = np.minimum(upper, np.maximum(c1, c2))
    lo = np.ceil(np.clip(lower, -1, nx_out)).astype(np.int64)
    hi = np.floor(np.clip(upper, -1, nx_out)).astype(np.int64)
    lo, hi = np.clip(lo, 0, nx_out), np.clip(hi, -1, nx_out - 1)
    r = np.arange(ny_out)
    for _ in range(4):  # rounding moves an end by at most one pixel
        changed = False
        grow = (lo > 0) & _inside(inverse, in_shape, r, lo - 1)
        shrink = (lo <= hi) & ~_inside(inverse, in_shape, r, np.minimum(lo, nx_out - 1))
        lo = lo - grow + (shrink & ~grow)
        changed |= bool(grow.any() or shrink.any())
        grow = (hi < nx_out - 1) & _inside(inverse, in_shape, r, hi + 1)
        shrink = (hi >= lo) & ~_inside(inverse, in_shape, r, np.maximum(hi, 0))
        hi = hi + grow - (shrink & ~grow)
        changed |= bool(grow.any() or shrink.any())
        if not changed:
            break
    empty = lo > hi
    lo[empty], hi[empty] = nx_out, nx_out - 1
    return lo, hi


def _outside_blocks(lo, hi, nx):
    """Blocks ``(rows, cols, outside)`` covering the pixels outside the footprint; ``outside``
    is a boolean of the block, or None when the whole block is outside."""
    empty = lo > hi
    blocks = []
    full = np.flatnonzero(empty)
    for run in np.split(full, np.flatnonzero(np.diff(full) > 1) + 1) if full.size else []:
        blocks.append((slice(run[0], run[-1] + 1), slice(0, nx), None))
    rows = np.flatnonzero(~empty)
    if rows.size:
        r0, r1 = rows[0], rows[-1] + 1
        if empty[r0:r1].any():  # not one run of rows (not expected): a block per row
            cols = np.arange(nx)
            return blocks + [
                (slice(r, r + 1), slice(0, nx), ((cols < lo[r]) | (cols > hi[r]))[None, :])
                for r in rows
            ]
        left = int(lo[r0:r1].max())
        if left > 0:
            cols = np.arange(left)
            blocks.append((slice(r0, r1), slice(0, left), cols[None, :] < lo[r0:r1, None]))
        right = int(hi[r0:r1].min()) + 1
        if right < nx:
            cols = np.arange(right, nx)
            blocks.append((slice(r0, r1), slice(right, nx), cols[None, :] > hi[r0:r1, None]))
    return blocks


def _mask_rule(in_mask, present, inverse, rows, cols):
    """Bits of output pixels ``(rows, cols)`` from the bilinear rule (weight above 0.5).

    The source position is clamped onto the frame as `resample` always did (outside the
    footprint the nearest edge pixels count); evaluated on any set of pixels, it gives what
    the rule gives on the whole grid.
    """
    ny, nx = in_mask.shape
    rows, cols = np.ravel(rows), np.ravel(cols)
    out = np.zeros(rows.shape, bits.MASK_DTYPE)
    xs, ys = _source_xy(inverse, rows, cols)
    x0 = np.clip(np.floor(xs), 0, nx - 2).astype(np.int32)
    y0 = np.clip(np.floor(ys), 0, ny - 2).astype(np.int32)
    m = [in_mask[y0 + j, x0 + i] for j in (0, 1) for i in (0, 1)]
    flagged = np.nonzero(m[0] | m[1] | m[2] | m[3])
    fx = np.clip(xs[flagged] - x0[flagged], 0.0, 1.0)
    fy = np.clip(ys[flagged] - y0[flagged], 0.0, 1.0)
    weights = [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]
    m = [c[flagged] for c in m]
    for bit in (1 << k for k in range(16)):
        if not present & bit:
            continue
        weight = sum(w * ((c & bit) != 0) for c, w in zip(m, weights, strict=True))
        out[flagged[0][weight > 0.5]] |= bit
    return out


def _resample_mask(in_mask, flagged, matrix, inverse, out_shape, lo, hi, blocks):
    """Output mask: the bilinear rule and the forward rule of the module docstring.

    Only output pixels whose bilinear neighbours can carry a bit are evaluated: those
    whose source position is within 1 px (and the footprint tolerance) of a flagged input
    pixel, plus every pixel outside the footprint when a flagged pixel lies on the two
    outermost rows or columns (the rule clamps those onto the frame edge).
    """
    ny_out, nx_out = out_shape
    ny, nx = in_mask.shape
    out_mask = np.zeros(out_shape, bits.MASK_DTYPE)
    if not flagged.size:
        return out_mask
    values = in_mask.reshape(-1)[flagged]
    present = int(np.bitwise_or.reduce(values))
    qy, qx = np.divmod(flagged, nx)
    # Output pixels around where each flagged pixel lands (rounded): the image of the
    # source square of half-side 1 + tol around it.
    half = (1 + _FOOTPRINT_TOL) * np.abs(matrix[:2, :2]).sum(axis=1)
    hx, hy = (int(np.ceil(h + 0.5)) for h in half)
    n_box = (2 * hx + 1) * (2 * hy + 1)
    edge = (qx <= 1) | (qx >= nx - 2) | (qy <= 1) | (qy >= ny - 2)
    n_outside = int(ny_out * nx_out - np.clip(hi - lo + 1, 0, None).sum()) if edge.any() else 0
    if flagged.size * n_box + n_outside > _WHOLE_FRAME * ny_out * nx_out:
        for r0 in range(0, ny_out, 256):  # dense: every output pixel, in bands of rows
            rows, cols = np.mgrid[r0 : min(r0 + 256, ny_out), 0:nx_out]
            band = _mask_rule(in_mask, present, inverse, rows, cols)
            out_mask[r0 : r0 + 256] = band.reshape(rows.shape)
    else:
        land = _apply(matrix, np.column_stack([qx, qy]).astype(np.float64))
        cx, cy = np.rint(land[:, 0]).astype(np.int64), np.rint(land[:, 1]).astype(np.int64)
        oy, ox = np.mgrid[-hy : hy + 1, -hx : hx + 1]
        cand_x = (cx[:, None] + ox.ravel()[None, :]).ravel()
        cand_y = (cy[:, None] + oy.ravel()[None, :]).ravel()
        on = (cand_x >= 0) & (cand_x < nx_out) & (cand_y >= 0) & (cand_y < ny_out)
        cells = [cand_y[on] * nx_out + cand_x[on]]
        if n_outside:
            r = np.arange(ny_out)[:, None]
            c = np.arange(nx_out)[None, :]
            for rows, cols, outside in blocks:
                rr, cc = np.broadcast_arrays(r[rows], c[:, cols])
                keep = np.ones(rr.shape, bool) if outside is None else outside
                cells.append((rr[keep] * nx_out + cc[keep]).ravel())
        cells = np.sort(np.concatenate(cells))
        first = np.ones(cells.size, bool)
        first[1:] = cells[1:] != cells[:-1]
        cells = cells[first]  # each pixel once
        rows, cols = np.divmod(cells, nx_out)
        out_mask.reshape(-1)[cells] = _mask_rule(in_mask, present, inverse, rows, cols)
    # Forward: the output pixel nearest to where each flagged input pixel lands gets its bits.
    fwd = np.rint(_apply(matrix, np.column_stack([qx, qy]).astype(np.float64)))
    on = (fwd[:, 0] >= 0) & (fwd[:, 0] < nx_out) & (fwd[:, 1] >= 0) & (fwd[:, 1] < ny_out)
    fwd = fwd[on].astype(np.intp)
    np.bitwise_or.at(out_mask, (fwd[:, 1], fwd[:, 0]), values[on])
    return out_mask
