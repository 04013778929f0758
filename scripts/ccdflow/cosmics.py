"""Cosmic-ray detection and cleaning of one frame (L.A.Cosmic, via astroscrappy).

Units
-----
``data`` is in the unit that ``gain`` converts to electrons: a calibrated frame already in
electrons takes ``gain=1``, a frame in ADU takes the detector gain (e-/ADU). ``read_noise`` is
always in electrons, ``saturation`` in the unit of ``data``. This is astroscrappy's own
convention (it works on ``indat * gain``, with ``readnoise`` in e-); this module converts the
frame to electrons itself and calls astroscrappy with ``gain=1``, so every threshold (also
astroscrappy's ``satlevel``, which it compares with ``indat * gain``) is in electrons.

What is added to plain astroscrappy
-----------------------------------
- Pre-masked pixels (any mask bit, or a non-finite value) go to astroscrappy's ``inmask``:
  they are neither flagged nor used to clean their neighbours. astroscrappy grows that mask
  by one pixel, so pixels touching a masked pixel are not flagged either; around
  ``bits.SATURATED`` pixels a 4-pixel margin is excluded, as astroscrappy does around the
  saturated stars it finds itself.
- The frame is padded by reflection: astroscrappy never flags (nor cleans) the outer two rows
  and columns of the array it is given.
- Star protection (``star_noise``): the detection noise model is
  ``S + RN**2 + (star_noise * (S - B))**2`` (e-**2; ``S`` the pixel value, ``B`` the local
  background, the last term only above it). With the plain Poisson model the Laplacian of a
  bright, well-sampled star (FWHM 3 px, peak 1e4 e- and more) exceeds ``sigclip`` in its core
  and inner wings, where the fine-structure image is <= 0 and is clipped to 0.01, so
  ``objlim`` cannot protect it: astroscrappy flags whole star cores. The extra term is a
  "scale noise" (IRAF's ``snoise``) for detection only; the sky keeps the plain model, so
  cosmic rays on the sky are found as before (those on bright stars mostly are not: a
  single frame cannot tell them apart; the stack's rejection removes them).
- Pixels far below the local background (over-subtracted hot pixels, a cosmic ray left in a
  master dark) are not searched: L.A.Cosmic uses the positive Laplacian, which is large
  around a negative hole, and would flag its neighbours.
- The noise is measured (differences of neighbouring pixels) and, when it is above the model
  ``sqrt(sky + RN**2)``, the model is scaled up to it: the noise of the masters, dark current
  or a header gain that is too high would otherwise make L.A.Cosmic flag noise. (On the real
  M51 frames the measured noise is 1.4x the model, and the flags drop from ~0.2 % to ~0.03 %
  of the pixels.)
- Guards that exclude a frame instead of cleaning it: a negative sky (``negative_sky``), a
  measured noise far above the model (``noise_model``: sky already subtracted, wrong gain or
  read noise), a flagged fraction above ``max_fraction`` (``cosmic_fraction``).
"""

__all__ = ["CosmicResult", "clean_cosmics"]

from dataclasses import dataclass

import numpy as np

from ccdflow import bits

#: Rows/columns added on each side (by reflection) before calling astroscrappy, which
#: leaves a 2-pixel border of the array it is given unflagged and uncleaned.
_PAD = 4
#: Side (px) of the blocks whose medians form the local background.
_BLOCK = 32
#: Every n-th row is used to measure the noise (pixel differences): plenty of pixels.
_NOISE_ROW_STEP = 4
#: Standard deviation of a unit normal truncated at +-3 sigma.
_CLIP3_STD = 0.9733
#: Pixels this many model sigmas below the local background are not searched.
_LOW_SIGMA = 10.0
#: Margin (px) around ``bits.SATURATED`` pixels excluded from detection (two 5x5 dilations,
#: astroscrappy's margin around the saturated stars it finds itself).
_SAT_MARGIN = 4


@dataclass
class CosmicResult:
    """Outcome of :func:`clean_cosmics`.

    Attributes
    ----------
    data : numpy.ndarray
        float32 data in the unit of the input: flagged pixels replaced by astroscrappy's
        clean values (mean of the unflagged, unmasked pixels of the 5x5 box), every other
        pixel equal to the input. An unmodified copy of the input when ``ok`` is False.
    mask : numpy.ndarray
        New ``bits.MASK_DTYPE`` array: the input bits, plus ``bits.COSMIC`` on the flagged
        pixels when ``ok``.
    n_flagged : int
        Pixels flagged as cosmic rays (also reported when the fraction check fails).
    fraction : float
        ``n_flagged`` / number of valid (unmasked, finite) pixels.
    ok : bool
        False when the frame must be excluded; ``data`` and ``mask`` are then not cleaned.
    reason : str
        ``''`` or a reason code: ``'cosmic_fraction'``, ``'negative_sky'``, ``'noise_model'``
        or ``'no_valid_pixels'``.
    detail : str
        The numbers behind ``reason``; a one-line summary (sky, noise, flags) when ``ok``.
    """

    data: np.ndarray
    mask: np.ndarray
    n_flagged: int
    fraction: float
    ok: bool
    reason: str
    detail: str


