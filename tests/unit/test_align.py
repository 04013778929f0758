"""Registration: apply a known transform to a synthetic star field, recover it exactly."""

import json

import numpy as np
import pytest

from ccdflow import align, bits
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
    # A star's box (17 x 17 px) must not cut through a brighter star's core: moving that
    # core by OpenCV's 1/64 px placement error moves 1 % of a faint star's box flux.
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    crowded = ((d < 12) & (flux[None] > flux[:, None])).any(axis=1)
    assert (~crowded).sum() >= 20
    for xi, yi in zip(x[~crowded], y[~crowded], strict=True):
        got, want = _moments(data - SKY, xi, yi), _moments(truth - SKY, xi, yi)
        assert got[0] == pytest.approx(want[0], rel=0.01)
        assert abs(got[1] - want[1]) < 0.05 and abs(got[2] - want[2]) < 0.05
    inside = mask == 0
    assert np.max(np.abs(data - truth)[inside]) < 0.02 * (truth - SKY).max()


@pytest.mark.parametrize("phase", [0.0, 0.01, 1 / 64, 0.02, 0.25, 0.49, 0.5, 0.77])
def test_a_shifted_star_moves_by_the_shift_within_opencvs_rounding_and_the_kernel_error(phase):
    # OpenCV places each output pixel at its source position rounded to 1/32 px, so a star
    # lands within 1/64 px (plus the kernel's own centroid error) of where the transform
    # puts it, at every sub-pixel phase; its flux stays (weights sum to 1).
    x, y = np.array([100.3, 150.7]), np.array([120.6, 80.2])
    flux = np.array([2e4, 5e3])
    for sx, sy in ((phase, 0.0), (0.0, phase), (phase, -phase)):
        source = render_stars(SHAPE, x + sx, y + sy, flux, FWHM) + SKY
        matrix = np.array([[1.0, 0.0, -sx], [0.0, 1.0, -sy], [0.0, 0.0, 1.0]])
        data, _, _ = resample(source, None, None, matrix, SHAPE)
        truth = render_stars(SHAPE, x, y, flux, FWHM)
        for xi, yi in zip(x, y, strict=True):
            got, want = _moments(data - SKY, xi, yi), _moments(truth, xi, yi)
            assert got[0] == pytest.approx(want[0], rel=1e-3)
            assert abs(got[1] - want[1]) <= 1 / 64 + 0.005
            assert abs(got[2] - want[2]) <= 1 / 64 + 0.005


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
    # A hot pixel 1000x the noise, flagged: the kernel's lobes must not spread ripples of it.
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
    with pytest.raises(ValueError, match="kernel"):
        resample(np.zeros(SHAPE), None, None, np.eye(3), SHAPE, kernel="cubic")


