"""Robust combination: known truth in, truth out."""

import warnings

import numpy as np
import pytest

from ccdflow import combine
from ccdflow.combine import Clip, band_rows, combine_stack, reject


def _stack(n=5, shape=(40, 50), sigma=5.0, level=1000.0, seed=1):
    rng = np.random.default_rng(seed)
    return (level + sigma * rng.standard_normal((n, *shape))).astype(np.float32)


def test_sigma_clip_removes_a_cosmic_ray_from_five_frames():
    stack = _stack()
    clean = stack.mean(axis=0)
    stack[2, 10, 10] += 3000.0  # a cosmic ray in one frame
    stack[4, 30, 7] += 400.0
    data, _, nused = combine_stack(stack, clip=Clip("sigma_clip"))
    others = np.delete(stack[:, 10, 10], 2)
    assert data[10, 10] == pytest.approx(others.mean(), abs=1e-3)
    assert nused[10, 10] == 4
    assert nused[30, 7] == 4
    # Elsewhere almost nothing is clipped, so the result is the plain mean.
    assert np.median(np.abs(data - clean)) < 1e-3


def test_std_based_clip_cannot_reject_with_few_frames_but_mad_can():
    # With n=5 an outlier's own deviation is at most (n-1)/sqrt(n) = 1.79 sample sigma:
    # a 3-sigma clip on the sample std never rejects it. The MAD spread does.
    stack = _stack()
    stack[0, 5, 5] += 3000.0
    _, _, n_std = combine_stack(stack, clip=Clip(spread="std"))
    _, _, n_mad = combine_stack(stack, clip=Clip(spread="mad_std"))
    _, _, n_win = combine_stack(stack, clip=Clip(spread="winsorized"))
    assert n_std[5, 5] == 5
    assert n_mad[5, 5] == 4
    assert n_win[5, 5] == 4


def test_masked_values_are_not_used():
    stack = _stack()
    mask = np.zeros(stack.shape, dtype=bool)
    stack[1, 3, 4] = 1e9
    mask[1, 3, 4] = True
    mask[:, 0, 0] = True  # no valid value at all
    before = stack.copy()
    data, _, nused = combine_stack(stack, mask, Clip("mean"))
    assert data[3, 4] == pytest.approx(np.delete(stack[:, 3, 4], 1).mean(), rel=1e-6)
    assert nused[3, 4] == 4
    assert nused[0, 0] == 0 and data[0, 0] == 0
    np.testing.assert_array_equal(stack, before)  # inputs never mutated


@pytest.mark.parametrize("method", ["mean", "median"])
def test_plain_methods_equal_numpy(method):
    stack = _stack(n=7)
    data, _, _ = combine_stack(stack, clip=Clip(method))
    ref = getattr(np, method)(stack.astype(np.float64), axis=0)
    np.testing.assert_allclose(data, ref, rtol=1e-6)


def test_minmax_drops_extremes():
    stack = _stack(n=6)
    data, _, nused = combine_stack(stack, clip=Clip("minmax", nlow=1, nhigh=2))
    s = np.sort(stack.astype(np.float64), axis=0)[1:-2]
    np.testing.assert_allclose(data, s.mean(axis=0), rtol=1e-6)
    assert (nused == 3).all()


@pytest.mark.parametrize("n", [5, 10])
def test_noise_of_the_combination_and_its_uncertainty_plane(n):
    sigma = 5.0
    stack = _stack(n=n, shape=(150, 150), sigma=sigma)
    data, unc, _ = combine_stack(stack, clip=Clip("sigma_clip"))
    ideal = sigma / np.sqrt(n)  # the plain mean, which no clip can beat on pure noise
    # the robust clip throws away little good data: within 10 % of the ideal noise
    assert ideal <= np.std(data) < 1.10 * ideal
    # the uncertainty plane tells the actual error within 15 %
    assert np.mean(unc) == pytest.approx(np.std(data), rel=0.15)


def test_winsorized_spread_keeps_more_good_data_than_mad():
    stack = _stack(n=5, shape=(150, 150))
    _, _, n_w = combine_stack(stack, clip=Clip(spread="winsorized"))
    _, _, n_m = combine_stack(stack, clip=Clip(spread="mad_std"))
    assert n_w.mean() / 5 > 0.95 > n_m.mean() / 5


