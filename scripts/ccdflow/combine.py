"""Robust combination of a stack of frames, in row bands under a memory limit.

The clip is an iterative rejection around the median. With 3 to 10 frames a clip
whose spread is the sample standard deviation cannot reject a single outlier (the
outlier inflates the spread it is measured against), so the spread is robust:
``winsorized`` (default; the standard deviation after clamping values to median +-
1.5 sigma, iterated, times 1.134, as Siril does; :func:`winsorized_std`) or
``mad_std``. Measured on Gaussian noise (``tests/unit/test_combine.py``), a 3-sigma
clip with the per-pixel MAD discards about 9 % of good values at N = 5 and leaves the
result 14 % noisier than the mean; the winsorized spread discards 3 % and costs 6 %;
both reject every cosmic ray. Methods:

``sigma_clip``
    iterative clip around the median, then the mean of the survivors;
``sigma_clip_median``
    the same clip, then the median of the survivors (flats);
``median``, ``mean``
    no rejection;
``minmax``
    drop the ``nlow`` lowest and ``nhigh`` highest values per pixel, mean of the rest.

One clip pass, per pixel, on the values not yet rejected: centre ``c`` = their median,
spread ``s`` from them; a value ``x`` is rejected when ``c - x > sigma_low * s`` or
``x - c > sigma_high * s``. Passes repeat until nothing changes or ``maxiters``. All in
float32, like the data.

How it is fast: the values of each pixel are sorted once (a sorting network over the
frame axis, which is vectorised across pixels). A clip only removes values from the
two ends of a sorted vector, so the survivors of every pass are a contiguous index
range ``[lo, hi)``: the median is read off the middle of the range and the spread is
computed with row operations masked to the range. Only the pixels that changed in
the last pass are processed again. The pixels are processed in chunks of about
:data:`_CHUNK_VALUES` values, so the temporaries stay small and in cache.

The uncertainty of the result is the standard error: the standard deviation of the
surviving values (corrected for its small-sample bias) over sqrt(n), times sqrt(pi/2)
for medians. With few frames it is a noisy per-pixel estimate.
"""

__all__ = ["METHODS", "SPREADS", "band_rows", "combine_stack", "reject", "winsorized_std"]

import functools
import warnings

import numpy as np

METHODS = ("sigma_clip", "sigma_clip_median", "median", "mean", "minmax")
SPREADS = ("winsorized", "mad_std", "std")

#: Values (frames x pixels) processed at once: about 4 MB of float32, so the
#: temporaries of the kernel stay in cache and do not grow with the band.
_CHUNK_VALUES = 2**20

#: Largest frame count sorted with a sorting network (faster than ``np.sort`` there).
_NETWORK_MAX = 32

#: Fewest columns sharing a survivor range that are processed as a dense block.
_DENSE_MIN = 256

_MAD_TO_SIGMA = np.float32(1.482602218505602)
_WINSOR_CLAMP = np.float32(1.5)
_WINSOR_GAIN = np.float32(1.134)
_WINSOR_ROUNDS = 5


