"""Registration: the similarity transform of a frame onto a reference, and resampling.

Coordinates are pixel ``(x, y)``, 0-based, pixel centres at integers, ``x`` along a row
(FITS NAXIS1). A transform is a 3x3 homogeneous matrix ``M`` that maps a SOURCE pixel
``(x, y, 1)`` to the REFERENCE pixel it shows: ``(x_ref, y_ref, 1) = M @ (x, y, 1)``; it is
the identity for the reference itself.

Finding the transform (`find_transform`)
----------------------------------------
1. Masked pixels (any bit set) and non-finite pixels are replaced by the local background
   (the ``sep`` background mesh), so they cannot make sources.
2. Sources: ``sep.extract`` above ``detection_sigma`` times the global background rms
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
5. Refinement: astroalign's RANSAC draws from an unseeded random generator, so its
   matrix differs slightly from run to run. The result is therefore refitted
   deterministically: star-like sources (up to ``4 * max_control_points`` per frame) are
   paired one-to-one with their nearest neighbour under the first transform (within 2 px),
   a similarity transform is fitted by linear least squares, pairs farther than 3 times
   the robust rms (1.2 x the median distance) are dropped and the fit is repeated until the
   pairs stop changing.
6. Validation, in this order: at least ``min_matches`` pairs (``few_matches``), ``|scale -
   1| <= max_scale_error`` (``bad_scale``), rms residual ``<= max_residual`` px
   (``large_residual``). A frame whose stars do not match (``no_match``, ``few_matches``)
   while point-like sources coincide at identical positions gets ``hot_pixels_only``.

`find_transform` never raises for a bad frame: it returns ``AlignResult(ok=False, reason=...)``.

Resampling (`resample`)
-----------------------
Output pixel ``p`` takes the source value at ``inv(M) @ p``.

* Data: cubic B-spline interpolation (``scipy.ndimage``, order 3, with its prefilter). It
  is interpolating and nearly preserves the PSF; bilinear does not. Measured at a shift of
  half a pixel in both axes on a star of FWHM 3 px: bilinear broadens it to 3.3 px, lowers
  its peak by 14 % and halves the pixel-to-pixel noise rms; the spline keeps the FWHM
  (second moment unchanged to 0.1 %), the peak within 1 % and the flux within 1e-5, and
  lowers the noise rms by 25 % at that worst-case phase (13 % at a typical one), because
  neighbouring output pixels become correlated. Its negative lobes would ring around
  spikes, so masked pixels are first replaced by the value of the nearest good pixel.
  Values are multiplied by the Jacobian ``|det inv(M)|`` (the source area of an output
  pixel), so counts per pixel stay counts per pixel when the scale is not exactly 1.
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
"""

__all__ = ["REASONS", "AlignResult", "find_transform", "resample"]

import dataclasses
import math
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


def _sources(image, mask, detection_sigma, min_area, max_sharpness):
    """Sources of one frame, brightest first.

    Returns a dict of arrays ``x``, ``y`` (windowed centroids, px), ``flux`` (isophotal,
    image units) and ``sharp`` (peak / 3x3 sum), plus ``rms`` (global background rms).
    """
    import sep

    data = np.ascontiguousarray(image, dtype=np.float32)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if bad.any():
        data = np.where(bad, np.float32(0), data)  # sep needs finite values everywhere
    background = sep.Background(data, mask=bad if bad.any() else None)
    sub = data - background.back(dtype=np.float32)
    sub[bad] = 0.0  # masked pixels become local background: no sources there
    rms = float(background.globalrms)
    objects = sep.extract(sub, detection_sigma, err=rms, minarea=int(min_area))
    objects = objects[np.argsort(-objects["flux"], kind="stable")]
    n = len(objects)
    out = {"rms": rms, "n": n}
    if n == 0:
        out |= {k: np.zeros(0) for k in ("x", "y", "flux", "sharp")}
        return out
    # Sharpness: peak pixel over the 3x3 box around it (zero-padded at the edges).
    padded = np.pad(sub, 1)
    xp, yp = objects["xpeak"].astype(np.int64) + 1, objects["ypeak"].astype(np.int64) + 1
    box = sum(padded[yp + j, xp + i] for j in (-1, 0, 1) for i in (-1, 0, 1))
    peak = padded[yp, xp]
    sharp = np.where(box > 0, peak / np.where(box > 0, box, 1), 1.0)
    # Windowed centroids with the window of the frame's PSF (half-light radius of the
    # brighter sources that are not spikes).
    x, y = objects["x"].astype(np.float64), objects["y"].astype(np.float64)
    extended = np.flatnonzero(sharp < max_sharpness)[:30]
    sig = 1.0
    if extended.size:
        rmax = np.clip(6.0 * objects["a"][extended], 3.0, 30.0).astype(np.float64)
        r_half, _ = sep.flux_radius(sub, x[extended], y[extended], rmax, 0.5, subpix=5)
        sig = float(np.clip(np.median(r_half) / 1.1774, 0.5, 10.0))  # Gaussian sigma
    xw, yw, flag = sep.winpos(sub, x, y, np.full(n, sig))
    good = (flag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 1.5)
    out["x"], out["y"] = np.where(good, xw, x), np.where(good, yw, y)
    out["flux"], out["sharp"] = objects["flux"].astype(np.float64), sharp.astype(np.float64)
    return out


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


