"""Robust combination of a stack of frames, in row bands under a memory limit.

The kernel is ``astropy.stats.sigma_clip`` (centre: median; spread: MAD-based standard
deviation by default). With 3 to 10 frames a clip whose spread is the sample standard
deviation barely rejects anything (the outlier inflates the spread it is measured
against), so the default spread is ``mad_std``. Methods:

``sigma_clip``
    iterative clip around the median, then the mean of the survivors;
``sigma_clip_median``
    the same clip, then the median of the survivors (flats);
``median``, ``mean``
    no rejection;
``minmax``
    drop the ``nlow`` lowest and ``nhigh`` highest values per pixel, mean of the rest.

The uncertainty of the result is the standard error: the standard deviation of the
surviving values over sqrt(n) (times sqrt(pi/2) for medians).
"""

__all__ = ["METHODS", "band_rows", "combine_stack"]

import warnings

import numpy as np

METHODS = ("sigma_clip", "sigma_clip_median", "median", "mean", "minmax")


def band_rows(n_frames, nx, ny, mem_limit_mb, bytes_per_value=4, overhead=6):
    """Rows per band so that a band of ``n_frames`` frames fits in ``mem_limit_mb``.

    ``overhead`` counts the temporaries of the kernel (mask, deviations, sorting) as
    multiples of the band itself.
    """
    per_row = n_frames * nx * bytes_per_value * overhead
    rows = int(mem_limit_mb * 2**20 // max(per_row, 1))
    return max(1, min(ny, rows))


def combine_stack(
    stack,
    mask=None,
    method="sigma_clip",
    sigma_low=3.0,
    sigma_high=3.0,
    maxiters=5,
    spread="mad_std",
    nlow=1,
    nhigh=1,
):
    """Combine frames along axis 0.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(n, ny, nx)`` values, any unit (the result has the same unit).
    mask : numpy.ndarray of bool, optional
        True where a value must not be used. Not modified.
    method : str
        One of :data:`METHODS`.
    sigma_low, sigma_high : float
        Clipping thresholds in units of the spread (sigma methods).
    maxiters : int
        Maximum clipping iterations.
    spread : {'mad_std', 'std'}
        Spread estimator of the clip.
    nlow, nhigh : int
        Values dropped per pixel by ``minmax``.

    Returns
    -------
    data : numpy.ndarray
        ``(ny, nx)`` float32 combined image; 0 where no value survived.
    uncertainty : numpy.ndarray
        float32 standard error of ``data``.
    nused : numpy.ndarray
        int16 number of values used per pixel (0 marks no data).
    """
    if method not in METHODS:
        raise ValueError(f"combine method {method!r} is not one of {METHODS}")
    stack = np.asarray(stack, dtype=np.float32)
    n = stack.shape[0]
    bad = np.zeros(stack.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if method in ("sigma_clip", "sigma_clip_median") and n >= 3:
        from astropy.stats import sigma_clip

        clipped = sigma_clip(
            np.ma.MaskedArray(stack, mask=bad),
            sigma_lower=sigma_low,
            sigma_upper=sigma_high,
            maxiters=maxiters,
            cenfunc="median",
            stdfunc=spread,
            axis=0,
            masked=True,
            copy=True,
        )
        bad = np.ma.getmaskarray(clipped)
    elif method == "minmax":
        if nlow + nhigh >= n:
            raise ValueError(f"minmax drops {nlow}+{nhigh} of only {n} frames")
        order = np.argsort(np.where(bad, np.inf, stack), axis=0)
        ngood = (~bad).sum(axis=0)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(n)[:, None, None], axis=0)
        bad = bad | (rank < nlow) | (rank >= (ngood - nhigh)[None])
    values = np.where(bad, np.nan, stack)
    nused = (~bad).sum(axis=0).astype(np.int16)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: handled below
        if method in ("median", "sigma_clip_median"):
            data = np.nanmedian(values, axis=0)
            factor = np.sqrt(np.pi / 2)
        else:
            data = np.nanmean(values, axis=0)
            factor = 1.0
        std = np.nanstd(values, axis=0, ddof=1)
        unc = factor * std / np.sqrt(nused)
    data = np.where(nused > 0, data, 0).astype(np.float32)
    unc = np.where(np.isfinite(unc), unc, 0).astype(np.float32)
    return data, unc, nused
