"""Gain and read noise measured from pairs of frames, and their comparison with the header.

The method is the lecture's (Janesick's photon transfer with two frames of each kind):

* read noise (ADU) = std(b1 - b2) / sqrt(2) for two biases ``b1``, ``b2``;
* gain (e-/ADU) = ((mean f1 + mean f2) - (mean b1 + mean b2)) / (var(f1 - f2) - var(b1 - b2))
  for two flats ``f1``, ``f2`` of the same level. Differencing removes the fixed pattern
  (bias structure, pixel-to-pixel response); what is left is read noise and photon noise.

With pairs at several flat levels the gain is the slope of a photon-transfer fit through
the origin, ``var_shot = signal / gain`` (``var_shot = (var(f1 - f2) - var(b1 - b2)) / 2``
and ``signal = (mean f1 + mean f2) / 2 - bias``), weighted for the noise of a variance.

How the statistics are made robust and cheap
--------------------------------------------
Only tiles are read: a regular grid of at most ``max_tiles`` square tiles of ``tile`` px
inside the central ``region`` fraction of the frame (defaults: 64 tiles of 64 x 64 px in
the central 80 %, 262,144 pixels per frame however large the frame). A memory-mapped 4k x
4k FITS image therefore costs about 2 MB per frame. In each tile the difference image is
clipped at ``clip`` (5) robust sigma about its median (MAD scale, twice), so hot pixels,
cosmic rays and masked pixels do not enter; the clipped variance is corrected for the
truncation of a Gaussian at that many sigma (0.0015 % at 5 sigma). The means of the
frames use the same pixels.

Each tile gives its own gain and read noise; the reported value pools the tiles (sums of
signal and variance over the tiles), and its uncertainty is the standard deviation of the
tile values divided by sqrt(number of tiles) -- an empirical error that includes whatever
the tiles disagree on, not only the analytic photon statistics.
"""

__all__ = [
    "UNITS",
    "DetectorMeasurement",
    "compare_with_header",
    "measure_detector",
]

import dataclasses
import math

import numpy as np
from scipy import special

#: Units of the fields of `DetectorMeasurement`.
UNITS = {
    "gain": "electron/adu",
    "read_noise_adu": "adu",
    "read_noise_e": "electron",
}


@dataclasses.dataclass(frozen=True)
class DetectorMeasurement:
    """Gain and read noise measured from frame pairs.

    Attributes
    ----------
    gain, gain_err : float
        Gain and its 1-sigma uncertainty (e-/ADU); NaN without flat pairs.
    read_noise_adu, read_noise_adu_err : float
        Read noise and its uncertainty (ADU).
    read_noise_e, read_noise_e_err : float
        Read noise and its uncertainty (electrons): ``read_noise_adu * gain``, both errors
        propagated; NaN without a gain.
    n_bias_pairs, n_flat_pairs : int
        Number of frame pairs used.
    n_tiles : int
        Tiles per frame the statistics were measured in (tiles left entirely masked or
        clipped are not counted).
    method : str
        ``'pair'`` (one flat pair) or ``'photon_transfer'`` (fit over several pairs).
    levels_adu : tuple of float
        Bias-subtracted mean signal (ADU) of each flat pair.
    """

    gain: float
    gain_err: float
    read_noise_adu: float
    read_noise_adu_err: float
    read_noise_e: float
    read_noise_e_err: float
    n_bias_pairs: int
    n_flat_pairs: int
    n_tiles: int
    method: str
    levels_adu: tuple = ()

    def as_dict(self):
        """JSON-friendly dict (NaN becomes None) with a ``units`` entry."""
        out = {}
        for k, v in dataclasses.asdict(self).items():
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            out[k] = list(v) if isinstance(v, tuple) else v
        out["units"] = dict(UNITS)
        return out


