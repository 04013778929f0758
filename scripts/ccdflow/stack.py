"""Stack aligned frames: robust combination honouring masks, in row bands.

Inputs are products on one common pixel grid (``CCDData`` layout: float32 data,
``UNCERT`` standard deviation, ``MASK`` bits; see :mod:`ccdflow.io`). Per pixel:

1. values whose mask has any of ``reject_bits`` set, or that are not finite, are
   excluded;
2. ``scale='sky'``: each frame i becomes ``x_i - s_i + mean(s)``, with ``s_i`` the
   sigma-clipped median of frame i (an additive offset to a common background; no
   multiplicative flux scaling);
3. outliers are rejected by :func:`ccdflow.combine.reject`, the kernel of
   :func:`ccdflow.combine.combine_stack` (clip around the median with a robust spread,
   or min/max);
4. the survivors are averaged with per-frame weights ``w_i`` (1, or
   ``1 / median(UNCERT_i**2)`` for ``weight='inverse_variance'``; per frame, not per
   pixel, since per-pixel inverse-variance weights favour low values and bias the
   result low), or their median is taken.

The uncertainty is propagated from the ``UNCERT`` planes of the survivors:
``sqrt(sum w_i**2 sigma_i**2) / sum w_i`` (times sqrt(pi/2) for medians). The coverage
map counts the survivors. A pixel with none where some frame holds a cosmic-ray pixel that
was cleaned (only ``bits.COSMIC`` among ``reject_bits``: a one-frame stack, or every frame
hit there) takes the mean of those cleaned values and their propagated uncertainty, and is
flagged ``bits.COSMIC`` (coverage 0: no unflagged value). Other pixels with none get
``bits.NOT_COVERED`` and value 0.

Memory: the frames are read in row bands sized by :func:`ccdflow.combine.band_rows`,
each byte of each input once, with positional reads (no memory map, so the resident
size stays at the band and no file stays open). ``scale='sky'`` and
``weight='inverse_variance'`` first read a strided subsample of rows of each input
(about 256 rows) to measure the sky level and the typical variance.
"""

__all__ = ["ALL_BITS", "SCALES", "WEIGHTS", "StackResult", "stack_files"]

import os
import warnings
from dataclasses import dataclass

import numpy as np

from ccdflow import bits, provenance
from ccdflow.combine import Clip, band_rows, reject
from ccdflow.io import FrameError, image_hdus

SCALES = ("none", "sky")
WEIGHTS = ("none", "inverse_variance")

#: Every named mask bit: the default set of bits that exclude a value from the stack.
ALL_BITS = sum(bits.BIT_NAMES)  # distinct powers of two

#: Rows and columns sampled per input to measure its sky level / typical variance before
#: stacking: a grid of 256 x 256 pixels gives the median to 0.5 % of the pixel noise.
_SAMPLE_ROWS = 256
_SAMPLE_COLUMNS = 256

#: Temporaries of one band, in multiples of the (n, rows, nx) float32 value stack:
#: values, uncertainties, masks, and the clip (see ``combine.band_rows``).
_BAND_OVERHEAD = 12

#: Bytes per pixel of the results held for the whole image (data, uncertainty,
#: coverage, mask).
_OUTPUT_BYTES = 12


#: Per-frame provenance of an input header that does not describe the stack.
_PER_FRAME_KEYS = ("RAWFILE", "RAWSHA", "NSATUR", "DARKSCAL", "BZERO", "BSCALE", "BLANK")


@dataclass
class StackResult:
    """A stack in memory.

    Attributes
    ----------
    data, uncertainty : numpy.ndarray
        float32 combined image and its standard deviation, in the unit of the inputs.
    mask : numpy.ndarray
        ``bits.MASK_DTYPE``: ``bits.NOT_COVERED`` where ``coverage == 0``, else 0.
    coverage : numpy.ndarray
        int16 number of frames used per pixel.
    header : astropy.io.fits.Header
        Provenance of the stack (see :func:`stack_files`).
    sky : numpy.ndarray or None
        Sky level subtracted from each input (``scale='sky'``), in the data unit.
    weights : numpy.ndarray
        Relative weight of each input (mean 1; all 1 for ``weight='none'``).
    """

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    coverage: np.ndarray
    header: object
    sky: np.ndarray | None = None
    weights: np.ndarray | None = None