def test_agrees_with_ccdproc_combine():
    ccdproc = pytest.importorskip("ccdproc")
    from astropy.nddata import CCDData
    from astropy.stats import mad_std

    stack = _stack(n=5, shape=(30, 30))
    stack[1, 4, 4] += 500
    frames = [CCDData(f, unit="adu") for f in stack]
    ref = ccdproc.combine(
        frames,
        method="average",
        sigma_clip=True,
        sigma_clip_low_thresh=3,
        sigma_clip_high_thresh=3,
        sigma_clip_func=np.ma.median,
        sigma_clip_dev_func=mad_std,
    )
    data, _, _ = combine_stack(stack, clip=Clip(maxiters=1, spread="mad_std"))
    np.testing.assert_allclose(data, ref.data, rtol=1e-6)


def test_band_rows_respects_the_memory_limit():
    rows = band_rows(50, 4128, 2080, mem_limit_mb=2000)
    assert 1 <= rows < 2080
    assert rows * 50 * 4128 * 4 * 6 <= 2000 * 2**20
    assert band_rows(3, 100, 100, mem_limit_mb=2000) == 100


_MAD_TO_SIGMA = np.float32(1.482602218505602)


def winsorized_std(data, axis=0, iterations=5):
    """The winsorized spread by its definition (NaN = missing): from the MAD (or the
    sample standard deviation where the MAD is 0), clamp the values to median +- 1.5
    sigma and take 1.134 x their standard deviation, ``iterations`` times."""
    centre = np.nanmedian(data, axis=axis, keepdims=True)
    sigma = _MAD_TO_SIGMA * np.nanmedian(np.abs(data - centre), axis=axis, keepdims=True)
    sigma = np.where(sigma > 0, sigma, np.nanstd(data, axis=axis, ddof=1, keepdims=True))
    for _ in range(iterations):
        clamped = np.clip(data, centre - 1.5 * sigma, centre + 1.5 * sigma)
        new = np.float32(1.134) * np.nanstd(clamped, axis=axis, ddof=1, keepdims=True)
        sigma = np.where(new > 0, new, sigma)
    return np.squeeze(sigma, axis=axis)


_SPREADS = {
    "winsorized": winsorized_std,
    "mad_std": lambda v: _MAD_TO_SIGMA * np.nanmedian(np.abs(v - np.nanmedian(v, 0)), 0),
    "std": lambda v: np.nanstd(v, axis=0),
}