def measure_detector(
    bias_pairs,
    flat_pairs=(),
    *,
    mask=None,
    region=0.8,
    tile=64,
    max_tiles=64,
    clip=5.0,
):
    """Read noise from pairs of biases and gain from pairs of flats.

    Parameters
    ----------
    bias_pairs : sequence of (array, array)
        Pairs of bias frames (ADU), raw (not overscan-corrected, not trimmed of anything the
        flats keep). At least one pair.
    flat_pairs : sequence of (array, array)
        Pairs of flats (ADU) taken with the same readout, each pair at one level; several
        pairs at different levels make a photon-transfer fit. The flats' bias level must be
        the biases' (same readout mode, no overscan subtraction on one kind only).
    mask : array or None
        Bad-pixel mask (non-zero = bad) of the frame shape, excluded everywhere.
    region : float
        Fraction (per axis) of the frame, centred, the tiles are drawn from (0 < region <= 1).
    tile : int
        Tile side (px).
    max_tiles : int
        At most this many tiles (a regular grid, evenly spread over the region).
    clip : float
        Clipping limit (robust sigma) on the difference images.

    Returns
    -------
    DetectorMeasurement
    """
    bias_pairs = [tuple(p) for p in bias_pairs]
    flat_pairs = [tuple(p) for p in flat_pairs]
    if not bias_pairs:
        raise ValueError("measure_detector needs at least one pair of bias frames")
    shape = np.shape(bias_pairs[0][0])
    for a, b in bias_pairs + flat_pairs:
        if np.shape(a) != shape or np.shape(b) != shape:
            raise ValueError(f"frames of different shapes: {np.shape(a)}, {np.shape(b)}, {shape}")
    tiles = _tiles(shape, region, tile, max_tiles)
    bad = None if mask is None else np.asarray(mask) != 0

    # Per tile: bias level (sum of the two means) and variance of the difference,
    # averaged over the bias pairs.
    b_stats = np.array([[_pair_stats(a, b, t, bad, clip) for t in tiles] for a, b in bias_pairs])
    f_stats = np.array([[_pair_stats(a, b, t, bad, clip) for t in tiles] for a, b in flat_pairs])
    ok = np.isfinite(b_stats).all(axis=(0, 2))
    if flat_pairs:
        ok &= np.isfinite(f_stats).all(axis=(0, 2))
        f_stats = f_stats[:, ok]
    if not ok.any():
        raise ValueError("no tile has enough good pixels: is the mask (almost) everywhere set?")
    b_stats = b_stats[:, ok]
    b_sum, b_var = b_stats[..., 0].mean(axis=0), b_stats[..., 1].mean(axis=0)  # (n_tiles,)
    rn_tiles = np.sqrt(np.clip(b_var, 0, None) / 2)
    rn = math.sqrt(max(b_var.mean(), 0.0) / 2)
    rn_err = _sem(rn_tiles)

    nan = math.nan
    gain = gain_err = nan
    levels = ()
    if flat_pairs:
        signal = (f_stats[..., 0] - b_sum) / 2  # (n_pairs, n_tiles): ADU above bias
        shot = (f_stats[..., 1] - b_var) / 2  # photon variance (ADU^2) of one frame
        levels = tuple(float(s) for s in signal.mean(axis=1))
        gain = _ptc_gain(signal.sum(axis=1), shot.sum(axis=1))
        gain_tiles = np.array([_ptc_gain(signal[:, j], shot[:, j]) for j in range(ok.sum())])
        gain_err = _sem(gain_tiles)
    rn_e = rn * gain
    rn_e_err = math.hypot(rn_err * gain, rn * gain_err) if flat_pairs else nan
    return DetectorMeasurement(
        gain=float(gain),
        gain_err=float(gain_err),
        read_noise_adu=float(rn),
        read_noise_adu_err=float(rn_err),
        read_noise_e=float(rn_e),
        read_noise_e_err=float(rn_e_err),
        n_bias_pairs=len(bias_pairs),
        n_flat_pairs=len(flat_pairs),
        n_tiles=int(ok.sum()),
        method="photon_transfer" if len(flat_pairs) > 1 else "pair",
        levels_adu=levels,
    )