def test_a_frame_wider_than_opencv_takes_is_resampled_in_tiles():
    # OpenCV's warpAffine indexes sides below 32767 px: a wider frame (a mosaic, a drift
    # scan) is warped in tiles and must come out as the shifted frame, not raise.
    nx = align.MAX_SIDE + 1000
    x = np.arange(nx, dtype=np.float64)
    data = np.tile(1000.0 + 100.0 * np.sin(2 * np.pi * x / 50.0), (24, 1)).astype(np.float32)
    unc = np.full(data.shape, 5.0, np.float32)
    out, out_unc, out_mask = resample(data, unc, None, np.eye(3), data.shape)
    np.testing.assert_array_equal(out, data)
    matrix = np.array([[1.0, 0.0, 0.25], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    out, out_unc, out_mask = resample(data, unc, None, matrix, data.shape)
    inside = out_mask == 0
    assert inside[1:-1, 1:-1].all() and (out_mask[-1] & bits.NODATA).all()
    # The data repeat every 50 px: each column equals its twin in a narrow frame warped in
    # one piece, across the tile edges too; and it is the sine shifted by 0.25 px, within
    # Lanczos 4's own error (0.2 % of the amplitude here; 0.25 px off would be 3 %).
    narrow, _, _ = resample(data[:, :1000], None, None, matrix, (24, 1000))
    twin = 100 + (np.arange(8, nx - 8) - 100) % 50
    np.testing.assert_allclose(out[1:-1, 8:-8], narrow[1:-1, twin], atol=1e-3)
    want = 1000.0 + 100.0 * np.sin(2 * np.pi * (x - 0.25) / 50.0)
    np.testing.assert_allclose(
        out[1:-1, 8:-8], np.broadcast_to(want[8:-8], (22, nx - 16)), atol=0.25
    )
    np.testing.assert_allclose(out_unc[inside], 5.0, rtol=1e-5)


def test_concurrent_resamples_leave_opencv_threads_as_the_caller_set_them():
    # resample runs OpenCV on one thread and restores the caller's setting afterwards; the
    # setting is process-wide and warpAffine releases the GIL, so warps in several Python
    # threads (a notebook, a thread pool) must neither leave the process at one thread nor
    # change each other's results.
    import threading

    import cv2

    rng = np.random.default_rng(3)
    data = (SKY + rng.normal(0.0, NOISE, (512, 512))).astype(np.float32)
    matrix = _true_matrix(0.3, -0.2, 0.4, shape=data.shape)
    want, _, _ = resample(data, None, None, matrix, data.shape)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    results, start = [], threading.Barrier(4)

    def work():
        start.wait()
        for _ in range(25):
            results.append(resample(data, None, None, matrix, data.shape)[0])

    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)
    assert len(results) == 100
    for got in results:
        np.testing.assert_array_equal(got, want)


def _aperture_sums(img, radius, margin):
    """Sums of ``img`` in disjoint integer-pixel disks, ``margin`` px inside the frame."""
    r = int(np.ceil(radius))
    gy, gx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = np.hypot(gx, gy) <= radius
    step = 2 * r + 2
    sums = [
        img[cy - r : cy + r + 1, cx - r : cx + r + 1][disk].sum(dtype=np.float64)
        for cy in range(margin + r, img.shape[0] - margin - r, step)
        for cx in range(margin + r, img.shape[1] - margin - r, step)
    ]
    return np.array(sums), int(disk.sum())


def test_a_stack_of_resampled_frames_keeps_positions_fluxes_widths_and_aperture_noise():
    # Issue 11's conditions on the kernel, on a truth night of N dithered frames of one field
    # (Poisson and read noise, the true transforms): the stack of the resampled frames puts
    # bright stars within 0.05 px rms of their true positions, their aperture fluxes
    # (r = 3 FWHM) within 0.5 % of the truth and their width within 1 % of it; the noise of
    # the stack summed in those apertures is within 5 % of sigma / sqrt(N) (single pixels
    # are correlated by any interpolation, so their rms is lower: that is stated, not hidden).
    import sep

    shape, n, sky = (1024, 1024), 4, 200.0
    rng = np.random.default_rng(21)
    x, y = rng.uniform(40, 984, 150), rng.uniform(40, 984, 150)
    flux = 10 ** rng.uniform(4.3, 5.3, 150)  # e-, peaks up to 2e4 e- above the sky
    dithers = [(0.0, 0.0, 0.0), (7.3, -4.6, 0.21), (-9.5, 2.5, -0.17), (3.5, 10.5, 0.29)]
    stack, noise_stack = np.zeros(shape), np.zeros(shape)
    widths = []
    for dx, dy, rot in dithers:
        xs, ys = transform_positions(x, y, dx=dx, dy=dy, rot_deg=rot, shape=shape)
        signal = render_stars(shape, xs, ys, flux, FWHM) + sky
        data = rng.poisson(signal) + rng.normal(0.0, 5.0, shape)
        matrix = _true_matrix(dx, dy, rot, shape=shape)
        stack += resample(data.astype(np.float32), None, None, matrix, shape)[0]
        noise = rng.normal(0.0, 1.0, shape).astype(np.float32)  # the noise part: linear
        noise_stack += resample(noise, None, None, matrix, shape)[0]
        clean = resample(signal.astype(np.float32), None, None, matrix, shape)[0] - sky
        widths.append([_second_moment(clean, xi, yi) for xi, yi in zip(x, y, strict=True)])
    stack, noise_stack = stack / n, noise_stack / n
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    isolated = (d > 20).all(axis=1)
    assert isolated.sum() >= 80
    image = np.ascontiguousarray(stack, dtype=np.float32)
    wx, wy, _ = sep.winpos(image, x[isolated], y[isolated], FWHM / 2.3548)
    assert np.sqrt(np.mean((wx - x[isolated]) ** 2 + (wy - y[isolated]) ** 2)) <= 0.05
    measured, _, _ = sep.sum_circle(image - sky, x[isolated], y[isolated], 3 * FWHM, subpix=5)
    assert np.median(measured / flux[isolated]) == pytest.approx(1.0, abs=0.005)
    truth = render_stars(shape, x, y, flux, FWHM)
    want = np.array([_second_moment(truth, xi, yi) for xi, yi in zip(x, y, strict=True)])
    assert np.median(np.array(widths)[1:, isolated] / want[isolated]) == pytest.approx(1, abs=0.01)
    sums, area = _aperture_sums(noise_stack, 3 * FWHM, margin=20)
    assert sums.size > 2000  # the ratio's own sampling error is about 1.5 %
    assert sums.std() / np.sqrt(area / n) == pytest.approx(1.0, abs=0.05)
    pixels = noise_stack[20:-20, 20:-20].std() * np.sqrt(n)
    assert 0.8 < pixels < 0.97  # correlated neighbours: single pixels look less noisy


def _second_moment(img, x, y, half=7):
    """Width of a star: sqrt of the mean of its second moments about its centroid, px."""
    ix, iy = round(x), round(y)
    box = img[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(np.float64)
    gy, gx = np.mgrid[-half : half + 1, -half : half + 1]
    total = box.sum()
    cx, cy = (box * gx).sum() / total, (box * gy).sum() / total
    return np.sqrt((box * ((gx - cx) ** 2 + (gy - cy) ** 2)).sum() / total / 2)


def test_identity_resample_is_exact():
    # The reference itself is returned as it is (masked pixels filled), not interpolated.
    rng = np.random.default_rng(8)
    data = (SKY + rng.normal(0.0, NOISE, SHAPE)).astype(np.float32)
    unc = rng.uniform(5.0, 15.0, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint16)
    mask[5, 7], mask[200, 100] = bits.BAD, bits.COSMIC | bits.SATURATED
    out, out_unc, out_mask = resample(data, unc, mask, np.eye(3), SHAPE)
    good = mask == 0
    np.testing.assert_array_equal(out[good], data[good])
    np.testing.assert_array_equal(out_unc[good], unc[good])
    np.testing.assert_array_equal(out_mask, mask)
    assert out[5, 7] in data[4:7, 6:9] and out_unc[5, 7] in unc[4:7, 6:9]  # a neighbour


# --------------------------------------------------------------------------------------
# The fast paths give what the plain algorithm gives


def _lanczos4_weights():
    """OpenCV's Lanczos-4 weights (``interpolateLanczos4``) of its 32 sub-pixel phases: taps
    -3..4 around the pixel, ``sinc(t) sinc(t / 4)`` normalised to sum 1, phase 0 exact."""
    t = np.arange(32)[:, None] / 32 + 3 - np.arange(8)[None, :]
    w = np.sinc(t) * np.sinc(t / 4)
    w[0] = np.eye(8)[3]
    return w / w.sum(axis=1, keepdims=True)


def _plain_lanczos4(image, inverse, shape):
    """Lanczos-4 at OpenCV's source positions, written plainly in float64: ``warpAffine``
    rounds the position to 1/1024 px (its two terms separately, as it adds them), then to
    the nearest 1/32 px; pixels beyond the frame repeat the edge."""
    gy, gx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    fixed = []
    for k in (0, 1):
        pos = np.rint(inverse[k, 0] * gx * 1024) + np.rint(
            (inverse[k, 1] * gy + inverse[k, 2]) * 1024
        )
        fixed.append((pos.astype(np.int64) + 16) >> 5)  # in 1/32 px
    (ix, fx), (iy, fy) = ((f >> 5, f & 31) for f in fixed)
    weights = _lanczos4_weights()
    out = np.zeros(shape)
    for j in range(8):
        yy = np.clip(iy - 3 + j, 0, image.shape[0] - 1)
        for i in range(8):
            xx = np.clip(ix - 3 + i, 0, image.shape[1] - 1)
            out += weights[fy, j] * weights[fx, i] * image[yy, xx]
    return out


def _plain_resample(data, uncertainty, mask, matrix, shape, kernel="lanczos4"):
    """The rules of the module docstring written plainly, on every pixel, in float64."""
    from scipy import ndimage

    ny, nx = data.shape
    inverse = np.linalg.inv(matrix)
    jacobian = abs(np.linalg.det(inverse[:2, :2]))
    in_mask = np.zeros(data.shape, np.uint16) if mask is None else mask.astype(np.uint16)
    in_mask[~np.isfinite(data)] |= bits.BAD
    good = in_mask == 0
    planes = [np.array(data, dtype=np.float64)]
    if uncertainty is not None:
        planes.append(np.square(np.asarray(uncertainty, dtype=np.float64)))
        good &= np.isfinite(planes[1])
    if not good.all():
        index = ndimage.distance_transform_edt(~good, return_distances=False, return_indices=True)
        for plane in planes:
            plane[~good] = plane[index[0][~good], index[1][~good]]
    linear, offset = inverse[:2, :2][::-1, ::-1], inverse[:2, 2][::-1]
    warp = dict(output_shape=shape, mode="nearest", output=np.float64)
    if kernel == "lanczos4":
        out = _plain_lanczos4(planes[0], inverse, shape)
    else:
        order = 1 if kernel == "bilinear" else int(kernel[-1])
        out = ndimage.affine_transform(planes[0], linear, offset, order=order, **warp)
    out_unc = None
    if uncertainty is not None:
        out_unc = np.sqrt(ndimage.affine_transform(planes[1], linear, offset, order=1, **warp))
    gy, gx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    xs = inverse[0, 0] * gx + (inverse[0, 1] * gy + inverse[0, 2])
    ys = inverse[1, 0] * gx + (inverse[1, 1] * gy + inverse[1, 2])
    tol = 1e-6
    inside = (xs >= -tol) & (xs <= nx - 1 + tol) & (ys >= -tol) & (ys <= ny - 1 + tol)
    x0 = np.clip(np.floor(xs), 0, nx - 2).astype(int)
    y0 = np.clip(np.floor(ys), 0, ny - 2).astype(int)
    fx, fy = np.clip(xs - x0, 0, 1), np.clip(ys - y0, 0, 1)
    corners = [(0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy))]
    corners += [(1, 0, (1 - fx) * fy), (1, 1, fx * fy)]
    out_mask = np.zeros(shape, np.uint16)
    for bit in (1 << k for k in range(16)):
        weight = sum(w * ((in_mask[y0 + j, x0 + i] & bit) != 0) for j, i, w in corners)
        out_mask[weight > 0.5] |= bit
        iy, ix = np.nonzero(in_mask & bit)
        fwd = np.rint(np.column_stack([ix, iy, np.ones(ix.size)]) @ matrix[:2].T).astype(int)
        on = (fwd[:, 0] >= 0) & (fwd[:, 0] < shape[1]) & (fwd[:, 1] >= 0) & (fwd[:, 1] < shape[0])
        out_mask[fwd[on, 1], fwd[on, 0]] |= bit
    out_mask[~inside] |= bits.NODATA
    out = np.where(inside, out * jacobian, 0.0)
    if out_unc is not None:
        out_unc = np.where(inside, out_unc * jacobian, 0.0)
    return out, out_unc, out_mask


def _similarity(scale, rot_deg, dx, dy):
    a = np.radians(rot_deg)
    m = np.eye(3)
    m[:2, :2] = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m[:2, 2] = dx, dy
    return m


@pytest.mark.parametrize(
    ("matrix", "out_shape"),
    [
        (_similarity(1.0, 0.25, 5.3, -3.7), (96, 80)),
        (_similarity(1.0, 0.0, -2.25, 1.75), (96, 80)),  # a pure shift
        (_similarity(1.0, 0.0, 3.0, -1.0), (96, 80)),  # a whole-pixel shift
        (_similarity(1.01, -30.0, 20.0, 30.0), (96, 80)),
        (_similarity(0.8, 180.0, 70.0, 100.0), (70, 110)),  # other output shape
        (np.array([[-1.0, 0.0, 79.0], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]), (96, 80)),  # flip
    ],
)
@pytest.mark.parametrize("fraction", [0.0, 0.003, 0.3])
@pytest.mark.parametrize("whole_frame", [0.0, np.inf])  # whole-frame paths, or windows only
@pytest.mark.parametrize("tiled", [False, True])
def test_resample_equals_the_plain_algorithm(
    matrix, out_shape, fraction, whole_frame, tiled, monkeypatch
):
    monkeypatch.setattr(align, "_WHOLE_FRAME", whole_frame)
    if tiled:  # as a frame beyond OpenCV's side limit: the warp in tiles of 24 x 24 px
        monkeypatch.setattr(align, "MAX_SIDE", 60)
        monkeypatch.setattr(align, "_TILE", 24)
    rng = np.random.default_rng(12)
    shape = (96, 80)
    data = SKY + rng.normal(0.0, NOISE, shape)
    data[rng.random(shape) < 0.01] += 1e4  # spikes
    data[3, 4] = np.nan
    unc = rng.uniform(5.0, 15.0, shape).astype(np.float32)
    unc[50, 60] = np.inf
    mask = np.zeros(shape, np.uint16)
    flagged = rng.random(shape) < fraction
    mask[flagged] = rng.choice([1, 2, 4, 6, 8], flagged.sum())
    mask[30:60, 0] |= bits.COSMIC  # the edges: the mask rule clamps outside pixels onto them
    mask[-1, 10:20] |= bits.SATURATED
    mask[40:52, 30:37] |= bits.FLAT_LOW  # a block larger than the first fill window
    got = resample(data.astype(np.float32), unc, mask, matrix, out_shape)
    want = _plain_resample(data.astype(np.float32), unc, mask, matrix, out_shape)
    np.testing.assert_array_equal(got[2], want[2])
    rotated = tiled and matrix[0, 1] != 0.0
    for g, w in zip(got[:2], want[:2], strict=True):
        assert g.dtype == np.float32
        if not rotated:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())
            continue
        # OpenCV rounds each source position to 1/32 px; in a rotated tile the position is
        # the same up to its last bits, so a few near the 1e4 spikes round to the next
        # 1/32 px. Each is still within 1/64 px of the transform; the rest are equal.
        close = np.isclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())
        assert close.mean() > 0.97


