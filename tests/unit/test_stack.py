"""Stacking aligned products: known truth in, truth out."""

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import bits, io, stack
from ccdflow.combine import Clip, combine_stack
from ccdflow.demo import render_stars
from ccdflow.io import FrameError, read_product, write_product
from ccdflow.stack import stack_files


def _write(folder, name, data, unc, mask=None, exptime=60.0):
    header = fits.Header()
    header["EXPTIME"] = exptime
    header["OBJECT"] = "test"
    if mask is None:
        mask = np.zeros(data.shape, bits.MASK_DTYPE)
    return write_product(
        folder / name,
        data.astype(np.float32),
        header,
        uncertainty=np.broadcast_to(unc, data.shape).astype(np.float32),
        mask=mask,
        unit="electron",
    )


def _noise_frames(folder, n, sky, sigma, shape=(150, 150), seed=0):
    """Frames of flat sky ``sky[i]`` plus Gaussian noise ``sigma[i]``; their paths."""
    rng = np.random.default_rng(seed)
    sky = np.broadcast_to(np.asarray(sky, float), (n,))
    sigma = np.broadcast_to(np.asarray(sigma, float), (n,))
    return [
        _write(folder, f"f{i}.fits", sky[i] + sigma[i] * rng.standard_normal(shape), sigma[i])
        for i in range(n)
    ]


def test_sky_scaling_brings_frames_to_the_mean_sky_with_ideal_noise(tmp_path):
    n, sigma = 8, 10.0
    sky = np.array([100.0, 103.0, 98.0, 101.0, 99.0, 102.0, 100.0, 180.0])
    paths = _noise_frames(tmp_path, n, sky, sigma)

    res = stack_files(paths, scale="sky")
    ideal = sigma / np.sqrt(n)
    assert ideal <= np.std(res.data) < 1.10 * ideal
    assert np.mean(res.data) == pytest.approx(sky.mean(), abs=0.05 * sigma)
    assert np.mean(res.uncertainty) == pytest.approx(np.std(res.data), rel=0.10)
    np.testing.assert_allclose(res.sky, sky, atol=0.2 * sigma)
    assert res.mask.max() == 0 and res.coverage.mean() > 7.8
    assert res.header["SCALEMTH"].startswith("additive")
    assert res.header["SKYMEAN"] == pytest.approx(sky.mean(), abs=0.05 * sigma)

    # Without scaling the bright-sky frame is an outlier everywhere and is clipped.
    plain = stack_files(paths, scale="none")
    assert plain.coverage.mean() < 7.1
    assert np.mean(plain.data) == pytest.approx(sky[:-1].mean(), abs=0.05 * sigma)


def test_star_fluxes_survive_the_stack(tmp_path):
    shape, n, fwhm, read_noise = (200, 200), 5, 3.0, 6.0
    grid = np.arange(30, 200, 45.0)
    x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    rng = np.random.default_rng(3)
    x, y = x + rng.uniform(-0.5, 0.5, x.size), y + rng.uniform(-0.5, 0.5, y.size)
    flux = rng.uniform(1e5, 5e5, x.size)
    stars = render_stars(shape, x, y, flux, fwhm)
    sky = np.array([100.0, 120.0, 90.0, 110.0, 105.0])
    paths = []
    for i in range(n):
        model = sky[i] + stars
        sigma = np.sqrt(model + read_noise**2)
        noisy = model + sigma * rng.standard_normal(shape)
        paths.append(_write(tmp_path, f"s{i}.fits", noisy, sigma))

    res = stack_files(paths, scale="sky")
    yy, xx = np.indices(shape)
    for xi, yi, fi in zip(x, y, flux, strict=True):
        aperture = (xx - xi) ** 2 + (yy - yi) ** 2 <= (3 * fwhm) ** 2
        measured = res.data[aperture].sum() - aperture.sum() * sky.mean()
        assert measured == pytest.approx(fi, rel=0.01)
    # star pixels are clipped no more often than sky pixels (a few % of values at N = 5)
    cores = stars > 1000
    assert res.coverage[cores].mean() > 0.95 * n