class _Product:
    """Lazy row access to the data, ``UNCERT`` and ``MASK`` of one product."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with image_hdus(path) as hdus:
                names = [h.name for h in hdus]
                self.header = hdus[0].header.copy()
                self.data = hdus[0].rows(integers=False)
                if "UNCERT" not in names:
                    raise FrameError(path, "no_uncertainty", "no UNCERT extension")
                self.uncert = hdus[names.index("UNCERT")].rows(integers=False)
                self.mask = None
                if "MASK" in names:
                    self.mask = hdus[names.index("MASK")].rows()
        except FrameError:
            raise
        except Exception as exc:  # astropy raises many types for broken files
            raise FrameError(path, "unreadable", f"{type(exc).__name__}: {exc}") from exc
        self.shape = self.data.shape
        for plane in (self.uncert, self.mask):
            if plane is not None and plane.shape != self.shape:
                raise FrameError(
                    path, "shape_mismatch", f"{plane.header.get('EXTNAME')} is {plane.shape}"
                )

    def rows(self, y0, y1, reject_bits, data, unc, bad, cleaned):
        """Rows ``y0:y1`` into the arrays of their shape ``data`` and ``unc`` (float32:
        read into them, no intermediate copy), ``bad`` (a 'do not use' plane) and
        ``cleaned`` (the cleaned cosmic-ray pixels: finite, and ``bits.COSMIC`` the only
        one of ``reject_bits`` set)."""
        self.data.rows(y0, y1, out=data)
        self.uncert.rows(y0, y1, out=unc)
        np.isfinite(data, out=bad)
        bad &= np.isfinite(unc)
        np.logical_not(bad, out=bad)
        cleaned[...] = False
        if self.mask is not None:
            bits_set = self.mask.rows(y0, y1) & reject_bits
            if reject_bits & bits.COSMIC:
                np.equal(bits_set, bits.COSMIC, out=cleaned)
                cleaned &= ~bad
            bad |= bits_set != 0

    def sample(self, step, reject_bits, col_step=1):
        """Like :meth:`rows` for every ``step``-th row and ``col_step``-th column."""
        data = self.data.sample(step, col_step)
        unc = self.uncert.sample(step, col_step).astype(np.float32, copy=False)
        bad = ~(np.isfinite(data) & np.isfinite(unc))
        if self.mask is not None:
            bad |= (self.mask.sample(step, col_step) & reject_bits) != 0
        return data, unc, bad


def _open_all(paths):
    products = [_Product(p) for p in paths]
    first = products[0]
    unit = first.header.get("BUNIT")
    for p in products[1:]:
        if p.shape != first.shape:
            raise FrameError(
                p.path, "shape_mismatch", f"shape {p.shape}, but {first.path} is {first.shape}"
            )
        if p.header.get("BUNIT") != unit:
            raise FrameError(
                p.path,
                "unit_mismatch",
                f"BUNIT {p.header.get('BUNIT')!r}, but {first.path} has {unit!r}",
            )
    return products


def _frame_levels(product, reject_bits, need_sky, need_weight):
    """Sky level (sigma-clipped median) and median variance of a strided row sample."""
    from astropy.stats import sigma_clipped_stats

    step = max(1, product.shape[0] // _SAMPLE_ROWS)
    col_step = max(1, product.shape[1] // _SAMPLE_COLUMNS)
    data, unc, bad = product.sample(step, reject_bits, col_step)
    good = ~bad
    if not good.any():
        raise FrameError(product.path, "no_valid_pixels", "every sampled pixel is masked")
    sky = variance = None
    if need_sky:
        _, sky, _ = sigma_clipped_stats(
            data[good], sigma=3.0, maxiters=5, cenfunc="median", stdfunc="mad_std"
        )
        sky = float(sky)
    if need_weight:
        var = unc[good & (unc > 0)].astype(np.float64) ** 2
        if var.size == 0:
            raise FrameError(product.path, "no_uncertainty", "UNCERT is 0 everywhere")
        variance = float(np.median(var))
    return sky, variance


def _cleaned_mean(values, sigmas, cleaned):
    """Mean of the cleaned cosmic-ray values per pixel, its uncertainty and their count
    (None when the band has none): the value of a pixel that no frame covers otherwise."""
    if not cleaned.any():
        return None
    count = cleaned.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cleaned, values, 0).sum(axis=0) / count
        err = np.sqrt(np.where(cleaned, sigmas * sigmas, 0).sum(axis=0)) / count
    return mean.astype(np.float32), err.astype(np.float32), count


def _combine_band(stack, unc, bad, weights, clip):
    """Combine one band (arrays are overwritten): data, propagated uncertainty, coverage."""
    bad = reject(stack, bad, clip)
    method = clip.method
    nused = (~bad).sum(axis=0).astype(np.int16)
    covered = nused > 0
    unc[bad] = 0
    np.square(unc, out=unc)
    if method in ("median", "sigma_clip_median"):
        stack[bad] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # uncovered pixels: all-NaN
            data = np.nanmedian(stack, axis=0)
        # error of the mean of the survivors, times sqrt(pi/2) for a median
        err = np.sqrt(np.pi / 2 * unc.sum(axis=0)) / np.where(covered, nused, 1)
    else:
        stack[bad] = 0
        total = np.zeros(stack.shape[1:], np.float32)
        var = np.zeros_like(total)
        sw = np.zeros_like(total)
        for i, w in enumerate(weights.astype(np.float32)):
            total += w * stack[i]
            var += (w * w) * unc[i]
            sw += w * ~bad[i]
        sw[~covered] = 1
        data = total / sw
        err = np.sqrt(var) / sw
    data = np.where(covered, data, 0).astype(np.float32)
    err = np.where(covered, err, 0).astype(np.float32)
    return data, err, nused


def stack_files(
    paths,
    *,
    clip=Clip(),
    scale="none",
    weight="none",
    reject_bits=ALL_BITS,
    mem_limit_mb=2000,
):
    """Stack aligned products into one image.

    Parameters
    ----------
    paths : sequence of path-like
        Products on a common grid (float32 data, ``UNCERT``, optional ``MASK``), all of
        the same shape and ``BUNIT`` (electrons for calibrated frames). Not modified.
    clip : ccdflow.combine.Clip
        The rejection and combination (`ccdflow.combine.Clip.split` of the ``stack``
        configuration): ``sigma_clip`` (clip around the median, then mean of the
        survivors), ``sigma_clip_median``, ``median``, ``mean``, ``minmax`` (of the
        values not masked).
    scale : {'none', 'sky'}
        ``'sky'``: subtract each frame's sky level (sigma-clipped median of a strided
        row sample) and add the mean sky of all frames, before rejection. Additive only.
    weight : {'none', 'inverse_variance'}
        ``'inverse_variance'``: per-frame weights ``1 / median(UNCERT**2)`` (mean-type
        methods only).
    reject_bits : int
        Mask bits that exclude a value (default: every bit in :mod:`ccdflow.bits`).
    mem_limit_mb : float
        Memory budget (MiB) of the arrays: the results (12 bytes per pixel) plus the
        row band and its temporaries, which get the rest (at least one row). The
        interpreter and its modules (about 170 MB) come on top.

    Returns
    -------
    StackResult
        The header is a copy of the first input's (grid, WCS, ``OBJECT``, ``FILTER``,
        ``BUNIT``) without its per-frame provenance and history, with ``EXPTIME`` the
        mean exposure of the inputs, ``PRODTYPE = 'STACK'``, ``NCOMBINE``, the inputs
        (``IMCMBnnn``), ``COMBMETH`` and its parameters, ``SCALEMTH``, ``WEIGHTS``,
        ``REJBITS`` (and ``SKYMEAN`` with ``scale='sky'``). The caller adds the
        reference frame and masters.

    Raises
    ------
    FrameError
        An input that is unreadable, truncated, lacks ``UNCERT``, or differs from the
        first in shape or unit; the message names it.
    ValueError
        An unknown or inconsistent parameter.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("stack_files needs at least one input")
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {SCALES}")
    if weight not in WEIGHTS:
        raise ValueError(f"weight {weight!r} is not one of {WEIGHTS}")
    if weight != "none" and clip.method in ("median", "sigma_clip_median"):
        raise ValueError(f"weight {weight!r} applies to mean-type methods, not {clip.method!r}")
    n = len(paths)
    clip.check(n)

    products = _open_all(paths)
    ny, nx = products[0].shape
    need_sky, need_weight = scale == "sky", weight == "inverse_variance"
    offsets = np.zeros(n, np.float32)
    weights = np.ones(n)
    sky = None
    if need_sky or need_weight:
        levels = [_frame_levels(p, reject_bits, need_sky, need_weight) for p in products]
        if need_sky:
            sky = np.array([s for s, _ in levels])
            offsets = (sky.mean() - sky).astype(np.float32)
        if need_weight:
            weights = 1.0 / np.array([v for _, v in levels])
            weights /= weights.mean()

    data = np.empty((ny, nx), np.float32)
    unc = np.empty((ny, nx), np.float32)
    coverage = np.empty((ny, nx), np.int16)
    from_cleaned = np.zeros((ny, nx), bool)
    outputs_mb = ny * nx * _OUTPUT_BYTES / 2**20
    step = band_rows(n, nx, ny, max(mem_limit_mb - outputs_mb, 0), overhead=_BAND_OVERHEAD)
    for y0 in range(0, ny, step):
        y1 = min(ny, y0 + step)
        values = np.empty((n, y1 - y0, nx), np.float32)
        sigmas = np.empty((n, y1 - y0, nx), np.float32)
        bad = np.empty((n, y1 - y0, nx), bool)
        cleaned = np.empty((n, y1 - y0, nx), bool)
        for i, p in enumerate(products):
            p.rows(y0, y1, reject_bits, values[i], sigmas[i], bad[i], cleaned[i])
            values[i] += offsets[i]
        fallback = _cleaned_mean(values, sigmas, cleaned)
        values[bad] = 0  # masked values may be NaN; they are never used
        data[y0:y1], unc[y0:y1], coverage[y0:y1] = _combine_band(
            values, sigmas, bad, weights, clip
        )
        if fallback is not None:
            use = (coverage[y0:y1] == 0) & (fallback[2] > 0)
            data[y0:y1][use] = fallback[0][use]
            unc[y0:y1][use] = fallback[1][use]
            from_cleaned[y0:y1] = use
        del values, sigmas, bad, cleaned, fallback

    mask = np.where(coverage == 0, bits.NOT_COVERED, 0).astype(bits.MASK_DTYPE)
    mask[from_cleaned] = bits.COSMIC
    header = _header(products, clip, scale, weight, reject_bits, sky)
    return StackResult(data, unc, mask, coverage, header, sky=sky, weights=weights)


