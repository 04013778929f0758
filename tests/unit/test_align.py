"""Registration: apply a known transform to a synthetic star field, recover it exactly."""

import json

import numpy as np
import pytest

from ccdflow import bits
from ccdflow.align import REASONS, AlignResult, find_transform, resample
from ccdflow.demo import render_stars, transform_positions

SHAPE = (256, 256)
SKY, NOISE, FWHM = 100.0, 10.0, 3.0
# astroalign's RANSAC tries every matching triangle before giving up: a frame that does not
# match costs ~1 s with 50 control points and ~0.25 s with 30, so the failure tests use 30.
FAST_FAIL = {"max_control_points": 30}


def _stars(n=100, seed=1, shape=SHAPE, margin=16):
    """Random star list in the reference frame: x, y (px) and flux (e-), 1e2.7..1e4.7."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(margin, shape[1] - 1 - margin, n)
    y = rng.uniform(margin, shape[0] - 1 - margin, n)
    return x, y, 10 ** rng.uniform(2.7, 4.7, n)


def _image(x, y, flux, seed, shape=SHAPE, hot=None):
    """Stars + sky + Gaussian noise; ``hot`` = (ix, iy, value) single-pixel spikes."""
    rng = np.random.default_rng(seed)
    img = render_stars(shape, x, y, flux, FWHM) + SKY + rng.normal(0.0, NOISE, shape)
    if hot is not None:
        ix, iy, value = hot
        img[iy, ix] += value
    return img.astype(np.float32)


def _hot_pixels(n=40, seed=9, shape=SHAPE):
    """A fixed pattern of bright single-pixel spikes (brighter than most stars)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(5, shape[1] - 5, n),
        rng.integers(5, shape[0] - 5, n),
        rng.uniform(2e3, 2e4, n),
    )


def _true_matrix(dx, dy, rot_deg, shape=SHAPE):
    """Source -> reference matrix of a frame dithered by demo.transform_positions."""
    ref = np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 200.0]])
    src = np.column_stack(
        transform_positions(ref[:, 0], ref[:, 1], dx=dx, dy=dy, rot_deg=rot_deg, shape=shape)
    )
    forward = np.eye(3)  # reference -> source, affine through three points
    forward[:2] = np.linalg.solve(np.column_stack([ref, np.ones(3)]), src).T
    return np.linalg.inv(forward)


def _grid_rms(m1, m2, shape=SHAPE, step=8):
    """RMS distance (px) between two mappings of a grid covering the whole frame."""
    gy, gx = np.mgrid[0 : shape[0] : step, 0 : shape[1] : step]
    p = np.column_stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    d = (p @ m1.T - p @ m2.T)[:, :2]
    return float(np.sqrt(np.mean((d**2).sum(axis=1))))


@pytest.fixture(scope="module")
def dithered():
    """Reference and a frame dithered by (5.3, -3.7) px and 0.25 deg, with the truth."""
    x, y, flux = _stars()
    dx, dy, rot = 5.3, -3.7, 0.25
    xs, ys = transform_positions(x, y, dx=dx, dy=dy, rot_deg=rot, shape=SHAPE)
    return _image(x, y, flux, 2), _image(xs, ys, flux, 3), _true_matrix(dx, dy, rot)


# --------------------------------------------------------------------------------------
# find_transform