@pytest.mark.parametrize("flagged", [True, False], ids=["masked", "unmasked"])
def test_no_cosmic_ray_survives(tmp_path, flagged):
    n, sigma, sky, shape = 5, 10.0, 100.0, (120, 120)
    rng = np.random.default_rng(7)
    hits = []
    paths = []
    for i in range(n):
        data = sky + sigma * rng.standard_normal(shape)
        mask = np.zeros(shape, bits.MASK_DTYPE)
        for _ in range(30):  # short tracks of 1..3 pixels, 200..5000 e-
            y0, x0 = rng.integers(5, shape[0] - 5, 2)
            track = (slice(y0, y0 + 1), slice(x0, x0 + rng.integers(1, 4)))
            data[track] += rng.uniform(200, 5000)
            mask[track] |= bits.COSMIC if flagged else 0
            hits.append(track)
        paths.append(_write(tmp_path, f"c{i}.fits", data, sigma, mask))

    res = stack_files(paths)
    noise = sigma / np.sqrt(n - 1)
    for track in hits:
        assert np.all(np.abs(res.data[track] - sky) < 5 * noise)
        assert np.all(res.coverage[track] < n)


def test_masks_are_honoured(tmp_path):
    n, sigma, sky, shape = 5, 10.0, 100.0, (100, 120)
    rng = np.random.default_rng(11)
    region = (slice(10, 40), slice(20, 70))
    paths, clean = [], []
    for i in range(n):
        data = sky + sigma * rng.standard_normal(shape)
        clean.append(data.astype(np.float32))
        mask = np.zeros(shape, bits.MASK_DTYPE)
        if i < 2:  # no data here: garbage values (NaN in one frame, huge in the other)
            data[region] = np.nan if i == 0 else 1e6
            mask[region] |= bits.NODATA
        mask[50, 60] |= bits.BAD  # bad in every frame
        if i == 4:
            mask[70, 5] |= bits.SATURATED  # excluded, but kept when not in reject_bits
        paths.append(_write(tmp_path, f"m{i}.fits", data, sigma, mask))

    res = stack_files(paths, clip=Clip(method="mean"))  # masks alone, no rejection
    assert (res.coverage[region] == 3).all()
    truth = np.mean([c[region] for c in clean[2:]], axis=0)  # the frames that have data
    np.testing.assert_allclose(res.data[region], truth, rtol=1e-6)
    assert np.mean(res.uncertainty[region]) == pytest.approx(sigma / np.sqrt(3), rel=1e-5)
    assert res.coverage[50, 60] == 0 and res.data[50, 60] == 0
    assert res.uncertainty[50, 60] == 0 and res.mask[50, 60] == bits.NOT_COVERED
    assert np.count_nonzero(res.mask) == 1
    assert res.coverage[70, 5] == n - 1

    clipped = stack_files(paths)  # the clip rejects a few % more on top of the masks
    assert (clipped.coverage[region] <= 3).all() and clipped.coverage[region].mean() > 2.8
    assert np.mean(clipped.data[region]) == pytest.approx(sky, abs=0.1 * sigma)
    assert clipped.mask[50, 60] == bits.NOT_COVERED and np.count_nonzero(clipped.mask) == 1

    kept = stack_files(
        paths, clip=Clip(method="mean"), reject_bits=stack.ALL_BITS & ~int(bits.SATURATED)
    )
    assert kept.coverage[70, 5] == n
    assert kept.header["REJBITS"] == stack.ALL_BITS & ~int(bits.SATURATED)


def test_defect_pixels_are_left_out_by_default(tmp_path):
    """HOT, DEAD and BAD_COLUMN are among the default reject bits: a hot pixel of one
    frame (its value far off) does not reach the stack, the others' mean does."""
    assert stack.ALL_BITS & bits.DEFECT_BITS == bits.DEFECT_BITS
    rng = np.random.default_rng(3)
    shape, sky, sigma = (40, 50), 100.0, 5.0
    paths, clean = [], []
    for i, bit in enumerate((bits.HOT, bits.DEAD, bits.BAD_COLUMN, 0)):
        data = sky + sigma * rng.standard_normal(shape)
        clean.append(data.copy())
        mask = np.zeros(shape, bits.MASK_DTYPE)
        if bit:
            data[10 + i, 20] = 5e4  # the defect's value: far off
            mask[10 + i, 20] = bit
        paths.append(_write(tmp_path, f"d{i}.fits", data, sigma, mask))
    res = stack_files(paths, clip=Clip(method="mean"))
    for i in range(3):
        others = [clean[j][10 + i, 20] for j in range(4) if j != i]
        assert res.coverage[10 + i, 20] == 3
        assert res.data[10 + i, 20] == pytest.approx(np.mean(others), rel=1e-5)
    assert res.header["REJBITS"] & bits.DEFECT_BITS == bits.DEFECT_BITS