def _header(products, clip, scale, weight, reject_bits, sky):
    header = products[0].header.copy()
    for key in _PER_FRAME_KEYS:
        header.remove(key, ignore_missing=True, remove_all=True)
    header.remove("HISTORY", ignore_missing=True, remove_all=True)
    for key in [k for k in header if k.startswith("IMCMB")]:
        header.remove(key, remove_all=True)
    exptimes = [p.header.get("EXPTIME") for p in products]
    if all(isinstance(t, int | float) for t in exptimes):
        header["EXPTIME"] = (float(np.mean(exptimes)), "[s] mean exposure of the inputs")
    provenance.stamp(header, "STACK")
    provenance.add_inputs(header, [p.path for p in products])
    provenance.add_step(header, "COMBMETH", clip.method)
    if clip.clips:
        provenance.add_step(header, "CLIPLOW", clip.sigma_low)
        provenance.add_step(header, "CLIPHIGH", clip.sigma_high)
        provenance.add_step(header, "CLIPSIG", clip.spread)
        provenance.add_step(header, "CLIPITER", clip.maxiters)
    if clip.method == "minmax":
        header["NLOW"] = (clip.nlow, "lowest values dropped per pixel (minmax)")
        header["NHIGH"] = (clip.nhigh, "highest values dropped per pixel (minmax)")
    scale_text = "additive: sky median to mean sky" if scale == "sky" else "none"
    provenance.add_step(header, "SCALEMTH", scale_text)
    if sky is not None:
        header["SKYMEAN"] = (round(float(sky.mean()), 4), "mean sky of the inputs, data unit")
    weight_text = "1/median(UNCERT**2) per frame" if weight == "inverse_variance" else "none"
    header["WEIGHTS"] = (weight_text, "per-frame weights of the mean")
    header["REJBITS"] = (int(reject_bits), "mask bits that exclude a value")
    return header