def _reference_clip(stack, bad, clip=Clip()):
    """The clip written out plainly with NaN as 'rejected' (float32, frame order)."""
    values = np.where(bad, np.nan, stack).astype(np.float32)
    if stack.shape[0] < 3:
        return np.isnan(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pixels without values
        for _ in range(clip.maxiters or 100):
            centre = np.nanmedian(values, axis=0)
            sigma = _SPREADS[clip.spread](values)
            out = (centre - values > np.float32(clip.sigma_low) * sigma) | (
                values - centre > np.float32(clip.sigma_high) * sigma
            )
            if not out.any():
                break
            values = np.where(out, np.nan, values)
    return np.isnan(values)


@pytest.mark.parametrize("n", [3, 4, 7, 12, 40])
@pytest.mark.parametrize("kind", ["adu", "electrons", "flat"])
def test_reject_makes_the_decisions_of_the_plain_clip(n, kind):
    rng = np.random.default_rng(n)
    shape = (n, 40, 60)
    level, sigma = (1.0, 0.003) if kind == "flat" else (1000.0, 4.0)
    stack = level + sigma * rng.standard_normal(shape)
    if kind == "adu":  # integers: many ties and MADs of 0
        stack = np.round(stack)
    stack = stack.astype(np.float32)
    stack[rng.random(shape) < 0.02] += 50 * sigma
    bad = rng.random(shape) < 0.05
    bad[:, 0, :3] = True  # pixels with no value at all
    bad[1:, 1, :3] = True  # ... and with one
    before = stack.copy(), bad.copy()
    got = reject(stack, bad)
    # Decisions may differ only where a value sits on the threshold to float32
    # rounding (the sums run in another order): none here.
    np.testing.assert_array_equal(got, _reference_clip(stack, bad))
    np.testing.assert_array_equal(stack, before[0])
    np.testing.assert_array_equal(bad, before[1])
    _, _, nused = combine_stack(stack, bad)
    np.testing.assert_array_equal(nused, (~got).sum(axis=0))


def test_clip_runs_to_convergence_without_maxiters():
    stack = _stack(n=8)
    rng = np.random.default_rng(2)
    stack += 30 * (rng.random(stack.shape) < 0.1)  # outliers peeled off in passes
    _, _, once = combine_stack(stack, clip=Clip(maxiters=1))
    _, _, free = combine_stack(stack, clip=Clip(maxiters=None))
    assert (once >= free).all() and (once > free).any()
    np.testing.assert_array_equal(free, (~reject(stack, clip=Clip(maxiters=100))).sum(axis=0))


def test_minmax_reject_drops_by_rank_among_ties():
    stack = np.array([5, 5, 5, 7, 9], np.float32).reshape(5, 1, 1)
    bad = reject(stack, clip=Clip("minmax", nlow=1, nhigh=1))
    assert bad[:, 0, 0].tolist() == [True, False, False, False, True]


# --- the engine on hard cases, against the plain reference ------------------------


def _hard_stack(n, kind, seed):
    """Noise with cosmic rays, low outliers, masked, NaN and inf values, a pixel with
    no good value and one with a single one."""
    rng = np.random.default_rng(seed)
    shape = (n, 37, 71)  # 2627 pixels: two blocks of the kernel, one partial
    level, sigma = (1.0, 0.003) if kind == "flat" else (1000.0, 4.0)
    stack = level + sigma * rng.standard_normal(shape)
    if kind == "adu":  # integers: ties, MADs of 0
        stack = np.round(stack)
    stack = stack.astype(np.float32)
    stack[rng.random(shape) < 0.03] += 50 * sigma  # cosmic rays
    stack[rng.random(shape) < 0.01] -= 20 * sigma
    stack[rng.random(shape) < 0.005] = np.nan
    stack[0, 2, 2] = np.inf
    bad = rng.random(shape) < 0.05
    bad[:, 0, :3] = True  # no good value
    bad[1:, 1, :3] = True  # one
    return stack, bad


_CLIPS = [
    Clip(method, spread=spread, maxiters=maxiters)
    for method in ("sigma_clip", "sigma_clip_median")
    for spread in ("winsorized", "mad_std", "std")
    for maxiters in (5, 1, None)
]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 10, 25, 33, 50])
@pytest.mark.parametrize("kind", ["adu", "flat"])
def test_every_clip_makes_the_plain_decisions_and_statistics(n, kind):
    # The engine against the clip and the statistics written out plainly in numpy,
    # for every method, spread and pass count, with and without a mask. The frame
    # counts cover the sorting network's sizes (up to 50) and blocks of the kernel.
    stack, bad = _hard_stack(n, kind, seed=n)
    before = stack.copy(), bad.copy()
    c4 = combine._c4_table(n)
    for clip in [*_CLIPS, Clip("median"), Clip("mean")]:
        for mask in (bad, None):
            full = ~np.isfinite(stack) if mask is None else mask | ~np.isfinite(stack)
            expected = _reference_clip(stack, full, clip) if clip.clips else full
            got = reject(stack, mask, clip)
            # decisions may differ only for a value on the threshold to float32
            # rounding (sums in another order): none here
            np.testing.assert_array_equal(got, expected, err_msg=f"{clip}")
            data, unc, nused = combine_stack(stack, mask, clip)
            np.testing.assert_array_equal(nused, (~expected).sum(axis=0))
            kept = np.where(expected, np.nan, stack).astype(np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # no or one value
                median = clip.method in ("median", "sigma_clip_median")
                value = np.nanmedian(kept, 0) if median else np.nanmean(kept, 0)
                m = nused.astype(int)
                err = np.nanstd(kept, 0, ddof=1) / c4[m] / np.sqrt(m)
                err *= np.sqrt(np.pi / 2) if median else 1
            np.testing.assert_allclose(data, np.where(m > 0, value, 0), rtol=2e-6, atol=0)
            np.testing.assert_allclose(unc, np.where(m > 1, err, 0), rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(stack, before[0])  # inputs never mutated
    np.testing.assert_array_equal(bad, before[1])


def test_median_of_any_frame_count_is_numpys():
    # the sorting network of every size, with ties and masked values
    rng = np.random.default_rng(0)
    for n in range(1, 53):
        values = rng.integers(0, 5, (n, 300)).astype(np.float32)
        bad = rng.random(values.shape) < 0.2
        data, _, nused = combine_stack(values, bad, Clip("median"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pixels without values
            ref = np.nanmedian(np.where(bad, np.nan, values), axis=0)
        np.testing.assert_array_equal(data[nused > 0], ref[nused > 0].astype(np.float32))


def test_frames_and_masks_as_lists_and_out_arrays():
    stack, bad = _hard_stack(7, "adu", seed=3)
    frames = list(stack)  # per-frame arrays, as make_master passes them
    masks = [m if i % 2 else None for i, m in enumerate(bad)]
    out = (
        np.empty((37, 71), np.float32),
        np.empty((37, 71), np.float32),
        np.empty((37, 71), np.int16),
    )
    got = combine_stack(frames, masks, out=out)
    assert all(g is o for g, o in zip(got, out, strict=True))
    full = np.stack([m if m is not None else np.zeros((37, 71), bool) for m in masks])
    for a, b in zip(out, combine_stack(stack, full), strict=True):
        np.testing.assert_array_equal(a, b)
    # a cosmic ray on known data: rejected, the rest averaged
    flat = np.full((5, 1, 3), 100.0, np.float32) + np.arange(5, dtype=np.float32)[:, None, None]
    flat[2, 0, 1] = 5000.0
    data, _, nused = combine_stack(flat)
    assert nused[0].tolist() == [5, 4, 5]
    assert data[0].tolist() == pytest.approx([102.0, (100 + 101 + 103 + 104) / 4, 102.0])


def test_kernel_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    combine._threads.cache_clear()
    try:
        assert combine._threads() == 1
        stack, bad = _hard_stack(5, "adu", seed=6)
        one = combine_stack(stack, bad)
    finally:
        combine._threads.cache_clear()
    for a, b in zip(one, combine_stack(stack, bad), strict=True):
        np.testing.assert_array_equal(a, b)  # blocks are independent: same result


def test_clip_defaults_are_the_configuration_defaults():
    import yaml

    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    fields = Clip.__dataclass_fields__
    for name, prop in schema["properties"]["stack"]["properties"].items():
        if name in fields:
            assert getattr(Clip(), name) == prop["default"], name
    assert Clip.split(config["stack"])[0] == Clip()  # the stack's documented defaults
    assert Clip.from_config(config["combine"]["bias"]) == Clip()


def test_clip_rejects_bad_parameters_naming_them():
    with pytest.raises(ValueError, match="sigmaclip"):
        Clip(method="sigmaclip")
    with pytest.raises(ValueError, match="mad"):
        Clip(spread="mad")
    with pytest.raises(ValueError, match="thresholds"):
        Clip(sigma_low=0)
    with pytest.raises(ValueError, match="maxiter"):
        Clip.from_config({"method": "sigma_clip", "maxiter": 5})
    with pytest.raises(ValueError, match="minmax drops 1\\+1 of only 2"):
        combine_stack(np.zeros((2, 3, 3), np.float32), clip=Clip("minmax"))


def test_c4_without_scipy_is_scipys():
    special = pytest.importorskip("scipy.special")
    n = np.maximum(np.arange(1001, dtype=np.float64), 2)
    ref = np.exp(0.5 * np.log(2 / (n - 1)) + special.gammaln(n / 2) - special.gammaln((n - 1) / 2))
    np.testing.assert_array_equal(combine._c4_table(1000), ref.astype(np.float32))
    # the bias it corrects: E[s] of 3 Gaussian values = sqrt(pi)/2 sigma
    assert combine._c4(3) == pytest.approx(np.sqrt(np.pi) / 2, rel=1e-12)


@pytest.mark.parametrize("case", ["odd", "even", "float", "nan"])
def test_read_noise_is_astropys_mad_std(case):
    from astropy.stats import mad_std

    from ccdflow.calibrate import read_noise_adu

    rng = np.random.default_rng(7)
    a = np.round(1000 + 5 * rng.standard_normal(20001)).astype(np.float32)
    b = np.round(1000 + 5 * rng.standard_normal(20001)).astype(np.float32)
    a[rng.random(a.size) < 0.01] += 3000  # cosmic rays
    if case == "even":  # differences <= 0 and >= 1, half each: median 0.5, MAD between two
        a, b = a[:-1], b[:-1]
        step = np.abs(np.round(3 * rng.standard_normal(a.size))).astype(np.float32)
        half = a.size // 2
        a[:half] = b[:half] - step[:half]
        a[half:] = b[half:] + 1 + step[half:]
        assert np.median(a.astype(np.float64) - b) == 0.5
    elif case == "float":  # not integers: no histogram
        a = a + rng.random(a.size).astype(np.float32)
    elif case == "nan":
        a[5] = np.nan
    expected = float(mad_std(np.asarray(a, np.float64) - b) / np.sqrt(2))
    got = read_noise_adu(a, b)
    if case == "nan":
        assert np.isnan(got) and np.isnan(expected)
        return
    assert got == expected
    if case != "even":
        assert got == pytest.approx(5.0, rel=0.05)  # the truth: 5 ADU per frame
