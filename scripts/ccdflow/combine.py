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

How it is computed: the values of each pixel are sorted once (a sorting network
over the frame axis). A clip only removes values from the two ends of a sorted
vector, so the survivors of every pass are a contiguous index range ``[lo, hi)``: the
median is read off the middle of the range and the spread is computed over the range,
every sum in sorted order. Two implementations do exactly that, with the same float32
operations in the same order, so their results are bit for bit the same
(``tests/unit/test_combine.py`` checks it):

- the compiled kernel (:mod:`ccdflow._kernels`, numba; used for calls of at least
  :data:`_COMPILED_MIN_VALUES` values): one pass over the pixels, blocks of them in
  parallel, the arithmetic vectorised across pixels; numba and the compiled code load
  in about 0.4 s on the first call of a process (compiled once per installation, about
  10 s), so small combines stay on numpy;
- the numpy kernel below (the reference; used when numba is missing or
  ``CCDFLOW_COMBINE_KERNEL=numpy``): row operations vectorised across pixels, in
  chunks of about :data:`_CHUNK_VALUES` values so the temporaries stay small; only
  the pixels that changed in the last pass are processed again.

The uncertainty of the result is the standard error: the standard deviation of the
surviving values (corrected for its small-sample bias) over sqrt(n), times sqrt(pi/2)
for medians. With few frames it is a noisy per-pixel estimate.
"""

__all__ = ["METHODS", "SPREADS", "band_rows", "combine_stack", "reject", "winsorized_std"]

import contextlib
import functools
import math
import os
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
    n = np.maximum(np.asarray(n, dtype=np.float64), 2)
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])  # scipy costs 0.15 s to import
    return np.exp(0.5 * np.log(2 / (n - 1)) + lgamma(n / 2) - lgamma((n - 1) / 2))


@functools.cache
def _c4_table(n):
    """float32 :func:`_c4` of 0 ... n values."""
    table = _c4(np.arange(n + 1)).astype(np.float32)
    table.flags.writeable = False
    return table


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
    if method == "minmax":  # (a pixel with nhigh or fewer good values keeps none)
        hi = np.maximum(ngood - nhigh, 0)
        return np.minimum(nlow, hi), hi
    return np.zeros_like(ngood), ngood


def _check(method, spread, n, nlow, nhigh):
    if method not in METHODS:
        raise ValueError(f"combine method {method!r} is not one of {METHODS}")
    if spread not in SPREADS:
        raise ValueError(f"clip spread {spread!r} is not one of {SPREADS}")
    if method == "minmax" and nlow + nhigh >= n:
        raise ValueError(f"minmax drops {nlow}+{nhigh} of only {n} frames")


#: Fewest values (frames x pixels) in one call for which the compiled kernel is used.
#: Loading numba and the compiled code costs about 0.4 s per process, which a combine of
#: 10 frames of 2048 x 2048 (4e7 values, 0.75 s with numpy) does not win back; a master of
#: 10 frames of 4128 x 2080 (8.6e7 values) does (1.6 s -> 0.9 s; benchmarks/README.md).
#: Once loaded in a process, the kernel is used for every call. Both kernels give the
#: same results bit for bit, so the choice never changes a number.
_COMPILED_MIN_VALUES = 2**26


def _kernel(values=None):
    """The compiled kernel (:mod:`ccdflow._kernels`) for a call on ``values`` values, or
    None for the numpy kernel: the call is small (see `_COMPILED_MIN_VALUES`), numba is
    missing, or ``CCDFLOW_COMBINE_KERNEL`` is ``numpy`` (``numba`` forces the compiled one)."""
    choice = os.environ.get("CCDFLOW_COMBINE_KERNEL", "").lower()
    if choice == "numpy":
        return None
    loaded = _load_kernel.cache_info().currsize > 0
    small = values is not None and values < _COMPILED_MIN_VALUES
    if choice != "numba" and not loaded and small:
        return None
    return _load_kernel()


@functools.cache
def _load_kernel():
    try:
        from ccdflow import _kernels
    except ImportError as exc:
        import logging

        logging.getLogger("ccdflow").warning("numba unavailable (%s): numpy combine", exc)
        return None
    return _kernels


@functools.cache
def _threads():
    """Threads of the compiled kernel: the CPUs this process may run on, at most
    ``OMP_NUM_THREADS`` when set (Snakemake sets it to the threads of the rule)."""
    import numba

    threads = numba.config.NUMBA_NUM_THREADS
    if hasattr(os, "sched_getaffinity"):
        threads = min(threads, len(os.sched_getaffinity(0)))
    with contextlib.suppress(KeyError, ValueError):  # unset, or not a number
        threads = min(threads, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, threads)


@functools.cache
def _pairs(n):
    return np.array(_network(n), dtype=np.int64).reshape(-1, 2)


def _as_frames(stack, mask):
    """Frames (float32, C-contiguous) and masks (bool or None) of a stack given as an
    array ``(n, ...)`` or as sequences of per-frame arrays."""
    frames = [np.ascontiguousarray(f, dtype=np.float32) for f in stack]
    if not frames:
        raise ValueError("nothing to combine: no frames")
    shape = frames[0].shape
    if any(f.shape != shape for f in frames):
        raise ValueError("frames of different shapes")
    if mask is None:
        masks = [None] * len(frames)
    else:
        masks = [None if m is None else np.ascontiguousarray(m, dtype=bool) for m in mask]
        if len(masks) != len(frames) or any(m is not None and m.shape != shape for m in masks):
            raise ValueError("the mask does not match the frames")
    return frames, masks, shape


def _as_arrays(frames, masks):
    stack = np.stack(frames)
    if all(m is None for m in masks):
        return stack, None
    return stack, np.stack([np.zeros(stack.shape[1:], bool) if m is None else m for m in masks])


def _compiled(kernel, frames, masks, params, out=None, bounds=False):
    """Run the compiled kernel: ``(data, unc, nused)`` into ``out`` (flat arrays, or
    empty ones to skip) and, with ``bounds``, the smallest and largest survivor."""
    n, size = len(frames), frames[0].size
    method, spread = params["method"], params["spread"]
    ranges = 1 if method.startswith("sigma_clip") and n >= 3 else 2 if method == "minmax" else 0
    median = method in ("median", "sigma_clip_median")
    maxiters = params["maxiters"]
    address = np.array([f.__array_interface__["data"][0] for f in frames], np.int64)
    mask_address = np.array(
        [0 if m is None else m.__array_interface__["data"][0] for m in masks], np.int64
    )
    empty = np.empty(0, np.float32)
    data, unc, nused = out if out is not None else (empty, empty, np.empty(0, np.int16))
    first = np.empty(size if bounds else 0, np.float32)
    last = np.empty_like(first)
    import numba

    numba.set_num_threads(_threads())
    kernel.combine(
        address,
        mask_address,
        size,
        _pairs(n),
        ranges,
        int(params["nlow"]),
        int(params["nhigh"]),
        np.float32(params["sigma_low"]),
        np.float32(params["sigma_high"]),
        2**62 if maxiters is None else int(maxiters),
        SPREADS.index(spread),
        median,
        _c4_table(n),
        np.float32(np.sqrt(np.pi / 2) if median else 1.0),
        data,
        unc,
        nused,
        first,
        last,
    )
    return first, last


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
    kernel = _kernel(np.size(stack))
    if kernel is None or method == "minmax" or not method.startswith("sigma_clip"):
        return _reject_numpy(stack, mask, method, sigma_low, sigma_high, maxiters, spread,
                             nlow, nhigh)  # fmt: skip
    stack = np.asarray(stack, dtype=np.float32)
    n = stack.shape[0]
    _check(method, spread, n, nlow, nhigh)
    bad = ~np.isfinite(stack)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if n < 3:
        return bad
    frames, masks, _ = _as_frames(stack, mask)
    params = dict(method=method, sigma_low=sigma_low, sigma_high=sigma_high,
                  maxiters=maxiters, spread=spread, nlow=nlow, nhigh=nhigh)  # fmt: skip
    first, last = _compiled(kernel, frames, masks, params, bounds=True)
    shape = stack.shape[1:]
    first, last = first.reshape(shape), last.reshape(shape)
    with np.errstate(invalid="ignore"):
        for i in range(n):
            bad[i] |= ~((stack[i] >= first) & (stack[i] <= last))
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
    out=None,
):
    """Combine frames along axis 0.

    Parameters
    ----------
    stack : numpy.ndarray or sequence of numpy.ndarray
        ``(n, ny, nx)`` values, or ``n`` frames of the same shape (not copied when
        float32 and C-contiguous), any unit (the result has the same unit).
        Non-finite values are not used.
    mask : numpy.ndarray of bool, or sequence, optional
        True where a value must not be used (per frame: an array or None). Not
        modified.
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
    out : tuple of numpy.ndarray, optional
        C-contiguous float32, float32, int16 arrays of the frame shape to write
        ``data``, ``uncertainty``, ``nused`` to (returned).

    Returns
    -------
    data : numpy.ndarray
        ``(ny, nx)`` float32 combined image; 0 where no value survived.
    uncertainty : numpy.ndarray
        float32 standard error of ``data``.
    nused : numpy.ndarray
        int16 number of values used per pixel (0 marks no data).
    """
    frames, masks, shape = _as_frames(stack, mask)
    _check(method, spread, len(frames), nlow, nhigh)
    if out is None:
        out = (np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.int16))
    dtypes = (np.float32, np.float32, np.int16)
    if any(o.shape != shape or o.dtype != d or not o.flags.c_contiguous
           for o, d in zip(out, dtypes, strict=True)):  # fmt: skip
        raise ValueError("out: C-contiguous float32, float32, int16 arrays of the frame shape")
    params = dict(method=method, sigma_low=sigma_low, sigma_high=sigma_high,
                  maxiters=maxiters, spread=spread, nlow=nlow, nhigh=nhigh)  # fmt: skip
    kernel = _kernel(len(frames) * frames[0].size)
    if kernel is None:
        results = _combine_numpy(*_as_arrays(frames, masks), **params)
        for o, r in zip(out, results, strict=True):
            o[...] = r
    else:
        _compiled(kernel, frames, masks, params, out=tuple(o.reshape(-1) for o in out))
    return out


# --- the numpy kernel (the reference of the compiled one, and its fallback) ---------


def _reject_numpy(
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
    """:func:`reject` with the numpy kernel."""
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


def _combine_numpy(
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
    """:func:`combine_stack` with the numpy kernel (``stack`` an array)."""
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
    c4 = _c4_table(n)

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