def winsorized_std(data, axis=0, iterations=_WINSOR_ROUNDS):
    """Robust standard deviation along ``axis`` (NaN = missing).

    Starts from the MAD (or the sample standard deviation where the MAD is 0, as it
    often is for integer data with few frames), then repeatedly clamps the values to
    median +- 1.5 sigma and takes 1.134 x their standard deviation, which is unbiased
    for Gaussian data. This is the definition; the clip computes the same quantity
    on sorted values (see the module docstring).
    """
    data = np.asarray(data, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN or single-value pixels
        centre = np.nanmedian(data, axis=axis, keepdims=True)
        sigma = _MAD_TO_SIGMA * np.nanmedian(np.abs(data - centre), axis=axis, keepdims=True)
        sigma = np.where(sigma > 0, sigma, np.nanstd(data, axis=axis, ddof=1, keepdims=True))
        for _ in range(iterations):
            clamped = np.clip(data, centre - 1.5 * sigma, centre + 1.5 * sigma)
            new = _WINSOR_GAIN * np.nanstd(clamped, axis=axis, ddof=1, keepdims=True)
            sigma = np.where(new > 0, new, sigma)
    return np.squeeze(sigma, axis=axis)


def _c4(n):
    """Bias of the sample standard deviation of n Gaussian values: E[s] = c4(n) sigma."""
    from scipy.special import gammaln  # here: importing scipy costs per-frame jobs 0.15 s

    n = np.maximum(np.asarray(n, dtype=np.float64), 2)
    return np.exp(0.5 * np.log(2 / (n - 1)) + gammaln(n / 2) - gammaln((n - 1) / 2))


def band_rows(n_frames, nx, ny, mem_limit_mb, bytes_per_value=4, overhead=6):
    """Rows per band so that a band of ``n_frames`` frames fits in ``mem_limit_mb``.

    ``overhead`` counts the band and what the caller holds next to it (masks,
    uncertainties) as multiples of the band itself; the temporaries of the kernel are
    bounded by :data:`_CHUNK_VALUES` and do not scale with the band.
    """
    per_row = n_frames * nx * bytes_per_value * overhead
    rows = int(mem_limit_mb * 2**20 // max(per_row, 1))
    return max(1, min(ny, rows))


# --- sorting along the frame axis -------------------------------------------------


@functools.cache
def _network(n):
    """Comparators ``(i, j)``, i < j, of Batcher's odd-even merge sort of ``n`` values.

    Built for the next power of two; comparators that touch an index >= n are dropped,
    which is exact when the missing values are +inf.
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def _sort_frames(s):
    """``s`` (``(n, npix)`` float32, no NaN) sorted along axis 0; ``s`` is overwritten."""
    n = s.shape[0]
    if n > _NETWORK_MAX:
        return np.ascontiguousarray(np.sort(s.T, axis=1).T)
    if n < 2:
        return s
    rows = list(s)
    spare = np.empty_like(rows[0])
    for i, j in _network(n):
        np.minimum(rows[i], rows[j], out=spare)
        np.maximum(rows[i], rows[j], out=rows[j])
        rows[i], spare = spare, rows[i]
    return np.stack(rows)


def _columns(s, index):
    """Columns ``index`` of ``s``, C-contiguous (``s[:, index]`` is not, and the
    reductions along axis 0 are then 20x slower)."""
    return np.take(s, index, axis=1)


def _pick(s, index):
    """``s[index[p], p]`` for every column p of the 2-D array ``s``."""
    return s[np.clip(index, 0, s.shape[0] - 1), np.arange(s.shape[1])]


def _median_sorted(s, lo, m):
    """Median of ``s[lo:lo+m]`` per column of the column-sorted ``s`` (float32, like
    ``np.median``: the mean of the two middle values for even ``m``)."""
    a = _pick(s, lo + (m - 1) // 2)
    b = _pick(s, lo + m // 2)
    return np.where(m % 2 == 1, a, (a + b) * np.float32(0.5))


def _median_rows(s):
    """Median of every column of the column-sorted ``s`` (all rows)."""
    k = s.shape[0]
    if k % 2:
        return s[k // 2].copy()
    return (s[k // 2 - 1] + s[k // 2]) * np.float32(0.5)


def _smallest_deviation(s, centre, k):
    """k-th smallest (from 0) of ``|s - centre|`` per column of the column-sorted ``s``.

    The k + 1 values nearest the centre are consecutive in sorted order, so this is
    the smallest, over windows ``s[a:a+k+1]``, of the larger deviation of its ends.
    """
    m = s.shape[0]
    best = np.maximum(centre - s[0], s[k] - centre)
    for a in range(1, m - k):
        np.minimum(best, np.maximum(centre - s[a], s[a + k] - centre), out=best)
    return best


# --- the clip on sorted values ----------------------------------------------------


def _count(flags):
    """Number of True per column of a 2-D boolean array (summing bools as int64 is
    8x slower)."""
    dtype = np.uint8 if flags.shape[0] < 256 else np.uint32
    return flags.view(np.uint8).sum(axis=0, dtype=dtype).astype(np.intp)


def _masked(values, inside):
    return values if inside is None else np.where(inside, values, 0)


def _std(dev, inside, mf, ddof):
    """Standard deviation of ``dev`` where ``inside`` (None: everywhere) per column."""
    mean = _masked(dev, inside).sum(axis=0) / mf
    d = _masked(dev - mean, inside)
    return np.sqrt((d * d).sum(axis=0) / (mf - ddof))


def _spread(sa, dev, inside, centre, mf, spread):
    """Spread of the survivors around their median ``centre``.

    ``sa`` holds column-sorted values and ``dev = sa - centre``; the survivors are
    where ``inside`` (None: every row). Bit for bit the same either way.
    """
    if spread == "std":  # as astropy's sigma_clip: population standard deviation
        return _std(dev, inside, mf, ddof=0)
    if inside is None:
        m = sa.shape[0]
        mad = _smallest_deviation(sa, centre, (m - 1) // 2)
        if m % 2 == 0:
            mad = (mad + _smallest_deviation(sa, centre, m // 2)) * np.float32(0.5)
    else:
        absdev = np.abs(dev)
        absdev[~inside] = np.inf
        mad = _median_sorted(_sort_frames(absdev), np.zeros(mf.shape, np.intp), mf.astype(int))
    sigma = _MAD_TO_SIGMA * mad
    if spread == "mad_std":
        return sigma
    zero = np.flatnonzero(~(sigma > 0))
    if zero.size:
        within = None if inside is None else np.take(inside, zero, axis=1)
        sigma[zero] = _std(np.take(dev, zero, axis=1), within, mf[zero], ddof=1)
    clamped = np.empty_like(dev)
    for _ in range(_WINSOR_ROUNDS):
        # The values are clamped to centre +- 1.5 sigma as rounded in float32: with a
        # spread 1e-3 of the level (flats) that rounding moves the result by 1e-5.
        half = _WINSOR_CLAMP * sigma
        np.maximum(dev, (centre - half) - centre, out=clamped)  # np.clip is 5x slower
        np.minimum(clamped, (centre + half) - centre, out=clamped)  # and +inf to the bound
        if inside is not None:
            clamped *= inside
        total = clamped.sum(axis=0)
        np.square(clamped, out=clamped)
        var = (clamped.sum(axis=0) - total * total / mf) / (mf - 1)
        new = _WINSOR_GAIN * np.sqrt(np.maximum(var, 0))
        sigma = np.where(new > 0, new, sigma)
    return sigma


def _clip_pass(sa, lo, m, low, high, spread, dense):
    """Values rejected below and above the centre, per column, by one clip pass.

    ``dense``: ``sa`` holds exactly the survivors (every column has ``m`` of them);
    otherwise they are rows ``lo:lo+m`` of column-sorted ``sa``.
    """
    if dense:
        inside = None
        centre = _median_rows(sa)
    else:
        frame = np.arange(sa.shape[0])[:, None]
        inside = (frame >= lo) & (frame < lo + m)
        centre = _median_sorted(sa, lo, m)
    with np.errstate(invalid="ignore"):  # inf - inf beyond the good values
        dev = sa - centre
        sigma = _spread(sa, dev, inside, centre, m.astype(np.float32), spread)
        below = -dev > low * sigma
        above = dev > high * sigma
    if inside is not None:
        below &= inside
        above &= inside
    return _count(below), _count(above)


def _by_range(func, s, columns, lo, m):
    """``func(block, lo, m, dense)`` over the given columns of column-sorted ``s``.

    Columns that share a survivor range ``(lo, m)`` with at least :data:`_DENSE_MIN`
    others (on the first pass, usually all) go as one dense block of exactly their
    survivors, without masking; the rest together, with their ranges. ``columns``
    None means all. ``func`` returns a tuple of per-column arrays, assembled here.
    """
    n, npix = s.shape
    count = npix if columns is None else columns.size
    key = lo * (n + 1) + m
    if key[0] == key[-1] and (key == key[0]).all():
        groups = [(int(key[0]), slice(None))]
        rest = np.zeros(0, np.intp)
    else:
        counts = np.bincount(key)
        big = np.flatnonzero(counts >= _DENSE_MIN)
        groups = [(int(k), np.flatnonzero(key == k)) for k in big]
        rest = np.flatnonzero(~np.isin(key, big))
    parts = []
    for k, where in groups:
        lo0, m0 = divmod(k, n + 1)
        if m0 == 0:
            rest = np.union1d(rest, np.arange(count)[where])
            continue
        block = s[lo0 : lo0 + m0]
        if isinstance(where, np.ndarray):
            block = _columns(block, where if columns is None else columns[where])
        elif columns is not None:
            block = _columns(block, columns)
        parts.append((where, func(block, None, m[where], True)))
    if rest.size:
        block = _columns(s, rest if columns is None else columns[rest])
        parts.append((rest, func(block, lo[rest], m[rest], False)))
    out = tuple(np.empty(count, r.dtype) for r in parts[0][1])
    for where, result in parts:
        for o, r in zip(out, result, strict=True):
            o[where] = r
    return out


def _clip_ranges(s, ngood, sigma_low, sigma_high, maxiters, spread):
    """Survivor ranges ``[lo, hi)`` of the iterative clip of column-sorted ``s``."""
    npix = s.shape[1]
    lo = np.zeros(npix, np.intp)
    hi = ngood.astype(np.intp)
    active = np.flatnonzero(ngood >= 2)  # one value alone is never rejected
    low, high = np.float32(sigma_low), np.float32(sigma_high)

    def one_pass(block, lo, m, dense):
        return _clip_pass(block, lo, m, low, high, spread, dense)

    done = 0
    while active.size and (maxiters is None or done < maxiters):
        done += 1
        a = lo[active]
        m = hi[active] - a
        columns = None if active.size == npix else active
        nlow, nhigh = _by_range(one_pass, s, columns, a, m)
        lo[active] = a + nlow
        hi[active] = a + m - nhigh
        active = active[(nlow + nhigh > 0) & (m - nlow - nhigh >= 2)]
    return lo, hi


def _stats(block, lo, m, dense, median):
    """Mean (or median) and sample standard deviation of the survivors per column."""
    mf = m.astype(np.float32)
    inside = None
    if not dense:
        frame = np.arange(block.shape[0])[:, None]
        inside = (frame >= lo) & (frame < lo + m)
    if not median:
        value = _masked(block, inside).sum(axis=0) / mf
    elif dense:
        value = _median_rows(block)
    else:
        value = _median_sorted(block, lo, m)
    return value, _std(block, inside, mf, ddof=1)


def _chunks(stack, mask):
    """Pixel chunks: ``(p0, p1, sorted values, bad)``; bad values sort last as +inf."""
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    flat_mask = None if mask is None else mask.reshape(n, -1)
    step = max(1, _CHUNK_VALUES // max(n, 1))
    for p0 in range(0, flat.shape[1], step):
        p1 = min(flat.shape[1], p0 + step)
        values = np.array(flat[:, p0:p1], dtype=np.float32)
        bad = ~np.isfinite(values)
        if flat_mask is not None:
            bad |= flat_mask[:, p0:p1]
        values[bad] = np.inf
        yield p0, p1, _sort_frames(values), bad


def _ranges(s, bad, method, sigma_low, sigma_high, maxiters, spread, nlow, nhigh):
    """Survivor range ``[lo, hi)`` per column of the sorted chunk ``s``."""
    n = s.shape[0]
    ngood = n - _count(bad)
    if method in ("sigma_clip", "sigma_clip_median") and n >= 3:
        return _clip_ranges(s, ngood, sigma_low, sigma_high, maxiters, spread)
    if method == "minmax":
        hi = ngood - nhigh
        return np.minimum(nlow, hi), hi
    return np.zeros_like(ngood), ngood


def _check(method, spread, n, nlow, nhigh):
    if method not in METHODS:
        raise ValueError(f"combine method {method!r} is not one of {METHODS}")
    if spread not in SPREADS:
        raise ValueError(f"clip spread {spread!r} is not one of {SPREADS}")
    if method == "minmax" and nlow + nhigh >= n:
        raise ValueError(f"minmax drops {nlow}+{nhigh} of only {n} frames")


def reject(
    stack,
    mask=None,
    method="sigma_clip",
    sigma_low=3.0,
    sigma_high=3.0,
    maxiters=5,
    spread="winsorized",
    nlow=1,
    nhigh=1,
):
    """Values a combination must not use: the mask, non-finite values, the rejection.

    Parameters are those of :func:`combine_stack`. ``minmax`` drops by rank (of equal
    values, the first frames are dropped first); ``mean`` and ``median`` reject
    nothing.

    Returns
    -------
    numpy.ndarray of bool
        Same shape as ``stack``; True for a value not to use.
    """
    stack = np.asarray(stack, dtype=np.float32)
    n = stack.shape[0]
    _check(method, spread, n, nlow, nhigh)
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    bad = ~np.isfinite(stack)
    if mask is not None:
        bad |= mask
    if method == "minmax":
        order = np.argsort(np.where(bad, np.inf, stack), axis=0, kind="stable")
        ngood = (~bad).sum(axis=0)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(n).reshape(-1, *([1] * (stack.ndim - 1))), 0)
        return bad | (rank < nlow) | (rank >= (ngood - nhigh)[None])
    if not method.startswith("sigma_clip") or n < 3:
        return bad
    params = dict(sigma_low=sigma_low, sigma_high=sigma_high, maxiters=maxiters)
    flat_values, flat_bad = stack.reshape(n, -1), bad.reshape(n, -1)
    for p0, p1, s, chunk_bad in _chunks(stack, mask):
        lo, hi = _ranges(s, chunk_bad, method, **params, spread=spread, nlow=0, nhigh=0)
        kept = hi > lo
        first = np.where(kept, _pick(s, lo), np.inf)
        last = np.where(kept, _pick(s, hi - 1), -np.inf)
        values = flat_values[:, p0:p1]
        with np.errstate(invalid="ignore"):
            flat_bad[:, p0:p1] |= ~((values >= first) & (values <= last))
    return bad


def combine_stack(
    stack,
    mask=None,
    method="sigma_clip",
    sigma_low=3.0,
    sigma_high=3.0,
    maxiters=5,
    spread="winsorized",
    nlow=1,
    nhigh=1,
):
    """Combine frames along axis 0.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(n, ny, nx)`` values, any unit (the result has the same unit). Non-finite
        values are not used.
    mask : numpy.ndarray of bool, optional
        True where a value must not be used. Not modified.
    method : str
        One of :data:`METHODS`.
    sigma_low, sigma_high : float
        Clipping thresholds in units of the spread (sigma methods).
    maxiters : int or None
        Maximum clipping passes (None: until nothing changes).
    spread : {'winsorized', 'mad_std', 'std'}
        Spread estimator of the clip (see :data:`SPREADS`).
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
    stack = np.asarray(stack, dtype=np.float32)
    n = stack.shape[0]
    _check(method, spread, n, nlow, nhigh)
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    params = dict(sigma_low=sigma_low, sigma_high=sigma_high, maxiters=maxiters, spread=spread)
    npix = int(np.prod(stack.shape[1:]))
    data = np.empty(npix, np.float32)
    unc = np.empty(npix, np.float32)
    nused = np.empty(npix, np.int16)
    median = method in ("median", "sigma_clip_median")
    factor = np.float32(np.sqrt(np.pi / 2) if median else 1.0)
    c4 = _c4(np.arange(n + 1)).astype(np.float32)

    def stats(block, lo, m, dense):
        return _stats(block, lo, m, dense, median)

    for p0, p1, s, bad in _chunks(stack, mask):
        lo, hi = _ranges(s, bad, method, **params, nlow=nlow, nhigh=nhigh)
        m = np.maximum(hi - lo, 0)
        with np.errstate(invalid="ignore", divide="ignore"):  # no survivors; one
            value, std = _by_range(stats, s, None, lo, m)
            err = factor * std / c4[m] / np.sqrt(m.astype(np.float32))
        data[p0:p1] = np.where(m > 0, value, 0)
        unc[p0:p1] = np.where(np.isfinite(err), err, 0)
        nused[p0:p1] = m
    shape = stack.shape[1:]
    return data.reshape(shape), unc.reshape(shape), nused.reshape(shape)
