"""The clip engine of :mod:`ccdflow.combine`, compiled (numba).

Imported only when a combination runs (importing numba and loading the compiled code
costs a few tenths of a second, which per-frame jobs must not pay). The machine code
is cached next to this file (``cache=True``), so it is compiled once per installation
(numba writes the cache atomically: jobs that compile at the same time do not break
it, they just each compile).

Each parallel task (a few per thread) allocates its work arrays once and takes blocks
of :data:`BLOCK` pixels: it loads their values into a frames x pixels buffer (masked
and non-finite values as +inf) and sorts every pixel's values with the sorting network
of :func:`ccdflow.combine._network`. The arithmetic then runs across :data:`TILE`
pixels at once (vector instructions), each pixel with its survivor range ``[lo, hi)``
of the sorted values, in float32. For the next pass, the pixels still changing are
grouped by their number of survivors and gathered into tiles. The tests compare the
result with the clip written out plainly in numpy, with astropy and with ccdproc
(``tests/unit/test_combine.py``).
"""

import numba as nb
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

#: Pixels per parallel task (sorted once, kept in cache: 50 frames x 2048 = 400 KB).
BLOCK = 2048
#: Pixels processed together by the vector loops.
TILE = 64

# Spread codes (``SPREADS`` of :mod:`ccdflow.combine`, in that order).
WINSORIZED, MAD_STD, STD = 0, 1, 2