def _pair(matrix, src, ref, radius):
    """One-to-one nearest-neighbour pairs (i_src, i_ref) within ``radius`` px."""
    from scipy.spatial import cKDTree

    dist, j = cKDTree(ref).query(_apply(matrix, src), distance_upper_bound=radius)
    i = np.flatnonzero(np.isfinite(dist))
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


def _coincident_spikes(src, ref, max_sharpness, radius=0.5):
    """Number of point-like sources found at the same position in both frames."""
    from scipy.spatial import cKDTree

    a = np.column_stack([src["x"], src["y"]])[src["sharp"] >= max_sharpness]
    b = np.column_stack([ref["x"], ref["y"]])[ref["sharp"] >= max_sharpness]
    if len(a) == 0 or len(b) == 0:
        return 0
    dist, _ = cKDTree(b).query(a, distance_upper_bound=radius)
    return int(np.isfinite(dist).sum())


# --------------------------------------------------------------------------------------
# Public API


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
        Brightest star-like sources of each frame given to astroalign.
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
    try:
        src = _sources(source, source_mask, detection_sigma, min_area, max_sharpness)
        ref = _sources(reference, reference_mask, detection_sigma, min_area, max_sharpness)
    except Exception as exc:  # sep raises plain Exception for its buffer overflows
        return AlignResult(False, "detection_failed", f"{type(exc).__name__}: {exc}")

    def failed(reason, detail, **fit):
        # Stars present but not matching, while spikes coincide: the frames share nothing
        # but the detector's fixed pattern. (A frame without stars stays ``no_stars``.)
        n_spikes = _coincident_spikes(src, ref, max_sharpness)
        if n_spikes >= min(3, min_matches):
            note = f"{n_spikes} point-like sources (hot pixels?) at identical positions"
            if reason in ("no_match", "few_matches"):
                detail = f"{note} in both frames were not used; without them: {reason} ({detail})"
                reason = "hot_pixels_only"
            else:
                detail = f"{detail}; {note} ignored"
        return AlignResult(False, reason, detail, **fit)

    stars = {}
    for name, cat in (("source", src), ("reference", ref)):
        keep = cat["sharp"] < max_sharpness
        stars[name] = np.column_stack([cat["x"][keep], cat["y"][keep]])
        if len(stars[name]) < 3:
            detail = (
                f"{len(stars[name])} star-like sources in the {name} frame "
                f"({cat['n']} detected above {detection_sigma:g} sigma, "
                f"{cat['n'] - int(keep.sum())} point-like)"
            )
            return failed("no_stars", detail)

    import astroalign

    n_ctrl = int(max_control_points)
    try:
        with warnings.catch_warnings():
            # Degenerate asterisms make scikit-image/numpy warn inside astroalign's RANSAC.
            warnings.simplefilter("ignore", RuntimeWarning)
            first, _ = astroalign.find_transform(
                stars["source"][:n_ctrl], stars["reference"][:n_ctrl], max_control_points=n_ctrl
            )
        matrix = np.asarray(first.params, dtype=np.float64)
    except (astroalign.MaxIterError, ValueError, TypeError, IndexError) as exc:
        return failed("no_match", f"astroalign: {type(exc).__name__}: {exc}")
    if not np.all(np.isfinite(matrix)):
        return failed("no_match", "astroalign returned a non-finite transform")

    n_fit = 4 * n_ctrl
    matrix, n_pairs, rms = _refine(matrix, stars["source"][:n_fit], stars["reference"][:n_fit])
    scale, rotation, shift = _describe(matrix, source.shape)
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