def compare_with_header(name, measured, header_value, *, factor=1.25, unit=""):
    """A warning message when a measured detector value disagrees with the header's.

    Parameters
    ----------
    name : str
        What is compared, e.g. ``'gain'`` or ``'read noise'``.
    measured, header_value : float or None
        The measured value and the header's, in the same unit.
    factor : float
        Largest accepted ratio ``max(measured / header, header / measured)``. The default
        1.25 accepts the spread of nominal (manufacturer) values around a camera's true
        gain and read noise, typically 10-20 %, while catching a wrong keyword, a header
        written for another readout mode or binning, or ADU/e- written as e-/ADU (on the
        M51 night the photon transfer gives about 1.3 e-/ADU against the header's 2.4).
    unit : str
        Unit named in the message.

    Returns
    -------
    str or None
        The message (naming both values and the ratio), or None when they agree, or when
        either value is missing or not positive (nothing to compare).
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, not {factor}")
    try:
        m, h = float(measured), float(header_value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(m) and math.isfinite(h) and m > 0 and h > 0):
        return None
    ratio = m / h
    if max(ratio, 1 / ratio) <= factor:
        return None
    u = f" {unit}" if unit else ""
    msg = (
        f"measured {name} {m:.4g}{u} differs from the header's {h:.4g}{u} "
        f"by a factor {ratio:.3g} (more than {factor:g})"
    )
    if name.lower().startswith("gain") and max(m * h, 1 / (m * h)) <= factor:
        msg += "; the header value looks like the inverse (ADU/e- instead of e-/ADU)"
    return msg


def _tiles(shape, region, tile, max_tiles):
    """Slices of a regular grid of tiles inside the central ``region`` of ``shape``."""
    if not 0 < region <= 1:
        raise ValueError(f"region must be in (0, 1], not {region}")
    ny, nx = shape
    h, w = max(int(ny * region), 1), max(int(nx * region), 1)
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    t = int(min(tile, h, w))
    if t < 4:
        raise ValueError(f"frame {shape} too small for tiles of {tile} px in region {region}")
    n_y, n_x = h // t, w // t
    # Thin the grid evenly to at most max_tiles.
    while n_y * n_x > max_tiles:
        if n_y >= n_x:
            n_y -= 1
        else:
            n_x -= 1
    ys = y0 + np.linspace(0, h - t, n_y).round().astype(int) if n_y > 1 else [y0 + (h - t) // 2]
    xs = x0 + np.linspace(0, w - t, n_x).round().astype(int) if n_x > 1 else [x0 + (w - t) // 2]
    return [(slice(y, y + t), slice(x, x + t)) for y in ys for x in xs]


def _pair_stats(a, b, sl, bad, clip):
    """``(mean a + mean b, var(a - b))`` in one tile, over the unmasked, unclipped pixels."""
    ta = np.asarray(a[sl], dtype=np.float64)
    tb = np.asarray(b[sl], dtype=np.float64)
    good = np.isfinite(ta) & np.isfinite(tb)
    if bad is not None:
        good &= ~bad[sl]
    ta, tb = ta[good], tb[good]
    diff = ta - tb
    keep = np.ones(diff.size, bool)
    for _ in range(2):
        d = diff[keep]
        if d.size < 16:
            return (math.nan, math.nan)
        centre = np.median(d)
        scale = 1.482602218505602 * np.median(np.abs(d - centre))
        if scale == 0:
            scale = d.std()
        keep = np.abs(diff - centre) <= clip * scale
    d = diff[keep]
    var = d.var(ddof=1) / _truncated_variance(clip)
    return (ta[keep].mean() + tb[keep].mean(), var)


def _truncated_variance(k):
    """Variance of a unit Gaussian truncated at +-k sigma."""
    p = special.erf(k / math.sqrt(2))
    return 1 - 2 * k * math.exp(-k * k / 2) / math.sqrt(2 * math.pi) / p


def _ptc_gain(signal, shot):
    """Gain (e-/ADU) of ``shot = signal / gain`` fitted through the origin.

    The variance of a variance estimate grows as its square, so the points are weighted by
    ``1 / shot**2`` (``1 / signal**2`` for the model): the slope is then the mean of
    ``shot / signal``, and one pair gives exactly ``signal / shot``.
    """
    signal, shot = np.asarray(signal, float), np.asarray(shot, float)
    ok = np.isfinite(signal) & np.isfinite(shot) & (signal > 0)
    if not ok.any():
        return math.nan
    slope = np.mean(shot[ok] / signal[ok])  # 1 / gain
    return 1 / slope if slope > 0 else math.nan


def _sem(values):
    """Standard error of the mean of the finite values (NaN with fewer than 2)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