def clean_cosmics(
    data,
    mask,
    *,
    gain=1.0,
    read_noise,
    saturation=None,
    sigclip=4.5,
    sigfrac=0.3,
    objlim=5.0,
    niter=4,
    max_fraction=0.01,
    star_noise=0.3,
    max_noise_ratio=1.5,
):
    """Flag and clean the cosmic rays of one frame with L.A.Cosmic (astroscrappy).

    Parameters
    ----------
    data : array_like
        2-D image with its sky (not sky-subtracted), in the unit that ``gain`` converts to
        electrons: electrons for calibrated frames (``gain=1``), or ADU with the detector
        gain. Not modified.
    mask : array_like
        Mask bits of ``data`` (``bits.MASK_DTYPE``); pixels with any bit set (and non-finite
        pixels) are neither flagged nor used for cleaning. Not modified.
    gain : float
        Electrons per unit of ``data`` (1 when ``data`` is in electrons).
    read_noise : float
        Read noise in electrons, whatever the unit of ``data``.
    saturation : float, optional
        Level in the unit of ``data`` at or above which astroscrappy masks saturated stars
        (with a 4-pixel margin); None: no level (``bits.SATURATED`` pixels are excluded, with
        the same margin, in any case).
    sigclip, sigfrac, objlim, niter
        L.A.Cosmic parameters, with astroscrappy's meaning and defaults: Laplacian-to-noise
        threshold, fraction of it for the neighbours of a cosmic ray, minimum contrast to
        the fine-structure image, number of iterations.
    max_fraction : float
        Largest acceptable fraction of the valid pixels flagged; above it the frame is
        reported ``ok=False`` (reason ``'cosmic_fraction'``) and not cleaned.
    star_noise : float
        Fraction of the signal above the local background added in quadrature to the
        detection noise model (dimensionless); protects the cores of bright stars. 0 gives
        astroscrappy's plain model. The data and its uncertainty are not affected.
    max_noise_ratio : float
        Largest accepted ratio of the measured pixel noise (from differences of
        neighbouring pixels, e-) to the model ``sqrt(sky + read_noise**2)``; above it the
        frame is reported ``ok=False`` with reason ``'noise_model'`` (sky subtracted, wrong
        gain or read noise). Up to it, a measured noise above the model scales the model up.

    Returns
    -------
    CosmicResult
        New arrays; see :class:`CosmicResult`.

    Raises
    ------
    ValueError
        ``data`` is not 2-D or its shape differs from ``mask``, or ``gain`` or
        ``read_noise`` is not usable.

    Notes
    -----
    A sky (median of the valid pixels, e-) below ``-max(read_noise, 1)`` is reported
    ``ok=False`` with reason ``'negative_sky'``: astroscrappy's noise model ``S + RN**2`` is
    then negative on the sky, it clips it to 1e-5 and flags most of the frame (85 % of the
    pixels of the calibrated test frame minus twice its median).
    """
    data = np.asarray(data)
    mask = np.asarray(mask)
    if data.ndim != 2 or data.shape != mask.shape:
        raise ValueError(f"data {data.shape} and mask {mask.shape} must be 2-D of equal shape")
    gain, read_noise = float(gain), float(read_noise)
    if not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number of e- per data unit, not {gain}")
    if not (np.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"read_noise must be a non-negative number of e-, not {read_noise}")

    out_data = data.astype(np.float32, copy=True)
    out_mask = mask.astype(bits.MASK_DTYPE, copy=True)
    excluded = (mask != 0) | ~np.isfinite(out_data)
    n_valid = int(excluded.size - np.count_nonzero(excluded))

    def result(ok, reason, detail, n_flagged=0):
        fraction = n_flagged / n_valid if n_valid else 0.0
        return CosmicResult(
            out_data, out_mask, int(n_flagged), float(fraction), ok, reason, detail
        )

    if n_valid == 0:
        return result(False, "no_valid_pixels", "every pixel is masked or not finite")

    electrons = out_data * np.float32(gain)
    sky = float(np.median(electrons[~excluded]))
    if sky < -max(read_noise, 1.0):
        detail = (
            f"median sky {sky:.1f} e- is below zero by more than the read noise "
            f"({read_noise:.1f} e-): L.A.Cosmic's noise model sky + RN^2 fails"
        )
        return result(False, "negative_sky", detail)
    noise = _measured_noise(electrons, excluded)
    model = float(np.sqrt(max(sky, 0.0) + read_noise**2))
    ratio = noise / model if model > 0 else np.inf if noise > 0 else 1.0
    summary = f"sky {sky:.1f} e-, noise {noise:.2f} e- (model {model:.2f} e-)"
    if ratio > max_noise_ratio:
        detail = (
            f"{summary}: measured noise {ratio:.2f} x the model (> {max_noise_ratio}); "
            "sky subtracted, or wrong gain or read noise?"
        )
        return result(False, "noise_model", detail)

    filled = np.where(excluded, np.float32(sky), electrons)
    background = _background(filled)
    sigma = np.sqrt(np.maximum(background, 0) + np.float32(read_noise**2))
    low = ~excluded & (filled < background - np.float32(_LOW_SIGMA) * sigma)
    var = np.maximum(filled, 0) + np.float32(read_noise**2)
    if ratio > 1:  # never assume less noise than the frame has
        var *= np.float32(ratio**2)
        summary += f"; noise model scaled x{ratio:.2f}"
    if star_noise > 0:
        var += (np.float32(star_noise) * np.maximum(filled - background, 0)) ** 2
    flags, cleaned = _lacosmic(
        filled,
        var,
        excluded | low | _saturated_margin(mask),
        read_noise=read_noise,
        satlevel=np.inf if saturation is None else float(saturation) * gain,
        sigclip=sigclip,
        sigfrac=sigfrac,
        objlim=objlim,
        niter=niter,
    )
    flags &= ~excluded
    n_flagged = int(np.count_nonzero(flags))
    fraction = n_flagged / n_valid
    n_low = int(np.count_nonzero(low))
    if n_low:
        summary += f"; {n_low} pixels > {_LOW_SIGMA:g} sigma below the background not searched"
    if fraction > max_fraction:
        detail = (
            f"{n_flagged} of {n_valid} valid pixels flagged ({fraction:.3%} > "
            f"{max_fraction:.3%}); {summary}"
        )
        return result(False, "cosmic_fraction", detail, n_flagged)
    out_data[flags] = cleaned[flags] / np.float32(gain)
    out_mask[flags] |= bits.COSMIC
    return result(True, "", f"{n_flagged} pixels flagged ({fraction:.3%}); {summary}", n_flagged)