def resample(data, uncertainty, mask, matrix, shape):
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

    Returns
    -------
    data : numpy.ndarray
        float32, cubic-spline interpolated, times the Jacobian ``|det inv(M)|``; 0 outside
        the footprint of the source frame.
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
        If ``data`` is not 2-D or a plane's shape differs from it.

    Notes
    -----
    See the module docstring for the interpolators and their effect on noise and PSF.
    """
    from scipy import ndimage

    data = np.asarray(data)
    if data.ndim != 2 or min(data.shape) < 2:
        raise ValueError(f"data must be a 2-D image of at least 2 x 2 pixels, got {data.shape}")
    ny_out, nx_out = (int(n) for n in shape)
    ny, nx = data.shape
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse = np.linalg.inv(matrix)
    jacobian = abs(float(np.linalg.det(inverse[:2, :2])))

    for name, plane in (("uncertainty", uncertainty), ("mask", mask)):
        if plane is not None and np.shape(plane) != data.shape:
            raise ValueError(f"{name} has shape {np.shape(plane)}, data {data.shape}")
    in_mask = np.zeros(data.shape, bits.MASK_DTYPE) if mask is None else np.asarray(mask)
    in_mask = in_mask.astype(bits.MASK_DTYPE, copy=True)
    in_mask[~np.isfinite(data)] |= bits.BAD
    good = in_mask == 0
    variance = None
    if uncertainty is not None:
        variance = np.square(np.asarray(uncertainty, dtype=np.float64))
        good &= np.isfinite(variance)

    # Masked pixels take the value of the nearest good pixel, so the spline cannot ring
    # around them (a filled hot pixel is no spike).
    planes = [np.array(data, dtype=np.float64)]  # a copy: the input is never modified
    if variance is not None:
        planes.append(variance)
    bad = np.nonzero(~good)
    if bad[0].size:
        if bad[0].size < good.size:
            index = ndimage.distance_transform_edt(
                ~good, return_distances=False, return_indices=True
            )
            nearest = (index[0][bad], index[1][bad])
            del index
            for plane in planes:
                plane[bad] = plane[nearest]
        else:
            for plane in planes:
                plane[...] = 0.0
    del good, bad

    # Output (row, col) -> source (row, col) for scipy.ndimage, which works in (y, x).
    linear = inverse[:2, :2][::-1, ::-1]
    offset = inverse[:2, 2][::-1]
    warp = dict(output_shape=(ny_out, nx_out), mode="nearest", output=np.float64)
    out_data = ndimage.affine_transform(planes[0], linear, offset, order=3, **warp)
    out_unc = None
    if variance is not None:
        out_unc = ndimage.affine_transform(planes[1], linear, offset, order=1, **warp)
        np.sqrt(np.maximum(out_unc, 0.0, out=out_unc), out=out_unc)
    del planes, variance

    # Source position of every output pixel, for the footprint and the mask bits.
    x_out = np.arange(nx_out, dtype=np.float64)[None, :]
    y_out = np.arange(ny_out, dtype=np.float64)[:, None]
    xs = inverse[0, 0] * x_out + (inverse[0, 1] * y_out + inverse[0, 2])
    ys = inverse[1, 0] * x_out + (inverse[1, 1] * y_out + inverse[1, 2])
    inside = (xs >= -_FOOTPRINT_TOL) & (xs <= nx - 1 + _FOOTPRINT_TOL)
    inside &= (ys >= -_FOOTPRINT_TOL) & (ys <= ny - 1 + _FOOTPRINT_TOL)

    out_mask = np.zeros((ny_out, nx_out), bits.MASK_DTYPE)
    present = int(np.bitwise_or.reduce(in_mask, axis=None))
    if present:
        # Bilinear weights, only where one of the 4 input pixels carries a bit.
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
            heavy = weight > 0.5
            out_mask[flagged[0][heavy], flagged[1][heavy]] |= bit
            # Forward: the output pixel nearest to where each flagged input pixel lands.
            iy, ix = np.nonzero(in_mask & bit)
            fwd = np.rint(_apply(matrix, np.column_stack([ix, iy]).astype(np.float64)))
            on = (fwd[:, 0] >= 0) & (fwd[:, 0] < nx_out) & (fwd[:, 1] >= 0) & (fwd[:, 1] < ny_out)
            fwd = fwd[on].astype(np.intp)
            out_mask[fwd[:, 1], fwd[:, 0]] |= bit

    out_mask[~inside] |= bits.NODATA
    out_data = np.where(inside, out_data * jacobian, 0.0).astype(np.float32)
    if out_unc is not None:
        out_unc = np.where(inside, out_unc * jacobian, 0.0).astype(np.float32)
    return out_data, out_unc, out_mask