def test_a_pixel_only_cleaned_cosmic_rays_cover_takes_their_cleaned_value(tmp_path):
    # A one-frame stack (and a pixel hit in every frame) has no unflagged value at a
    # cosmic-ray pixel; the frames hold its cleaned value: use it, flagged COSMIC.
    sigma, sky, shape = 10.0, 100.0, (60, 70)
    rng = np.random.default_rng(3)
    frames = []
    for i in range(2):
        data = sky + sigma * rng.standard_normal(shape)
        mask = np.zeros(shape, bits.MASK_DTYPE)
        mask[20, 30] |= bits.COSMIC  # hit (and cleaned) in both frames
        mask[40, 10 + i] |= bits.COSMIC  # hit in one frame only
        mask[5, 5] |= bits.COSMIC | bits.SATURATED  # not just a cleaned cosmic ray
        frames.append((data.astype(np.float32), mask))
    paths = [_write(tmp_path, f"k{i}.fits", d, sigma, m) for i, (d, m) in enumerate(frames)]

    single = stack_files(paths[:1])
    data0, mask0 = frames[0]
    cosmic = mask0 == bits.COSMIC
    np.testing.assert_array_equal(single.data[cosmic], data0[cosmic])
    np.testing.assert_allclose(single.uncertainty[cosmic], sigma, rtol=1e-6)
    assert (single.mask[cosmic] == bits.COSMIC).all() and (single.coverage[cosmic] == 0).all()
    assert single.data[5, 5] == 0 and single.mask[5, 5] == bits.NOT_COVERED
    assert np.count_nonzero(single.mask) == 3

    pair = stack_files(paths, clip=Clip(method="mean"))
    assert pair.data[20, 30] == pytest.approx((frames[0][0][20, 30] + frames[1][0][20, 30]) / 2)
    assert pair.uncertainty[20, 30] == pytest.approx(sigma / np.sqrt(2), rel=1e-6)
    assert pair.mask[20, 30] == bits.COSMIC
    # where the other frame has an unflagged value, that value alone is used
    assert pair.data[40, 10] == frames[1][0][40, 10] and pair.mask[40, 10] == 0
    assert pair.coverage[40, 10] == 1


def test_bands_give_the_same_result_and_read_each_row_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    paths = _noise_frames(tmp_path, 6, rng.uniform(90, 110, 6), rng.uniform(8, 12, 6))
    kwargs = dict(scale="sky", weight="inverse_variance")
    whole = stack_files(paths, **kwargs)

    reads = []
    original = io.ImageRows.rows

    def rows(self, y0, y1, cols=slice(None), out=None):
        reads.append((self.path, self.header.get("EXTNAME", "PRIMARY"), y0, y1))
        return original(self, y0, y1, cols, out)

    monkeypatch.setattr(io.ImageRows, "rows", rows)
    banded = stack_files(paths, mem_limit_mb=0.5, **kwargs)
    for name in ("data", "uncertainty", "mask", "coverage"):
        np.testing.assert_array_equal(getattr(banded, name), getattr(whole, name))
    np.testing.assert_array_equal(banded.weights, whole.weights)

    planes = {(p, e) for p, e, _, _ in reads}
    assert len(planes) == 3 * len(paths)
    for plane in planes:
        spans = sorted((y0, y1) for p, e, y0, y1 in reads if (p, e) == plane)
        assert len(spans) > 1
        assert [s[0] for s in spans] == [0] + [s[1] for s in spans[:-1]]  # no overlap
        assert spans[-1][1] == 150