def _measured_noise(electrons, excluded):
    """Standard deviation (e-) of one pixel, from differences of horizontal neighbours.

    Differences cancel the sky and its gradients; an iterative 3-sigma clip (corrected for
    the truncation) ignores stars and cosmic rays even in crowded fields, where the MAD of
    the differences is inflated by the many steep star profiles.
    """
    rows = slice(None, None, _NOISE_ROW_STEP)
    sub, bad = electrons[rows], excluded[rows]
    diff = (sub[:, 1:] - sub[:, :-1])[~(bad[:, 1:] | bad[:, :-1])].astype(np.float64)
    if diff.size < 2:
        return 0.0
    centre = np.median(diff)
    spread = 1.482602218505602 * np.median(np.abs(diff - centre))
    for _ in range(5):
        keep = diff[np.abs(diff - centre) < 3 * spread]
        if keep.size < 2:
            break
        centre, spread = keep.mean(), keep.std() / _CLIP3_STD
    return float(spread / np.sqrt(2.0))


def _background(image):
    """Local background: median of each ``_BLOCK`` x ``_BLOCK`` block, same shape as input."""
    ny, nx = image.shape
    by, bx = -(-ny // _BLOCK), -(-nx // _BLOCK)
    full = np.pad(image, ((0, by * _BLOCK - ny), (0, bx * _BLOCK - nx)), mode="edge")
    blocks = full.reshape(by, _BLOCK, bx, _BLOCK).swapaxes(1, 2).reshape(by, bx, -1)
    medians = np.median(blocks, axis=-1).astype(np.float32)
    return np.repeat(np.repeat(medians, _BLOCK, axis=0), _BLOCK, axis=1)[:ny, :nx]


def _saturated_margin(mask):
    """Pixels within ``_SAT_MARGIN`` px (5x5 steps) of a ``bits.SATURATED`` pixel."""
    saturated = (mask & bits.SATURATED) != 0
    if not saturated.any():
        return saturated
    from scipy import ndimage

    box = np.ones((5, 5), bool)
    return ndimage.binary_dilation(saturated, box, iterations=_SAT_MARGIN // 2)


def _lacosmic(electrons, variance, excluded, *, read_noise, satlevel, **params):
    """astroscrappy on the frame padded by reflection (e-); (flags, cleaned), unpadded."""
    import astroscrappy

    def padded(a):
        return np.ascontiguousarray(np.pad(a, _PAD, mode="reflect"))

    flags, cleaned = astroscrappy.detect_cosmics(
        padded(electrons),
        inmask=padded(excluded),
        invar=padded(variance),
        gain=1.0,
        readnoise=read_noise,
        satlevel=satlevel,
        cleantype="meanmask",
        **params,
    )
    inner = (slice(_PAD, -_PAD), slice(_PAD, -_PAD))
    return flags[inner], cleaned[inner]
