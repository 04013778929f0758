"""Illumination model of a flat: a low-order 2-D polynomial, and the sky/dome combination.

A flat is the product of a smooth illumination (vignetting, the lamp's or the sky's
gradient) and the pixel-to-pixel response. A dome flat has the right pixel response but an
illumination that differs from the night sky's; a twilight (sky) flat has the sky's
illumination but few counts and stars. The lecture's combination keeps the best of both::

    combined = dome / model(dome) * model(sky)

where ``model`` is a low-order polynomial fit (`fit_illumination`).

The fit
-------
The flat is binned in blocks of ``bin`` x ``bin`` pixels (median of the unmasked pixels of
each block, so defects, stars and cosmic rays do not pull it), and a
``astropy.modeling.models.Polynomial2D`` of total degree ``degree`` is fitted to the block
medians by linear least squares (``LinearLSQFitter``), with ``sigma``-clipping of blocks
(``FittingWithOutlierRemoval``, 3 iterations). Coordinates are normalised to [-1, 1]
across the frame (``u`` along x, ``v`` along y) so the fit is well conditioned for any
frame size; coefficients refer to them. The model is evaluated on the full grid by
broadcasting a row and a column (a transient float64 image, 128 MB for 4k x 4k), and kept
as float32. Cost: about 1.3 s of CPU for a 2k x 2k flat, half of it importing astropy.
"""

__all__ = ["IlluminationFit", "combine_sky_dome", "fit_illumination"]

import dataclasses
import math
import warnings

import numpy as np

from ccdflow.calibrate import central_region

_MAD_TO_STD = 1.482602218505602


@dataclasses.dataclass(frozen=True)
class IlluminationFit:
    """Result of `fit_illumination`.

    Attributes
    ----------
    model : numpy.ndarray
        float32 model image, in the unit of the flat.
    residual_rms : float
        Robust rms (1.4826 x MAD) of ``flat / model - 1`` over the unmasked pixels
        (fraction): the pixel-to-pixel structure and noise the model does not describe.
    binned_residual_rms : float
        rms of ``block median / model - 1`` over the blocks kept by the fit (fraction): how
        well the low-order shape is described, at the resolution of the blocks.
    degree : int
        Total degree of the polynomial.
    n_blocks, n_rejected : int
        Blocks with data, and blocks clipped out of the fit.
    coefficients : dict
        Polynomial coefficients by astropy's names (``c0_0``, ``c1_0``, ...) in the
        normalised coordinates.
    """

    model: np.ndarray
    residual_rms: float
    binned_residual_rms: float
    degree: int
    n_blocks: int
    n_rejected: int
    coefficients: dict

    def summary(self):
        """JSON-friendly dict of everything but the model image."""
        return {
            "residual_rms": self.residual_rms,
            "binned_residual_rms": self.binned_residual_rms,
            "degree": self.degree,
            "n_blocks": self.n_blocks,
            "n_rejected": self.n_rejected,
            "coefficients": dict(self.coefficients),
        }