def test_inverse_variance_weights_beat_the_plain_mean_with_a_noisy_frame(tmp_path):
    sigma = np.array([10.0, 10.0, 10.0, 10.0, 50.0])
    paths = _noise_frames(tmp_path, 5, 100.0, sigma, seed=2)
    plain = stack_files(paths, clip=Clip(method="mean"))
    weighted = stack_files(paths, clip=Clip(method="mean"), weight="inverse_variance")

    ideal = 1 / np.sqrt(np.sum(1 / sigma**2))
    assert np.std(plain.data) == pytest.approx(np.sqrt(np.sum(sigma**2)) / 5, rel=0.10)
    assert np.std(weighted.data) == pytest.approx(ideal, rel=0.10)
    assert np.std(weighted.data) < 0.6 * np.std(plain.data)
    assert np.mean(weighted.uncertainty) == pytest.approx(np.std(weighted.data), rel=0.10)
    np.testing.assert_allclose(weighted.weights / weighted.weights[0], sigma[0] ** 2 / sigma**2)
    assert weighted.header["WEIGHTS"].startswith("1/median")


@pytest.mark.parametrize("method", ["sigma_clip", "sigma_clip_median", "median", "mean", "minmax"])
def test_unweighted_stack_rejects_as_combine_stack_does(tmp_path, method):
    rng = np.random.default_rng(9)
    cube = (100 + 10 * rng.standard_normal((5, 40, 50))).astype(np.float32)
    cube[rng.random(cube.shape) < 0.02] += 500.0
    masks = np.where(rng.random(cube.shape) < 0.05, bits.BAD, 0).astype(bits.MASK_DTYPE)
    paths = [_write(tmp_path, f"e{i}.fits", cube[i], 10.0, masks[i]) for i in range(5)]

    res = stack_files(paths, clip=Clip(method=method))
    data, _, nused = combine_stack(np.where(masks > 0, 0, cube), masks > 0, Clip(method=method))
    np.testing.assert_allclose(res.data, data, rtol=1e-6)
    np.testing.assert_array_equal(res.coverage, nused)
    assert res.header["COMBMETH"] == method
    assert res.header["NCOMBINE"] == 5 and res.header["IMCMB001"] == "e0.fits"


def test_header_and_round_trip(tmp_path):
    paths = _noise_frames(tmp_path, 3, 100.0, 10.0, shape=(20, 30))
    res = stack_files(paths)
    h = res.header
    assert h["PRODTYPE"] == "STACK" and h["BUNIT"] == "electron" and h["EXPTIME"] == 60.0
    clip = (h["CLIPLOW"], h["CLIPHIGH"], h["CLIPSIG"], h["CLIPITER"])
    assert clip == (3.0, 3.0, "winsorized", 5)
    out = write_product(tmp_path / "stack.fits", res.data, h, res.uncertainty, res.mask)
    data, header, unc, mask = read_product(out)
    np.testing.assert_array_equal(data, res.data)
    np.testing.assert_array_equal(unc, res.uncertainty)
    np.testing.assert_array_equal(mask, res.mask)
    assert header["IMCMB003"] == "f2.fits"


def test_a_file_of_another_shape_is_named(tmp_path):
    paths = _noise_frames(tmp_path, 3, 100.0, 10.0, shape=(40, 50))
    odd = _write(tmp_path, "odd.fits", np.zeros((40, 51)), 1.0)
    with pytest.raises(FrameError, match=r"odd\.fits: shape_mismatch"):
        stack_files([*paths, odd])


def test_inputs_without_uncertainty_or_with_bad_parameters_are_refused(tmp_path):
    paths = _noise_frames(tmp_path, 3, 100.0, 10.0, shape=(20, 30))
    bare = tmp_path / "bare.fits"
    fits.PrimaryHDU(np.zeros((20, 30), np.float32)).writeto(bare)
    with pytest.raises(FrameError, match=r"bare\.fits: no_uncertainty"):
        stack_files([*paths, bare])
    with pytest.raises(ValueError, match="mean-type"):
        stack_files(paths, clip=Clip(method="median"), weight="inverse_variance")
    with pytest.raises(ValueError, match="scale"):
        stack_files(paths, scale="flux")
