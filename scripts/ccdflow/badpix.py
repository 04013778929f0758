"""Bad-pixel map of a detector setup from its master dark and master flat.

* Hot pixels (`find_hot`): dark signal (or rate) above the local level by more than
  ``hot_sigma`` robust standard deviations of the whole master dark.
* Dead or low pixels (`find_low`): master-flat response below ``low_fraction`` of the
  local level.
* Bad columns (`find_bad_columns`): in bands of ``column_band`` rows, a column whose median
  response is below ``column_fraction`` of the median of its neighbouring columns; the
  column is flagged over the band, so a column bad from a charge trap to the readout is
  caught without flagging its good part.

"Local level" is a smooth background: medians of blocks of ``block`` x ``block`` pixels
(16), interpolated bilinearly and extrapolated linearly to the edges, so gradients
(amplifier glow in darks, vignetting in flats) are not mistaken for defects. Pixels
already masked in the masters (non-zero mask) are left out of every statistic. Memory: a
few float32 copies of the frame (about 200 MB for 4k x 4k).

Mask bits
---------
`ccdflow.bits.HOT` (64), `ccdflow.bits.DEAD` (128, dead or low pixels from the flat) and
`ccdflow.bits.BAD_COLUMN` (256). Pixels of a user-supplied map get `ccdflow.bits.BAD`.

Defaults
--------
`DEFAULTS` holds the thresholds; they are also the defaults of the ``badpix``
configuration block (STYLE 16). Why each:

* ``hot_sigma`` 5: at 5 robust sigma a Gaussian 4k x 4k frame has about 5 false hot
  pixels; a real hot pixel of a cooled CCD is tens to thousands of sigma.
* ``min_excess`` 0 (dark rate units, ADU/s in the workflow): no extra condition.
* ``low_fraction`` 0.7: a pixel that lost 30 % of its sensitivity, far beyond the 1-2 %
  pixel-to-pixel spread of a CCD and the 5-10 % dips of dust shadows.
* ``column_fraction`` 0.9 over ``column_band`` 128 rows: a median over 128 rows is
  precise to well under 1 %, so a 10 % deficit of a whole column segment is a defect.
* ``block`` 16: the local level follows gradients (amplifier glow, vignetting) over tens
  of pixels, while one defect pixel hardly moves a median of 256.
"""

__all__ = [
    "DEFAULTS",
    "MASTER_KEYS",
    "bad_pixel_map",
    "find_bad_columns",
    "find_hot",
    "find_low",
    "master_thresholds",
]

import contextlib
import itertools
import warnings

import numpy as np
from scipy import ndimage

from ccdflow import bits
from ccdflow.bits import BAD_COLUMN, DEAD, HOT

#: Default thresholds (the module docstring says why each); the ``badpix`` config defaults.
DEFAULTS = {
    "hot_sigma": 5.0,
    "min_excess": 0.0,
    "low_fraction": 0.7,
    "column_fraction": 0.9,
    "column_band": 128,
    "block": 16,
}
_D = DEFAULTS
#: The thresholds each master kind uses (what its rule gets as parameters, so a change of
#: a flat threshold does not remake the darks).
MASTER_KEYS = {
    "dark": ("hot_sigma", "min_excess", "block"),
    "flat": ("low_fraction", "column_fraction", "column_band", "block"),
}


def master_thresholds(config, kind):
    """The ``badpix`` configuration as the master of ``kind`` uses it: its thresholds
    (`MASTER_KEYS`), or None when it gets no defect bits (``enabled: false``, a bias)."""
    if kind not in MASTER_KEYS or not config.get("enabled", True):
        return None
    return {k: config.get(k, DEFAULTS[k]) for k in MASTER_KEYS[kind]}


_MAD_TO_STD = 1.482602218505602


