"""Robust combination: known truth in, truth out."""

import numpy as np
import pytest

from ccdflow.combine import band_rows, combine_stack


def _stack(n=5, shape=(40, 50), sigma=5.0, level=1000.0, seed=1):
    rng = np.random.default_rng(seed)
    return (level + sigma * rng.standard_normal((n, *shape))).astype(np.float32)


def test_sigma_clip_removes_a_cosmic_ray_from_five_frames():
    stack = _stack()
    clean = stack.mean(axis=0)
    stack[2, 10, 10] += 3000.0  # a cosmic ray in one frame
    stack[4, 30, 7] += 400.0
    data, _, nused = combine_stack(stack, method="sigma_clip")
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
    _, _, n_std = combine_stack(stack, method="sigma_clip", spread="std")
    _, _, n_mad = combine_stack(stack, method="sigma_clip", spread="mad_std")
    _, _, n_win = combine_stack(stack, method="sigma_clip", spread="winsorized")
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
    data, _, nused = combine_stack(stack, mask, method="mean")
    assert data[3, 4] == pytest.approx(np.delete(stack[:, 3, 4], 1).mean(), rel=1e-6)
    assert nused[3, 4] == 4
    assert nused[0, 0] == 0 and data[0, 0] == 0
    np.testing.assert_array_equal(stack, before)  # inputs never mutated


@pytest.mark.parametrize("method", ["mean", "median"])
def test_plain_methods_equal_numpy(method):
    stack = _stack(n=7)
    data, _, _ = combine_stack(stack, method=method)
    ref = getattr(np, method)(stack.astype(np.float64), axis=0)
    np.testing.assert_allclose(data, ref, rtol=1e-6)


def test_minmax_drops_extremes():
    stack = _stack(n=6)
    data, _, nused = combine_stack(stack, method="minmax", nlow=1, nhigh=2)
    s = np.sort(stack.astype(np.float64), axis=0)[1:-2]
    np.testing.assert_allclose(data, s.mean(axis=0), rtol=1e-6)
    assert (nused == 3).all()


@pytest.mark.parametrize("n", [5, 10])
def test_noise_of_the_combination_and_its_uncertainty_plane(n):
    sigma = 5.0
    stack = _stack(n=n, shape=(150, 150), sigma=sigma)
    data, unc, _ = combine_stack(stack, method="sigma_clip")
    ideal = sigma / np.sqrt(n)  # the plain mean, which no clip can beat on pure noise
    # the robust clip throws away little good data: within 10 % of the ideal noise
    assert ideal <= np.std(data) < 1.10 * ideal
    # the uncertainty plane tells the actual error within 15 %
    assert np.mean(unc) == pytest.approx(np.std(data), rel=0.15)


def test_winsorized_spread_keeps_more_good_data_than_mad():
    stack = _stack(n=5, shape=(150, 150))
    _, _, n_w = combine_stack(stack, method="sigma_clip", spread="winsorized")
    _, _, n_m = combine_stack(stack, method="sigma_clip", spread="mad_std")
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
    data, _, _ = combine_stack(stack, method="sigma_clip", maxiters=1, spread="mad_std")
    np.testing.assert_allclose(data, ref.data, rtol=1e-6)


def test_band_rows_respects_the_memory_limit():
    rows = band_rows(50, 4128, 2080, mem_limit_mb=2000)
    assert 1 <= rows < 2080
    assert rows * 50 * 4128 * 4 * 6 <= 2000 * 2**20
    assert band_rows(3, 100, 100, mem_limit_mb=2000) == 100