@pytest.mark.parametrize("kernel", ["bilinear", "bspline2", "bspline3", "bspline5"])
def test_the_other_kernels_equal_the_plain_algorithm_of_their_order(kernel):
    # The kernels bench_resample.py compares: scipy's B-spline of that order with its own
    # prefilter, and bilinear; uncertainty and mask do not depend on the kernel.
    rng = np.random.default_rng(13)
    shape = (96, 80)
    data = (SKY + rng.normal(0.0, NOISE, shape)).astype(np.float32)
    data[rng.random(shape) < 0.01] += 1e4
    unc = rng.uniform(5.0, 15.0, shape).astype(np.float32)
    mask = np.where(rng.random(shape) < 0.01, bits.COSMIC, 0).astype(np.uint16)
    matrix = _similarity(1.0, 0.25, 5.3, -3.7)
    got = resample(data, unc, mask, matrix, shape, kernel=kernel)
    want = _plain_resample(data, unc, mask, matrix, shape, kernel=kernel)
    lanczos = resample(data, unc, mask, matrix, shape)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[1], lanczos[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6 * np.abs(want[0]).max())
    assert np.abs(got[0] - lanczos[0]).max() > 1e-3 * NOISE  # another kernel indeed


def test_footprint_is_exact_at_the_tolerance():
    # Shifts that put a column exactly at the footprint tolerance: the per-row solution must
    # agree with the test on every pixel, rounding included.
    rng = np.random.default_rng(3)
    shape = (40, 50)
    for _ in range(200):
        k = rng.integers(-5, 6, 2)
        edge = rng.choice([-1e-6, 1e-6, 0.0, 5e-7])
        rot = rng.choice([0.0, 1e-9, 0.3, 90.0])
        matrix = _similarity(1.0, rot, k[0] + edge, k[1] - edge)
        inverse = np.linalg.inv(matrix)
        lo, hi = align._footprint(inverse, shape, shape)
        gy, gx = np.mgrid[0 : shape[0], 0 : shape[1]]
        want = align._inside(inverse, shape, gy, gx)
        got = (gx >= lo[:, None]) & (gx <= hi[:, None])
        np.testing.assert_array_equal(got, want)