def find_hot(
    dark, mask=None, *, hot_sigma=_D["hot_sigma"], min_excess=_D["min_excess"], block=_D["block"]
):
    """Hot pixels of a master dark.

    Parameters
    ----------
    dark : array
        Master dark, bias-subtracted, in any linear unit (ADU, e-, or a rate in e-/s).
    mask : array or None
        Pixels to ignore (non-zero); they are never flagged.
    hot_sigma : float
        Threshold above the local level in robust standard deviations of the whole dark
        (MAD of the residual x 1.4826). At 5 sigma a Gaussian frame of 4k x 4k has about 5
        false hot pixels; a real hot pixel of a cooled CCD is tens to thousands of sigma.
    min_excess : float
        Also required: excess above the local level of at least this much (dark units);
        0 disables it. Useful to flag only pixels that matter for a given exposure time.
    block : int
        Block side (px) of the local level.

    Returns
    -------
    numpy.ndarray of bool
    """
    dark, bad = _prepare(dark, mask)
    residual = dark - _local_level(dark, bad, block)
    scale = _robust_std(residual, bad)
    hot = (residual > hot_sigma * scale) & (residual >= min_excess)
    return hot & ~bad


def find_low(flat, mask=None, *, low_fraction=_D["low_fraction"], block=_D["block"]):
    """Dead and low pixels of a master flat.

    Parameters
    ----------
    flat : array
        Master flat (any normalisation).
    mask : array or None
        Pixels to ignore (non-zero); they are never flagged.
    low_fraction : float
        A pixel whose response is below this fraction of the local level is flagged. At
        0.7 the pixel has lost 30 % of its sensitivity, far beyond the 1-2 % pixel-to-pixel
        spread of a CCD and the 5-10 % dips of dust shadows (which the flat corrects, and
        which are not defects); dead pixels are near 0.
    block : int
        Block side (px) of the local level.

    Returns
    -------
    numpy.ndarray of bool
    """
    flat, bad = _prepare(flat, mask)
    level = _local_level(flat, bad, block)
    with _quiet_nan():
        low = flat < low_fraction * level
    return low & ~bad


