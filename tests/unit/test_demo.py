"""The synthetic night: raw frames follow the documented model and the truth recovers it."""

import json
import math
import re

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import demo

SEED = 7


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return demo.make_night(tmp_path_factory.mktemp("night"), preset="test", seed=SEED)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """Few stars, so that each has an isolated one to measure."""
    counts = {"n_bias": 1, "n_darks": 1, "n_flats": 1, "n_stars": 8}
    return demo.make_night(tmp_path_factory.mktemp("sparse"), preset="test", seed=SEED, **counts)


def _raw(truth, kind=None, file=None):
    """(frame entry, float64 ADU image) of every raw frame of one type (or one file)."""
    out = []
    for frame in truth["frames"]:
        if (kind is None or frame["type"] == kind) and (file is None or frame["file"] == file):
            out.append((frame, fits.getdata(truth["raw_dir"] / frame["file"]).astype(np.float64)))
    return out


def _isolated(truth, filt, distance=17.0, fraction=0.002):
    """Index of the brightest star with no other star above ``fraction`` of its flux nearby."""
    stars = truth["stars"]
    x, y, flux = (np.asarray(stars[c]) for c in ("x", "y", f"flux_{filt}"))
    for i in np.argsort(flux)[::-1]:
        near = np.hypot(x - x[i], y - y[i]) < distance
        near[i] = False
        if not np.any(flux[near] > fraction * flux[i]):
            return i
    raise AssertionError("no isolated star")


def _stars_only(truth, frame):
    """Noiseless star image of a light frame (e-/s, before the flat) and one isolated star.

    Returns the image, the star's index and its position in the frame (px).
    """
    t, flat = frame["exptime"], truth["flat"][frame["filter"]]
    electrons = demo.expected_electrons(truth, frame) - truth["dark_rate"] * t
    image = electrons / flat / t - frame["sky_e_per_s"]
    i = _isolated(truth, frame["filter"])
    dither = {k: frame[k] for k in ("dx", "dy", "rot_deg")}
    xy = demo.transform_positions(
        truth["stars"]["x"][i], truth["stars"]["y"][i], shape=flat.shape, **dither
    )
    return image, i, xy


def test_same_seed_gives_identical_bytes_and_another_seed_different_data(tmp_path):
    small = {"n_bias": 1, "n_darks": 1, "n_flats": 1, "n_lights": 1}
    a = demo.make_night(tmp_path / "a", preset="test", seed=3, **small)
    b = demo.make_night(tmp_path / "b", preset="test", seed=3, **small)
    c = demo.make_night(tmp_path / "c", preset="test", seed=4, **small)
    files = [f["file"] for f in a["frames"]]
    assert files == [f["file"] for f in c["frames"]]
    for name in files:
        raw = (a["raw_dir"] / name).read_bytes()
        assert raw == (b["raw_dir"] / name).read_bytes(), name
        assert not np.array_equal(
            fits.getdata(a["raw_dir"] / name), fits.getdata(c["raw_dir"] / name)
        ), name


def test_raw_files_are_uint16_with_bzero_and_maxim_headers(night):
    names = sorted(p.name for p in night["raw_dir"].iterdir())
    assert names == sorted(f["file"] for f in night["frames"])
    wanted = {"bias_001.fits", "dark_300s_001.fits", "flat_V_001.fits", "flat_R_005.fits"}
    wanted |= {"light_M13demo_V_060s_001.fits", "light_M13demo_R_120s_002.fits"}
    assert wanted <= set(names)
    keys = ["IMAGETYP", "EXPTIME", "EXPOSURE", "FILTER", "DATE-OBS", "GAIN", "RDNOISE"]
    keys += ["XBINNING", "YBINNING", "CCD-TEMP", "INSTRUME", "TELESCOP"]
    dates = []
    for frame in night["frames"]:
        with fits.open(night["raw_dir"] / frame["file"], do_not_scale_image_data=True) as hdul:
            hdr, data = hdul[0].header, hdul[0].data
            assert len(hdul) == 1 and data.shape == (96, 128)
        assert (hdr["BITPIX"], hdr["BZERO"], hdr["BSCALE"]) == (16, 32768, 1)
        assert "DATE" not in hdr  # nothing depends on the wall clock
        assert all(k in hdr and hdr.comments[k] for k in keys)
        assert hdr["IMAGETYP"] == frame["imagetyp"] and hdr["EXPTIME"] == frame["exptime"]
        assert ("OBJECT" in hdr) == (frame["type"] == "light")
        if frame["type"] in ("bias", "dark"):
            assert hdr["FILTER"] == "V"  # closed shutter, filter wheel left at V
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", hdr["DATE-OBS"])
        dates.append(hdr["DATE-OBS"])
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    kinds = [f["type"] for f in night["frames"]]
    assert kinds == sorted(kinds, key=["bias", "dark", "flat", "light"].index)
    imagetyps = {"Bias Frame", "Dark Frame", "Flat Field", "Light Frame"}
    assert {f["imagetyp"] for f in night["frames"]} == imagetyps