def test_known_shift_and_rotation_are_recovered(dithered):
    ref, src, true = dithered
    result = find_transform(src, ref)
    assert result.ok, result.detail
    assert result.reason == ""
    # Measured: 0.0025 px rms over the whole frame (53 pairs, pair rms 0.018 px).
    assert _grid_rms(result.matrix, true) <= 0.05
    assert result.n_matches >= 30
    assert result.rms_residual < 0.1
    assert result.scale == pytest.approx(1.0, abs=1e-3)
    assert result.rotation_deg == pytest.approx(-0.25, abs=0.01)
    centre = np.array([(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2, 1.0])
    np.testing.assert_allclose(result.shift, (true @ centre)[:2] - centre[:2], atol=0.05)


def test_result_is_deterministic_although_astroalign_ransac_is_not(dithered):
    ref, src, _ = dithered
    first, second = find_transform(src, ref), find_transform(src, ref)
    np.testing.assert_array_equal(first.matrix, second.matrix)
    assert first.n_matches == second.n_matches


def test_reference_against_itself_is_the_identity(dithered):
    ref, _, _ = dithered
    result = find_transform(ref, ref)
    assert result.ok
    np.testing.assert_allclose(result.matrix, np.eye(3), atol=1e-9)
    identity = AlignResult.identity()
    assert identity.ok and identity.scale == 1.0
    np.testing.assert_array_equal(identity.matrix, np.eye(3))
    json.dumps(result.as_dict())  # serialisable for the run's report


def test_inputs_are_not_modified(dithered):
    ref, src, _ = dithered
    mask = np.zeros(SHAPE, np.uint16)
    mask[10:20, 10:20] = bits.COSMIC
    before = (ref.copy(), src.copy(), mask.copy())
    find_transform(src, ref, source_mask=mask, reference_mask=mask)
    src64 = src.astype(np.float64)  # float64 input: no internal alias may be written to
    before64 = src64.copy()
    resample(src64, np.full(SHAPE, NOISE), mask, _true_matrix(0.5, 0.5, 0.0), SHAPE)
    np.testing.assert_array_equal(src64, before64)
    for a, b in zip((ref, src, mask), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_pure_noise_has_no_stars():
    ref = _image(*_stars(), seed=2)
    noise = _image([], [], [], seed=4)
    result = find_transform(noise, ref)
    assert not result.ok
    assert result.reason == "no_stars"
    assert result.reason in REASONS
    np.testing.assert_array_equal(result.matrix, np.eye(3))
    # Clouds on a detector with hot pixels: still no stars (the spikes are only noted).
    hot = _hot_pixels()
    result = find_transform(
        _image([], [], [], seed=4, hot=hot), _image(*_stars(), seed=2, hot=hot)
    )
    assert result.reason == "no_stars"
    assert "point-like sources (hot pixels?)" in result.detail


def test_masked_pixels_make_no_sources():
    # Star-like blobs that are all masked (e.g. flagged cosmic rays) are not sources.
    x, y, flux = _stars(n=60, seed=5)
    blobs = _image(x, y, flux, seed=6)
    mask = np.zeros(SHAPE, np.uint16)
    for xi, yi in zip(np.rint(x).astype(int), np.rint(y).astype(int), strict=True):
        mask[yi - 6 : yi + 7, xi - 6 : xi + 7] = bits.COSMIC
    ref = _image(*_stars(), seed=2)
    assert find_transform(blobs, ref, source_mask=mask).reason == "no_stars"
    assert find_transform(blobs, blobs).ok  # unmasked, they are stars


def test_another_field_is_rejected():
    ref = _image(*_stars(seed=1), seed=2)
    other = _image(*_stars(seed=11), seed=3)
    result = find_transform(other, ref, **FAST_FAIL)
    assert not result.ok
    assert result.reason in ("no_match", "few_matches", "large_residual")


def test_hot_pixels_alone_do_not_align():
    # Different star fields, same fixed pattern of bright hot pixels: the only common
    # features coincide exactly, which plain astroalign takes for a zero-shift match.
    hot = _hot_pixels()
    ref = _image(*_stars(seed=1), seed=2, hot=hot)
    other = _image(*_stars(seed=11), seed=3, hot=hot)
    result = find_transform(other, ref, **FAST_FAIL)
    assert not result.ok
    assert result.reason == "hot_pixels_only"
    n_coincident = int(result.detail.split()[0])  # "39 point-like sources (hot pixels?) ..."
    assert n_coincident >= 35  # of 40; one may sit on a star


def test_hot_pixels_do_not_pull_a_real_solution_to_zero_shift(dithered):
    _, _, true = dithered
    x, y, flux = _stars()
    hot = _hot_pixels()
    xs, ys = transform_positions(x, y, dx=5.3, dy=-3.7, rot_deg=0.25, shape=SHAPE)
    ref, src = _image(x, y, flux, 2, hot=hot), _image(xs, ys, flux, 3, hot=hot)
    result = find_transform(src, ref)
    assert result.ok, result.detail
    assert _grid_rms(result.matrix, true) <= 0.05


def test_plate_scale_difference_is_rejected():
    x, y, flux = _stars()
    c = np.array([(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2])
    xs, ys = c[0] + 1.05 * (x - c[0]), c[1] + 1.05 * (y - c[1])
    result = find_transform(_image(xs, ys, flux, 3), _image(x, y, flux, 2))
    assert not result.ok
    assert result.reason == "bad_scale"
    assert result.scale == pytest.approx(1 / 1.05, abs=1e-3)


def test_bad_input_does_not_raise():
    ref = _image(*_stars(), seed=2)
    assert find_transform(np.zeros(10), ref).reason == "bad_input"
    assert find_transform(np.full(SHAPE, np.nan), ref).reason == "no_stars"
    with pytest.raises(ValueError, match="source_mask"):
        find_transform(ref, ref, source_mask=np.zeros((3, 3), np.uint16))


# --------------------------------------------------------------------------------------
# resample


def _moments(img, x, y, half=8):
    """Flux and centroid in a box around (x, y)."""
    ix, iy = round(x), round(y)
    box = img[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
    gy, gx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
    flux = box.sum()
    return flux, (box * gx).sum() / flux, (box * gy).sum() / flux


@pytest.mark.parametrize(
    ("dx", "dy", "rot"), [(5.3, -3.7, 0.25), (0.5, 0.5, 0.0), (-2.25, 1.75, -0.1)]
)
def test_resampled_stars_land_on_the_reference_positions(dx, dy, rot):
    x, y, flux = _stars(n=30, seed=7, margin=24)
    xs, ys = transform_positions(x, y, dx=dx, dy=dy, rot_deg=rot, shape=SHAPE)
    source = render_stars(SHAPE, xs, ys, flux, FWHM) + SKY
    truth = render_stars(SHAPE, x, y, flux, FWHM) + SKY
    data, unc, mask = resample(source, None, None, _true_matrix(dx, dy, rot), SHAPE)
    assert data.dtype == np.float32 and mask.dtype == np.uint16 and unc is None
    for xi, yi in zip(x, y, strict=True):
        got, want = _moments(data - SKY, xi, yi), _moments(truth - SKY, xi, yi)
        assert got[0] == pytest.approx(want[0], rel=0.01)
        assert abs(got[1] - want[1]) < 0.05 and abs(got[2] - want[2]) < 0.05
    inside = mask == 0
    assert np.max(np.abs(data - truth)[inside]) < 0.02 * (truth - SKY).max()


def test_outside_the_footprint_is_nodata():
    dx, dy, rot = 5.3, -3.7, 0.25
    matrix = _true_matrix(dx, dy, rot)
    data, unc, mask = resample(np.full(SHAPE, SKY), np.full(SHAPE, NOISE), None, matrix, SHAPE)
    # Where each reference pixel is in the source frame (the demo's own geometry).
    gy, gx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    xs, ys = transform_positions(gx, gy, dx=dx, dy=dy, rot_deg=rot, shape=SHAPE)
    outside = (xs < -1e-6) | (xs > SHAPE[1] - 1 + 1e-6) | (ys < -1e-6) | (ys > SHAPE[0] - 1 + 1e-6)
    np.testing.assert_array_equal((mask & bits.NODATA) != 0, outside)
    assert np.all(mask[~outside] == 0)
    assert np.all(data[outside] == 0) and np.all(unc[outside] == 0)
    np.testing.assert_allclose(data[~outside], SKY, rtol=1e-5)
    np.testing.assert_allclose(unc[~outside], NOISE, rtol=1e-5)


@pytest.mark.parametrize(
    ("dx", "dy", "rot"), [(0.5, 0.5, 0.0), (5.3, -3.7, 0.25), (0.0, 0.0, 0.0)]
)
def test_a_bad_pixel_stays_one_pixel(dx, dy, rot):
    matrix = _true_matrix(dx, dy, rot)
    rng = np.random.default_rng(3)
    for px, py in rng.integers(30, 220, (20, 2)):
        mask = np.zeros(SHAPE, np.uint16)
        mask[py, px] = bits.BAD | bits.COSMIC
        _, _, out = resample(np.full(SHAPE, SKY), None, mask, matrix, SHAPE)
        out &= ~bits.NODATA  # the frame edges
        flagged = np.argwhere(out != 0)
        assert 1 <= len(flagged) <= 2, (px, py, len(flagged))
        assert np.all(out[out != 0] == bits.BAD | bits.COSMIC)  # bits travel together
        # ... at the reference position of the bad pixel.
        want = (matrix @ [px, py, 1.0])[:2]
        assert np.all(np.hypot(flagged[:, 1] - want[0], flagged[:, 0] - want[1]) < 1.0)


def test_a_masked_block_does_not_grow():
    mask = np.zeros(SHAPE, np.uint16)
    mask[100:105, 120:125] = bits.SATURATED
    _, _, out = resample(np.full(SHAPE, SKY), None, mask, _true_matrix(5.3, -3.7, 0.25), SHAPE)
    assert 20 <= np.count_nonzero(out & bits.SATURATED) <= 30


def test_masked_spikes_do_not_ring_into_good_pixels():
    # A hot pixel 1000x the noise, flagged: the cubic spline must not spread ripples of it.
    source = np.full(SHAPE, SKY)
    mask = np.zeros(SHAPE, np.uint16)
    source[128, 128], mask[128, 128] = 1e4, bits.BAD
    data, _, out = resample(source, None, mask, _true_matrix(0.5, 0.5, 0.1), SHAPE)
    good = out == 0
    np.testing.assert_allclose(data[good], SKY, rtol=1e-6)


def test_identity_resample_returns_the_input():
    rng = np.random.default_rng(8)
    data = (SKY + rng.normal(0.0, NOISE, SHAPE)).astype(np.float32)
    unc = np.full(SHAPE, NOISE, np.float32)
    mask = np.zeros(SHAPE, np.uint16)
    mask[5, 7], mask[200, 100] = bits.BAD, bits.COSMIC | bits.SATURATED
    good = mask == 0
    out, out_unc, out_mask = resample(data, unc, mask, np.eye(3), SHAPE)
    np.testing.assert_allclose(out[good], data[good], rtol=1e-6)
    np.testing.assert_allclose(out_unc[good], unc[good], rtol=1e-6)
    np.testing.assert_array_equal(out_mask, mask)


def test_resample_rejects_mismatched_planes():
    with pytest.raises(ValueError, match="mask"):
        resample(np.zeros(SHAPE), None, np.zeros((3, 3), np.uint16), np.eye(3), SHAPE)