def find_bad_columns(
    flat,
    mask=None,
    *,
    column_fraction=_D["column_fraction"],
    column_band=_D["column_band"],
    window=7,
    block=_D["block"],
):
    """Bad column segments of a master flat.

    Parameters
    ----------
    flat : array
        Master flat (any normalisation); columns run along axis 0 (FITS NAXIS2).
    mask : array or None
        Pixels to ignore (non-zero); they are never flagged.
    column_fraction : float
        A column segment whose median response is below this fraction of the median of the
        ``window`` columns on either side (same rows) is flagged. A median over 128 rows
        is precise to well under 1 %, so a 10 % deficit is a defect (a partly blocked or
        trapping column), not noise, and a flat field would correct it only approximately.
    column_band : int
        Rows per segment (about: the rows are split into ``rows // column_band`` equal
        bands).
    window : int
        Columns on each side that make the reference.
    block : int
        Block side (px) of the local level the response is measured against.

    Returns
    -------
    numpy.ndarray of bool
    """
    flat, bad = _prepare(flat, mask)
    ratio = flat / _local_level(flat, bad, block)
    ratio[bad] = np.nan
    ny = ratio.shape[0]
    edges = np.linspace(0, ny, max(1, ny // column_band) + 1).round().astype(int)
    out = np.zeros(ratio.shape, bool)
    for y0, y1 in itertools.pairwise(edges):
        with _quiet_nan():
            med = np.nanmedian(ratio[y0:y1], axis=0)
            reference = _neighbour_median(med, window)
            out[y0:y1, med < column_fraction * reference] = True
    return out & ~bad


def bad_pixel_map(
    dark=None,
    flat=None,
    user=None,
    *,
    dark_mask=None,
    flat_mask=None,
    hot_sigma=_D["hot_sigma"],
    min_excess=_D["min_excess"],
    low_fraction=_D["low_fraction"],
    column_fraction=_D["column_fraction"],
    column_band=_D["column_band"],
    block=_D["block"],
):
    """Bad-pixel map of one setup: hot pixels, dead/low pixels, bad columns, user pixels.

    Parameters
    ----------
    dark, flat : array or None
        Master dark and master flat of the setup (either may be missing).
    user : array or None
        User-supplied map (non-zero = bad), OR-ed in with `ccdflow.bits.BAD`.
    dark_mask, flat_mask : array or None
        Mask planes of the masters (non-zero pixels are ignored by the statistics).
    hot_sigma, min_excess : float
        See `find_hot`.
    low_fraction : float
        See `find_low`.
    column_fraction : float
    column_band : int
        See `find_bad_columns`.
    block : int
        Block side (px) of the local level.

    Returns
    -------
    numpy.ndarray of uint16
        `ccdflow.bits.MASK_DTYPE` map: `HOT`, `DEAD`, `BAD_COLUMN` and `ccdflow.bits.BAD`.
    """
    shapes = {np.shape(a) for a in (dark, flat, user) if a is not None}
    if not shapes:
        raise ValueError("bad_pixel_map needs a master dark, a master flat or a user map")
    if len(shapes) > 1:
        raise ValueError(f"dark, flat and user map have different shapes: {sorted(shapes)}")
    out = np.zeros(shapes.pop(), bits.MASK_DTYPE)
    if dark is not None:
        hot = find_hot(dark, dark_mask, hot_sigma=hot_sigma, min_excess=min_excess, block=block)
        out[hot] |= HOT
    if flat is not None:
        out[find_low(flat, flat_mask, low_fraction=low_fraction, block=block)] |= DEAD
        columns = find_bad_columns(
            flat,
            flat_mask,
            column_fraction=column_fraction,
            column_band=column_band,
            block=block,
        )
        out[columns] |= BAD_COLUMN
    if user is not None:
        out[np.asarray(user) != 0] |= bits.BAD
    return out


def _prepare(image, mask):
    """float32 copy of ``image`` and the boolean mask of pixels to ignore."""
    image = np.array(image, dtype=np.float32)
    bad = ~np.isfinite(image)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    return image, bad


def _local_level(image, bad, block):
    """Smooth local level: block medians of the good pixels, interpolated bilinearly."""
    ny, nx = image.shape
    b = int(max(2, min(block, ny, nx)))
    my, mx = -(-ny // b), -(-nx // b)
    padded = np.full((my * b, mx * b), np.nan, np.float32)
    padded[:ny, :nx] = np.where(bad, np.nan, image)
    blocks = padded.reshape(my, b, mx, b).transpose(0, 2, 1, 3).reshape(my, mx, b * b)
    with _quiet_nan():
        grid = np.nanmedian(blocks, axis=2)
    if np.isnan(grid).all():
        return np.full(image.shape, np.nan, np.float32)
    if np.isnan(grid).any():  # empty blocks take the nearest filled block
        index = ndimage.distance_transform_edt(np.isnan(grid), return_indices=True)[1]
        grid = grid[tuple(index)]
    # Pixel (y, x) is at block coordinate (y + 0.5) / b - 0.5.
    yy = ((np.arange(ny) + 0.5) / b - 0.5).astype(np.float32)
    xx = ((np.arange(nx) + 0.5) / b - 0.5).astype(np.float32)
    return _bilinear(grid.astype(np.float32), yy, xx)


def _bilinear(grid, yy, xx):
    """Separable bilinear interpolation of ``grid`` at rows ``yy`` and columns ``xx`` (grid
    coordinates); linear extrapolation beyond the outer block centres (half a block), so a
    gradient towards an edge or a corner is followed rather than flattened."""

    def weights(coord, n):
        if n == 1:
            return np.zeros(coord.size, int), np.zeros(coord.size, int), np.zeros_like(coord)
        i0 = np.clip(np.floor(coord).astype(int), 0, n - 2)
        return i0, i0 + 1, (coord - i0).astype(np.float32)

    y0, y1, wy = weights(yy, grid.shape[0])
    x0, x1, wx = weights(xx, grid.shape[1])
    rows = grid[y0] * (1 - wy)[:, None] + grid[y1] * wy[:, None]  # (ny, grid nx)
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


def _robust_std(values, bad):
    """MAD standard deviation of the good values (a subsample of at most ~1e6)."""
    v = values[~bad]
    step = max(1, v.size // 1_000_000)
    v = v[::step]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan
    return float(_MAD_TO_STD * np.median(np.abs(v - np.median(v))))


def _neighbour_median(values, window):
    """Median of the ``window`` values on either side of each element (NaN ignored)."""
    n = values.size
    padded = np.concatenate([np.full(window, np.nan), values, np.full(window, np.nan)])
    index = np.arange(n)[:, None] + np.r_[0:window, window + 1 : 2 * window + 1][None, :]
    with _quiet_nan():
        return np.nanmedian(padded[index], axis=1)


@contextlib.contextmanager
def _quiet_nan():
    """Silence numpy's 'All-NaN slice' and invalid-comparison warnings in a block."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