def test_truth_on_disk_matches_the_returned_truth(night):
    again = demo.load_truth(night["raw_dir"].parent)
    assert again.keys() == night.keys()
    assert json.loads((night["truth_dir"] / "truth.json").read_text())["seed"] == SEED
    np.testing.assert_array_equal(again["bias"], night["bias"])
    np.testing.assert_array_equal(again["flat"]["R"], night["flat"]["R"])
    assert again["bias"].dtype == np.float32 and again["cosmics"]["dark_300s_001"].dtype == bool
    assert demo.NightSpec(**night["spec"]) == demo.PRESETS["test"]
    assert list(night["stars"].colnames) == ["id", "x", "y", "flux_V", "flux_R"]
    assert len(night["stars"]) == 60


def test_mean_bias_recovers_truth_bias(night):
    frames = [data for _, data in _raw(night, "bias")]
    error = night["spec"]["read_noise"] / night["spec"]["gain"] / math.sqrt(len(frames))
    residual = np.mean(frames, axis=0) - night["bias"]
    assert abs(residual.mean()) < 0.1 * error  # the level, from ~10^4 pixels
    assert 0.8 * error < residual.std() < 1.5 * error
    # The fixed pattern is really there: columns differ by more than the error of the mean.
    assert np.std(np.median(night["bias"], axis=0)) > 0.25 * night["spec"]["bias_pattern_amp"]


def test_dark_minus_bias_gives_the_dark_current(night):
    spec = night["spec"]
    (frame, dark), (_, bias) = _raw(night, "dark")[0], _raw(night, "bias")[0]
    expected = spec["dark_current"] * frame["exptime"] / spec["gain"]
    assert np.median(dark - bias) == pytest.approx(expected, abs=0.3)
    # Hot pixels: the median of the darks (rejects cosmic rays) recovers their rate.
    darks = np.median([d for _, d in _raw(night, "dark")], axis=0)
    rate = (darks - night["bias"]) * spec["gain"] / frame["exptime"]
    hot = night["dark_rate"] > 1.0
    assert 5 <= hot.sum() <= 30
    np.testing.assert_allclose(rate[hot], night["dark_rate"][hot], rtol=0.15)