def test_nearest_good_pixel_is_the_distance_transform_choice():
    # Among equally near good pixels, the windows pick the one the whole-frame transform
    # picks (so the filled values, and the spline around them, do not change).
    from scipy import ndimage

    rng = np.random.default_rng(5)
    shape = (300, 200)
    masked = rng.random(shape) < 0.003
    masked[100:112, 50:58] = True  # a saturated core
    masked[150:190, 120] = True  # a bleed column
    masked[:, :2] = masked[-1, :] = True  # frame edges
    masked[20:23, 20:23] = True
    bad = np.flatnonzero(masked)
    where = np.arange(masked.size, dtype=np.float64).reshape(shape)  # value = own index
    align._fill_nearest_good([where], bad)
    index = ndimage.distance_transform_edt(masked, return_distances=False, return_indices=True)
    want = np.ravel_multi_index((index[0].reshape(-1)[bad], index[1].reshape(-1)[bad]), shape)
    np.testing.assert_array_equal(where.reshape(-1)[bad].astype(np.int64), want)


def test_defect_pixels_of_the_mask_make_no_stars_nor_spikes():
    """HOT pixels (and a warm 3x3 cluster, which the sharpness test alone would take for
    a star) carry their bit from the master dark: star detection ignores them."""
    x, y, flux = _stars(n=60, seed=5)
    ix, iy, value = _hot_pixels()
    image = _image(x, y, flux, seed=6, hot=(ix, iy, value))
    mask = np.zeros(SHAPE, np.uint16)
    mask[iy, ix] = bits.HOT
    cy, cx = 128, 40
    image[cy - 1 : cy + 2, cx - 1 : cx + 2] += 3e3
    mask[cy - 1 : cy + 2, cx - 1 : cx + 2] |= bits.HOT
    defects = np.column_stack([np.r_[ix, cx], np.r_[iy, cy]]).astype(float)

    def near(points):
        points = np.asarray(points, float).reshape(-1, 2)
        d = np.hypot(*(points[:, None, :] - defects[None, :, :]).transpose(2, 0, 1))
        return int((d.min(axis=0) < 1.5).sum()) if len(points) else 0

    plain = align.star_list(image)
    assert near(plain["spikes"]) >= 35 and near(plain["stars"]) >= 1  # the cluster
    masked = align.star_list(image, mask)
    assert near(masked["spikes"]) == 0 and near(masked["stars"]) == 0
    assert len(masked["stars"]) >= 0.8 * len(plain["stars"]) - 1