_HALF = np.float32(0.5)
_MAD_TO_SIGMA = np.float32(1.482602218505602)
_WINSOR_CLAMP = np.float32(1.5)
_WINSOR_GAIN = np.float32(1.134)
_WINSOR_ROUNDS = 5
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@intrinsic
def _pointer(typingctx, address):
    """The integer ``address`` as a pointer (for :func:`numba.carray`)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@nb.njit(**_OPTS)
def _load(frames, masks, size, p0, S, npix, ngood):
    """``S[:, :npix]`` = pixels ``p0:p0+npix`` of every frame, bad values (masked,
    non-finite) as +inf; ``ngood`` counts the others.

    (Every loop over pixels indexes a row view from 0: with a computed offset numba
    cannot prove the index non-negative and the loop is not vectorised.)"""
    count = ngood[:npix]
    count[:] = 0
    for k in range(frames.shape[0]):
        src = nb.carray(_pointer(frames[k]), size, np.float32)[p0 : p0 + npix]
        dst = S[k, :npix]
        if masks[k]:
            bad = nb.carray(_pointer(masks[k]), size, np.bool_)[p0 : p0 + npix]
            for t in range(npix):
                v = src[t]
                ok = (np.abs(v) < _INF) & ~bad[t]  # (np.isfinite is not vectorised)
                dst[t] = v if ok else _INF
                count[t] += ok
        else:
            for t in range(npix):
                v = src[t]
                ok = np.abs(v) < _INF
                dst[t] = v if ok else _INF
                count[t] += ok


@nb.njit(**_OPTS)
def _sort(S, c0, g, pairs):
    """Columns ``c0:c0+g`` of ``S`` sorted by the comparators ``pairs``."""
    for q in range(pairs.shape[0]):
        x = S[pairs[q, 0], c0 : c0 + g]
        y = S[pairs[q, 1], c0 : c0 + g]
        for t in range(g):
            a = x[t]
            b = y[t]
            x[t] = a if a < b else b
            y[t] = b if a < b else a


@nb.njit(**_OPTS)
def _median(A, c, lo, m):
    """Median of ``A[lo:lo+m, c]`` (sorted): the middle value or the mean of the two."""
    a = lo + (m - 1) // 2
    b = lo + m // 2
    if a == b:
        return A[a, c]
    return (A[a, c] + A[b, c]) * _HALF


@nb.njit(**_OPTS)
def _median_rows(A, c0, g, k0, m, out):
    """Medians of ``A[k0:k0+m, c0+t]`` (sorted) for the lanes ``t < g``."""
    a = A[k0 + (m - 1) // 2, c0 : c0 + g]
    b = A[k0 + m // 2, c0 : c0 + g]
    if m % 2:
        out[:g] = a
    else:
        for t in range(g):
            out[t] = (a[t] + b[t]) * _HALF


@nb.njit(**_OPTS)
def _lanes_std(D, c0, g, m, ddof, mean, std):
    """Mean (sum / m) and standard deviation of ``D[:m, c0+t]`` per lane ``t``, the sums
    in row order (as numpy sums along the frame axis)."""
    mean[:g] = _ZERO
    std[:g] = _ZERO
    mf = np.float32(m)
    for i in range(m):
        row = D[i, c0 : c0 + g]
        for t in range(g):
            mean[t] += row[t]
    for t in range(g):
        mean[t] = mean[t] / mf
    for i in range(m):
        row = D[i, c0 : c0 + g]
        for t in range(g):
            d = row[t] - mean[t]
            std[t] += d * d
    for t in range(g):
        std[t] = np.sqrt(std[t] / (mf - np.float32(ddof)))


@nb.njit(**_OPTS)
def _clip_lanes(A, c0, g, k0, m, low, high, spread, D, centre, sigma, lb, ub, tot, sq, nl, nh):
    """One clip pass on the lanes ``t < g``: the survivors of lane ``t`` are rows
    ``k0:k0+m`` (``m >= 2``) of column ``c0+t`` of the column-sorted ``A``. Writes the
    numbers of values rejected below (``nl``) and above (``nh``) the median."""
    _median_rows(A, c0, g, k0, m, centre)
    for i in range(m):  # D: the deviations from the median, ascending
        row = A[k0 + i, c0 : c0 + g]
        dev = D[i, :g]
        for t in range(g):
            dev[t] = row[t] - centre[t]
    if spread == STD:  # population standard deviation of the deviations
        _lanes_std(D, 0, g, m, 0, tot, sigma)
    else:
        # MAD: the k-th smallest |deviation| is the smallest, over windows [a, a+k] of
        # consecutive sorted values, of the larger deviation of the window's ends.
        for second in range(2 if m % 2 == 0 else 1):
            k = (m - 1) // 2 + second
            best = lb[:g]
            for a0 in range(m - k):
                left = D[a0, :g]
                right = D[a0 + k, :g]
                for t in range(g):
                    a = -left[t]
                    b = right[t]
                    w = a if a > b else b
                    best[t] = w if (a0 == 0) | (w < best[t]) else best[t]
            for t in range(g):
                sigma[t] = best[t] if second == 0 else (sigma[t] + best[t]) * _HALF
        for t in range(g):
            sigma[t] = _MAD_TO_SIGMA * sigma[t]
        if spread == WINSORIZED:
            zero = False
            for t in range(g):
                zero = zero or not sigma[t] > _ZERO
            if zero:  # the MAD is 0: start from the sample standard deviation
                _lanes_std(D, 0, g, m, 1, tot, sq)
                for t in range(g):
                    if not sigma[t] > _ZERO:
                        sigma[t] = sq[t]
            mf = np.float32(m)
            for _ in range(_WINSOR_ROUNDS):
                for t in range(g):
                    half = _WINSOR_CLAMP * sigma[t]
                    lb[t] = (centre[t] - half) - centre[t]
                    ub[t] = (centre[t] + half) - centre[t]
                tot[:g] = _ZERO
                sq[:g] = _ZERO
                for i in range(m):
                    dev = D[i, :g]
                    for t in range(g):
                        v = dev[t]
                        v = v if v > lb[t] else lb[t]
                        v = v if v < ub[t] else ub[t]
                        tot[t] += v
                        sq[t] += v * v
                for t in range(g):
                    var = (sq[t] - tot[t] * tot[t] / mf) / (mf - _ONE)
                    new = _WINSOR_GAIN * np.sqrt(var if var > _ZERO else _ZERO)
                    sigma[t] = new if new > _ZERO else sigma[t]
    for t in range(g):
        lb[t] = low * sigma[t]
        ub[t] = high * sigma[t]
    nl[:g] = 0
    nh[:g] = 0
    for i in range(m):
        dev = D[i, :g]
        for t in range(g):
            d = dev[t]
            nl[t] += -d > lb[t]
            nh[t] += d > ub[t]


@nb.njit(**_OPTS)
def _block(frames, masks, size, pairs, p0, npix, ranges, nlow, nhigh, low, high, maxiters, spread,
           median, c4, factor, data, unc, nused, first, last, S, W, D, ints, f):  # fmt: skip
    """Pixels ``p0:p0+npix`` (at most :data:`BLOCK`); arguments of :func:`combine`, and
    the work arrays of one thread (:func:`_work`)."""
    n = frames.shape[0]
    ngood = ints[0]
    lo = ints[1]
    hi = ints[2]
    act = ints[3]
    order = ints[4]
    start = ints[5, : n + 2]
    nl = ints[6, :TILE]
    nh = ints[7, :TILE]
    _load(frames, masks, size, p0, S, npix, ngood)
    for c0 in range(0, npix, TILE):
        _sort(S, c0, min(TILE, npix - c0), pairs)
    for c in range(npix):  # survivor ranges: ranges 0 plain, 1 clip, 2 minmax
        lo[c] = 0
        hi[c] = ngood[c]
        if ranges == 2:
            hi[c] = max(ngood[c] - nhigh, 0)
            lo[c] = min(nlow, hi[c])
    if ranges == 1:
        na = 0
        for c in range(npix):
            if ngood[c] >= 2:  # one value alone is never rejected
                act[na] = c
                na += 1
        done = 0
        while na > 0 and done < maxiters:
            done += 1
            # Pixels by survivor count (stable), so that a tile shares one count.
            start[:] = 0
            for j in range(na):
                start[hi[act[j]] - lo[act[j]] + 1] += 1
            for m in range(1, n + 2):
                start[m] += start[m - 1]
            for j in range(na):
                m = hi[act[j]] - lo[act[j]]
                order[start[m]] = act[j]
                start[m] += 1
            keep = 0
            g0 = 0
            while g0 < na:
                c = order[g0]
                m = hi[c] - lo[c]
                g = 1
                inplace = True
                while g < TILE and g0 + g < na and hi[order[g0 + g]] - lo[order[g0 + g]] == m:
                    inplace = inplace and order[g0 + g] == c + g and lo[c + g] == lo[c]
                    g += 1
                if inplace:  # consecutive pixels with the same survivor rows
                    A, c0, k0 = S, c, lo[c]
                else:  # gathered, survivors moved to rows 0:m
                    for t in range(g):
                        ct, lt = order[g0 + t], lo[order[g0 + t]]
                        for i in range(m):
                            W[i, t] = S[lt + i, ct]
                    A, c0, k0 = W, 0, 0
                _clip_lanes(A, c0, g, k0, m, low, high, spread, D,
                            f[0], f[1], f[2], f[3], f[4], f[5], nl, nh)  # fmt: skip
                for t in range(g):
                    ct = order[g0 + t]
                    lo[ct] += nl[t]
                    hi[ct] -= nh[t]
                    if nl[t] + nh[t] > 0 and hi[ct] - lo[ct] >= 2:
                        act[keep] = ct
                        keep += 1
                g0 += g
            na = keep
    if first.shape[0]:  # the range of the surviving values
        for c in range(npix):
            ok = hi[c] > lo[c]
            first[p0 + c] = S[lo[c], c] if ok else _INF
            last[p0 + c] = S[hi[c] - 1, c] if ok else -_INF
    if data.shape[0] == 0:
        return
    for c0 in range(0, npix, TILE):
        g = min(TILE, npix - c0)
        _final_lanes(S, c0, g, lo[c0 : c0 + g], hi[c0 : c0 + g], median, c4, factor,
                     f[0], f[1], f[2], f[3], data[p0 + c0 : p0 + c0 + g],
                     unc[p0 + c0 : p0 + c0 + g], nused[p0 + c0 : p0 + c0 + g])  # fmt: skip


@nb.njit(**_OPTS)
def _final_lanes(S, c0, g, lo, hi, median, c4, factor, mean, std, bias, count, data, unc,
                 nused):  # fmt: skip
    """Value, standard error and count of the survivors ``S[lo:hi, c0+t]`` per lane."""
    mean[:g] = _ZERO
    std[:g] = _ZERO
    kmin, kmax = S.shape[0], 0
    uniform = True
    for t in range(g):
        if hi[t] > lo[t]:
            kmin = min(kmin, lo[t])
            kmax = max(kmax, hi[t])
        uniform = uniform and lo[t] == lo[0] and hi[t] == hi[0]
    for k in range(kmin, kmax):  # sums in row order, masked to the ranges
        row = S[k, c0 : c0 + g]
        if uniform:
            for t in range(g):
                mean[t] += row[t]
        else:
            for t in range(g):
                mean[t] += row[t] if (k >= lo[t]) & (k < hi[t]) else _ZERO
    for t in range(g):
        mean[t] = mean[t] / np.float32(hi[t] - lo[t])
    for k in range(kmin, kmax):
        row = S[k, c0 : c0 + g]
        if uniform:
            for t in range(g):
                d = row[t] - mean[t]
                std[t] += d * d
        else:
            for t in range(g):
                d = row[t] - mean[t]
                std[t] += d * d if (k >= lo[t]) & (k < hi[t]) else _ZERO
    for t in range(g):  # (two loops, no np.isfinite: the second one is vectorised)
        m = max(hi[t] - lo[t], 0)
        nused[t] = m
        bias[t] = c4[m]
        count[t] = np.float32(m)
    for t in range(g):
        mf = count[t]
        err = factor * np.sqrt(std[t] / (mf - _ONE)) / bias[t] / np.sqrt(mf)
        unc[t] = err if np.abs(err) < _INF else _ZERO  # 0 for one value or none
        data[t] = mean[t] if mf > _ZERO else _ZERO
    if median:
        if uniform and hi[0] > lo[0]:
            _median_rows(S, c0, g, lo[0], hi[0] - lo[0], data)
        else:
            for t in range(g):
                if hi[t] > lo[t]:
                    data[t] = _median(S, c0 + t, lo[t], hi[t] - lo[t])


@nb.njit(parallel=True, **_OPTS)
def combine(frames, masks, size, pairs, ranges, nlow, nhigh, low, high, maxiters, spread,
            median, c4, factor, data, unc, nused, first, last, ntasks):  # fmt: skip
    """Combine ``n`` frames of ``size`` pixels each.

    ``frames``: the addresses of the frames' float32 values, ``masks``: of their bool
    masks (True = do not use; 0: no mask); the caller keeps the arrays alive.
    ``pairs``: comparators of the sorting network for ``n``. ``ranges``: 0 use every
    good value, 1 the sigma clip (``low``, ``high`` float32, ``maxiters``, ``spread``
    code), 2 minmax (``nlow``, ``nhigh``). ``median``: the value is the median of the
    survivors, else their mean. ``c4``: float32 bias of the standard deviation per
    count; ``factor``: of the standard error. Writes ``data``, ``unc``, ``nused`` per
    pixel (empty: skipped) and the smallest and largest surviving value in ``first``
    and ``last`` (empty: skipped). ``ntasks``: parallel tasks, each with its own work
    arrays (allocated per block they cost a page-faulting allocation each, and two
    threads ran 1.3x, not 2x, as fast as one).
    """
    n = frames.shape[0]
    nblocks = (size + BLOCK - 1) // BLOCK
    ntasks = max(1, min(nblocks, ntasks))
    for task in nb.prange(ntasks):  # work arrays allocated once per task, not per block
        S = np.empty((n, BLOCK + 16), np.float32)  # rows not 4 KB apart: cache sets
        W = np.empty((n, TILE), np.float32)
        D = np.empty((n, TILE), np.float32)
        ints = np.empty((8, max(BLOCK, n + 2)), np.int64)
        f = np.empty((6, TILE), np.float32)
        for b in range(task * nblocks // ntasks, (task + 1) * nblocks // ntasks):
            p0 = b * BLOCK
            _block(frames, masks, size, pairs, p0, min(BLOCK, size - p0), ranges, nlow, nhigh,
                   low, high, maxiters, spread, median, c4, factor, data, unc, nused, first,
                   last, S, W, D, ints, f)  # fmt: skip