def test_flat_frame_matches_truth_flat_within_poisson_noise(night):
    spec, flat = night["spec"], night["flat"]["V"]
    ny, nx = flat.shape
    centre = (slice(ny // 4, 3 * ny // 4), slice(nx // 4, 3 * nx // 4))
    assert np.median(flat[centre]) == pytest.approx(1.0, abs=1e-6)
    assert np.median(flat[:8, :8]) < 0.93  # vignetted corner
    frame, data = _raw(night, "flat")[0]
    assert frame["filter"] == "V" and 0.8 * 30000 <= frame["level_e"] <= 1.2 * 30000
    signal = data - night["bias"] - night["dark_rate"] * frame["exptime"] / spec["gain"]
    ratio = signal / np.median(signal[centre]) / flat
    noise = 1 / math.sqrt(frame["level_e"])
    assert abs(np.median(ratio) - 1) < noise
    assert 0.8 * noise < np.std(ratio - 1) < 1.3 * noise
    # V and R differ (vignetting, dust) but share the pixel response non-uniformity.
    assert np.std(night["flat"]["V"] / night["flat"]["R"]) > 0.003


def test_render_stars_conserves_flux_and_aperture_recovers_truth_flux(sparse):
    image = demo.render_stars((40, 50), [20.3], [17.8], [1234.5], fwhm=3.0)
    assert image.sum() == pytest.approx(1234.5, rel=1e-6)
    for frame in [f for f in sparse["frames"] if f["type"] == "light"]:
        image, i, (x, y) = _stars_only(sparse, frame)
        yy, xx = np.indices(image.shape)
        aperture = np.hypot(xx - x, yy - y) < 2.5 * sparse["spec"]["fwhm"]
        flux = sparse["stars"][f"flux_{frame['filter']}"][i]
        assert image[aperture].sum() == pytest.approx(flux, rel=0.01)


def test_transform_positions_is_a_counter_clockwise_rotation_about_the_centre():
    shape = (101, 201)  # centre (100, 50)
    x, y = demo.transform_positions(
        [110.0, 100.0], [50.0, 50.0], dx=0, dy=0, rot_deg=90, shape=shape
    )
    np.testing.assert_allclose([x, y], [[100, 100], [60, 50]], atol=1e-12)
    x, y = demo.transform_positions(3.0, 4.0, dx=1.5, dy=-2.0, rot_deg=0, shape=shape)
    assert (x, y) == (4.5, 2.0)


def test_star_centroid_lands_at_transformed_position(sparse):
    for frame in [f for f in sparse["frames"] if f["type"] == "light"]:
        image, _, (x, y) = _stars_only(sparse, frame)
        yy, xx = np.indices(image.shape)
        box = (abs(xx - round(x)) <= 6) & (abs(yy - round(y)) <= 6)
        weight = np.where(box, image, 0.0)
        assert (weight * xx).sum() / weight.sum() == pytest.approx(x, abs=0.02)
        assert (weight * yy).sum() / weight.sum() == pytest.approx(y, abs=0.02)


def test_cosmic_mask_marks_the_pixels_with_extra_charge(night):
    spec = night["spec"]
    assert not any(f["type"] in ("bias", "flat") and "cosmics" in f for f in night["frames"])
    total = 0
    for frame, data in _raw(night, "light") + _raw(night, "dark"):
        mask = night["cosmics"][frame["file"].removesuffix(".fits")]
        assert mask.sum() == frame["n_cosmic_pixels"]
        total += mask.sum()
        expected = demo.expected_electrons(night, frame)
        excess = (data - night["bias"]) * spec["gain"] - expected
        sigma = np.sqrt(expected + spec["read_noise"] ** 2)
        unsaturated = data < spec["saturation"]
        gross = (excess > 8 * sigma) & unsaturated
        assert not np.any(gross & ~mask), frame["file"]
        hit = mask & unsaturated
        assert np.count_nonzero(excess[hit] > 3 * sigma[hit]) >= 0.9 * hit.sum()
    assert total > 50


def test_saturated_stars_are_listed_and_clipped(night):
    spec = night["spec"]
    flagged = 0
    for frame, data in _raw(night, "light"):
        assert frame["n_saturated_pixels"] == np.count_nonzero(data == spec["saturation"])
        for i in frame["saturated_star_ids"]:
            x, y = demo.transform_positions(
                night["stars"]["x"][i], night["stars"]["y"][i], dx=frame["dx"],
                dy=frame["dy"], rot_deg=frame["rot_deg"], shape=data.shape,
            )  # fmt: skip
            ix, iy = round(float(x)), round(float(y))
            assert data[iy - 1 : iy + 2, ix - 1 : ix + 2].max() == spec["saturation"]
            flagged += 1
    assert flagged > 0
    assert data.max() <= 65535 and data.min() >= 0


def test_overrides_and_spec_validation(tmp_path):
    truth = demo.make_night(tmp_path, preset="test", shape=(40, 56), filters=("R",), n_lights=1)
    assert truth["bias"].shape == (40, 56) and set(truth["flat"]) == {"R"}
    assert fits.getval(truth["raw_dir"] / "dark_300s_001.fits", "FILTER") == "V"
    with pytest.raises(ValueError, match="sky"):
        demo.NightSpec(filters=("B", "V"))
    with pytest.raises(TypeError):
        demo.make_night(tmp_path, preset="test", no_such_field=1)


def test_cli_refuses_non_empty_raw_dir_without_force(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    precious = raw / "bias_001.fits"
    precious.write_bytes(b"observer data")
    argv = [str(tmp_path), "--preset", "test", "--size", "32", "48"]
    assert demo.main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert precious.read_bytes() == b"observer data"
    assert not (tmp_path / "truth").exists()
    assert demo.main([*argv, "--force", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "bias" in out and "light" in out and str(raw) in out
    assert fits.getdata(precious).shape == (32, 48)