def fit_illumination(flat, mask=None, *, degree=3, bin=16, sigma=3.0):
    """Low-order 2-D polynomial fit of a flat.

    Parameters
    ----------
    flat : array
        Flat field (any unit, usually normalised to 1).
    mask : array or None
        Pixels to ignore (non-zero); non-finite pixels are ignored too.
    degree : int
        Total degree of the polynomial (0 to 6). 3 describes the vignetting of a small
        telescope; higher degrees start following dust shadows.
    bin : int
        Block side (px) of the binning.
    sigma : float
        Clipping limit (standard deviations of the block residuals).

    Returns
    -------
    IlluminationFit
    """
    from astropy.modeling import fitting, models
    from astropy.stats import sigma_clip

    if not 0 <= int(degree) <= 6:
        raise ValueError(f"degree must be 0 to 6, not {degree}")
    flat = np.asarray(flat, dtype=np.float32)
    bad = ~np.isfinite(flat)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    medians, yc, xc = _block_medians(flat, bad, int(bin))
    have = np.isfinite(medians)
    n_terms = (degree + 1) * (degree + 2) // 2
    if have.sum() < 2 * n_terms:
        raise ValueError(
            f"only {have.sum()} blocks of {bin} px with data: too few for degree {degree} "
            f"({n_terms} coefficients); lower bin or degree"
        )
    ny, nx = flat.shape
    u, v = _normalised(xc, nx), _normalised(yc, ny)
    uu, vv = np.meshgrid(u, v)
    fitter = fitting.FittingWithOutlierRemoval(
        fitting.LinearLSQFitter(), sigma_clip, niter=3, sigma=sigma
    )
    poly, clipped = fitter(models.Polynomial2D(degree), uu[have], vv[have], medians[have])
    kept = ~np.asarray(clipped, bool)  # astropy returns the outliers as a boolean mask
    block_resid = medians[have] / poly(uu[have], vv[have]) - 1
    model = poly(_normalised(np.arange(nx), nx)[None, :], _normalised(np.arange(ny), ny)[:, None])
    model = np.broadcast_to(model, flat.shape).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = (flat / model - 1)[~bad]
    step = max(1, resid.size // 1_000_000)
    resid = resid[::step]
    return IlluminationFit(
        model=model,
        residual_rms=float(_MAD_TO_STD * np.median(np.abs(resid - np.median(resid)))),
        binned_residual_rms=float(math.sqrt(np.mean(block_resid[kept] ** 2))),
        degree=int(degree),
        n_blocks=int(have.sum()),
        n_rejected=int((~kept).sum()),
        coefficients={n: float(getattr(poly, n).value) for n in poly.param_names},
    )


def combine_sky_dome(dome, sky, *, dome_mask=None, sky_mask=None, degree=3, bin=16):
    """The dome flat's pixel-to-pixel structure with the sky flat's illumination.

    ``dome / model(dome) * model(sky)``, normalised to a median of 1 in the central half of
    the frame (as a master flat).

    Parameters
    ----------
    dome, sky : array
        Master dome flat and master sky (twilight) flat of one filter, same shape.
    dome_mask, sky_mask : array or None
        Pixels to ignore in each fit (non-zero).
    degree, bin : int
        See `fit_illumination` (the same for both flats).

    Returns
    -------
    flat : numpy.ndarray
        float32 combined flat. Pixels where the dome model is not positive are NaN (a
        caller masks them like any flat pixel below its floor).
    info : dict
        ``{'dome': ..., 'sky': ...}``: the `IlluminationFit.summary` of each fit.
    """
    if np.shape(dome) != np.shape(sky):
        raise ValueError(f"dome and sky flats differ in shape: {np.shape(dome)}, {np.shape(sky)}")
    fd = fit_illumination(dome, dome_mask, degree=degree, bin=bin)
    fs = fit_illumination(sky, sky_mask, degree=degree, bin=bin)
    with np.errstate(invalid="ignore", divide="ignore"):
        flat = np.where(fd.model > 0, np.asarray(dome, np.float32) / fd.model, np.nan) * fs.model
    centre = flat[central_region(flat.shape)]
    flat /= np.nanmedian(centre)
    return flat.astype(np.float32), {"dome": fd.summary(), "sky": fs.summary()}


def _normalised(coord, n):
    """Pixel coordinate -> [-1, 1] across ``n`` pixels (pixel centres at integers)."""
    return (np.asarray(coord, np.float64) - (n - 1) / 2) / max((n - 1) / 2, 1)


def _block_medians(image, bad, b):
    """Medians of the good pixels of ``b`` x ``b`` blocks (NaN where none) and the block
    centres ``(y, x)`` in pixels (the last, partial blocks included)."""
    ny, nx = image.shape
    my, mx = -(-ny // b), -(-nx // b)
    padded = np.full((my * b, mx * b), np.nan, np.float32)
    padded[:ny, :nx] = np.where(bad, np.nan, image)
    blocks = padded.reshape(my, b, mx, b).transpose(0, 2, 1, 3).reshape(my, mx, b * b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        medians = np.nanmedian(blocks, axis=2)
    # Centre of each block's pixels that are inside the frame.
    yc = (np.arange(my) * b + np.minimum(np.arange(my) * b + b, ny) - 1) / 2
    xc = (np.arange(mx) * b + np.minimum(np.arange(mx) * b + b, nx) - 1) / 2
    return medians, yc, xc
