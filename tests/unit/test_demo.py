"""The synthetic night: raw frames follow the documented model and the truth recovers it."""

import hashlib
import json
import math
import re
from datetime import datetime, timedelta

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


# --- Camera styles ---------------------------------------------------------------------------

# sha256 of each raw file of a tiny default-style night, recorded before camera styles existed:
# the default ("maxim") output must never change by accident.
_TINY = dict(shape=(24, 40), n_bias=1, n_darks=1, n_flats=1, n_lights=1, n_stars=10)
_TINY_SHA256 = {
    "bias_001.fits": "23ee04e02491bea60a20886fe67ba192edce0d59ef46995290f2890c00c3efaa",
    "dark_300s_001.fits": "c9bb6d4e035840eaf206bb1cebdb9829f9c94d52ab200e62b34ec195a61a2c90",
    "flat_V_001.fits": "bb1fee5b310324c84b437a1eb60263bf87af90df323c404bbe2ad8d5620e2cb4",
    "flat_R_001.fits": "ca3d693e55e7281d10c1e7cd5187f7c667b907ba39b84303e37c9055462443f1",
    "light_M13demo_V_060s_001.fits": (
        "8022db0892950e2dcdbb13949ac52ee26482c43627d34b31d9f84e33d913eae4"
    ),
    "light_M13demo_R_060s_001.fits": (
        "caa21f412ecee05a97978382203c223d9b016f140031270f200cc2fbd7554c11"
    ),
    "light_M13demo_V_120s_001.fits": (
        "f4f2b91cee933313dd6b5a5a93823a6afd7a2e98b1ff385a0057f1e4c22458e3"
    ),
    "light_M13demo_R_120s_001.fits": (
        "84e7295b7ba5746a407f7ab05c1cfb3226cfdfb6c64406a3ef56686f877b451e"
    ),
}
_SMALL = dict(shape=(40, 56), n_bias=3, n_darks=2, n_flats=2, n_lights=2, n_stars=12)
_TYPES = {
    "pro": {"bias": "zero", "dark": "dark", "flat": "flat", "light": "object"},
    "amateur": {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Frame"}
    | {"light": "Light Frame"},
}


def _style(tmp_path_factory, camera, **extra):
    path = tmp_path_factory.mktemp(camera)
    return demo.make_night(path, preset="test", seed=SEED, camera=camera, **_SMALL, **extra)


@pytest.fixture(scope="module")
def maxim(tmp_path_factory):
    return _style(tmp_path_factory, "maxim")


@pytest.fixture(scope="module")
def pro(tmp_path_factory):
    return _style(tmp_path_factory, "pro")


@pytest.fixture(scope="module")
def amateur(tmp_path_factory):
    return _style(tmp_path_factory, "amateur")


@pytest.fixture(scope="module")
def nameonly(tmp_path_factory):
    return _style(tmp_path_factory, "nameonly", n_nights=2)


def _header(truth, frame):
    return fits.getheader(truth["raw_dir"] / frame["file"])


def _row_level(truth, frame):
    return truth["overscan"][frame["file"].removesuffix(".fits")]


def test_default_camera_is_byte_identical_to_before_camera_styles(tmp_path):
    for extra in ({}, {"camera": "maxim", "n_nights": 1}):
        truth = demo.make_night(
            tmp_path / str(len(extra)), preset="test", seed=11, **_TINY, **extra
        )
        names = [f["file"] for f in truth["frames"]]
        assert names == list(_TINY_SHA256)
        for name in names:
            digest = hashlib.sha256((truth["raw_dir"] / name).read_bytes()).hexdigest()
            assert digest == _TINY_SHA256[name], name
        assert truth["camera"]["style"] == "maxim" and "overscan" not in truth
        assert {f["night"] for f in truth["frames"]} == {"2024-03-15"}


def test_pro_headers_have_obstype_and_sections(pro):
    spec = pro["spec"]
    (ny, nx), oc = spec["shape"], spec["overscan_cols"]
    assert oc == 32
    sections = {"BIASSEC": f"[{nx + 3}:{nx + 32},1:{ny}]", "TRIMSEC": f"[1:{nx},1:{ny}]"}
    sections["DATASEC"] = sections["TRIMSEC"]
    assert pro["camera"]["raw_shape"] == [ny, nx + 32]
    assert pro["camera"]["biassec"] == sections["BIASSEC"]
    for frame in pro["frames"]:
        with fits.open(pro["raw_dir"] / frame["file"], do_not_scale_image_data=True) as hdul:
            hdr, data = hdul[0].header, hdul[0].data
            assert data.shape == (ny, nx + 32) and hdr["NAXIS1"] == nx + 32
        assert (hdr["BITPIX"], hdr["BZERO"]) == (16, 32768)
        assert {k: hdr[k] for k in sections} == sections
        assert hdr["OBSTYPE"] == frame["imagetyp"] == _TYPES["pro"][frame["type"]]
        assert hdr["EXPTIME"] == frame["exptime"] and hdr["FILTER"] == frame["filter"]
        assert hdr["DATE-OBS"] == frame["date_obs"]
        assert (hdr["GAIN"], hdr["RDNOISE"]) == (spec["gain"], spec["read_noise"])
        assert ("OBJECT" in hdr) == (frame["type"] == "light")
        assert not {"IMAGETYP", "EXPOSURE", "XBINNING", "YBINNING"} & set(hdr)


def test_pro_overscan_holds_only_the_row_bias_level_and_read_noise(pro):
    spec = pro["spec"]
    (ny, nx), noise = spec["shape"], spec["read_noise"] / spec["gain"]
    offsets, ramps = [], []
    for frame, data in _raw(pro):
        level = _row_level(pro, frame)
        ramp = np.linspace(-0.5, 0.5, ny)
        expected = spec["bias_level"] + frame["bias_offset"] + frame["bias_ramp"] * ramp
        np.testing.assert_allclose(level, expected, rtol=0, atol=1e-9)
        assert level[-1] - level[0] == pytest.approx(frame["bias_ramp"])
        offsets.append(frame["bias_offset"])
        ramps.append(frame["bias_ramp"])
        strip = data[:, nx:]  # the whole strip, the two skipped columns too: no light anywhere
        assert np.std(strip - level[:, None]) == pytest.approx(noise, rel=0.15), frame["file"]
        biassec = data[:, nx + 2 :]
        error = 1.25 * noise / math.sqrt(biassec.shape[1])  # of a median of one row
        residual = np.median(biassec, axis=1) - level
        assert abs(residual.mean()) < 4 * error / math.sqrt(ny), frame["file"]
        assert np.abs(residual).max() < 5 * error, frame["file"]
        # A straight line through the row medians recovers offset and ramp.
        slope, mean = np.polyfit(ramp, np.median(biassec, axis=1), 1)
        assert mean - spec["bias_level"] == pytest.approx(frame["bias_offset"], abs=0.5)
        assert slope == pytest.approx(frame["bias_ramp"], abs=2.0)
    # The level moves from frame to frame by more than a master bias could absorb.
    assert np.std(offsets) > 2.0 and np.ptp(offsets) < 2 * 14.0
    assert np.ptp(ramps) > 2.0 and np.max(np.abs(ramps)) <= spec["bias_ramp"]


def test_pro_image_area_is_the_maxim_frame_plus_the_row_level(pro, maxim):
    spec = pro["spec"]
    nx, bias_level = spec["shape"][1], spec["bias_level"]
    np.testing.assert_array_equal(pro["bias"], maxim["bias"])  # the image-area pattern
    assert demo.NightSpec(**pro["spec"]).camera == "pro"
    assert pro["overscan"].keys() == {f["file"].removesuffix(".fits") for f in pro["frames"]}
    pairs = list(zip(_raw(pro), _raw(maxim), strict=True))
    for (frame, data), (other, ref) in pairs:
        assert frame["file"] == other["file"] and frame["date_obs"] == other["date_obs"]
        shift = (_row_level(pro, frame) - bias_level)[:, None]
        np.testing.assert_allclose(demo.frame_bias(pro, frame), pro["bias"] + shift)
        diff = data[:, :nx] - ref - shift
        ok = (ref < spec["saturation"]) & (data[:, :nx] < spec["saturation"])
        assert np.abs(diff[ok]).max() <= 1.0 and abs(diff[ok].mean()) < 0.05, frame["file"]
    # Overscan-subtracted bias frames average to the truth bias without its level.
    biases = [d[:, :nx] - _row_level(pro, f)[:, None] for f, d in _raw(pro, "bias")]
    error = spec["read_noise"] / spec["gain"] / math.sqrt(len(biases))
    residual = np.mean(biases, axis=0) - (pro["bias"] - bias_level)
    assert abs(residual.mean()) < 0.2 * error and residual.std() < 1.5 * error


def test_amateur_headers_are_nina_like_and_data_as_maxim(amateur, maxim):
    gain = amateur["spec"]["gain"]
    assert amateur["camera"]["filter_keyword"] == "FILTNAME"
    for (frame, data), (other, ref) in zip(_raw(amateur), _raw(maxim), strict=True):
        assert frame["file"] == other["file"]
        np.testing.assert_array_equal(data, ref)
        hdr = _header(amateur, frame)
        assert hdr["IMAGETYP"] == frame["imagetyp"] == _TYPES["amateur"][frame["type"]]
        assert hdr["EXPOSURE"] == frame["exptime"] and "EXPTIME" not in hdr
        assert hdr["FILTNAME"] == frame["filter"] and "FILTER" not in hdr
        assert hdr["XBINNING"] == hdr["YBINNING"] == 1
        assert hdr.get("OBJECT") == ("M13demo" if frame["type"] == "light" else None)
        assert hdr["EGAIN"] == gain and hdr["GAIN"] == 100  # GAIN: a setting, not e-/ADU
        assert hdr["DATE-OBS"] == frame["date_obs"]
        assert not {"RDNOISE", "OBSTYPE"} & set(hdr)


def test_nameonly_has_no_type_card_and_types_only_in_file_names(nameonly, maxim):
    patterns = {
        "bias": r"bias_\d{3}\.fits",
        "dark": r"dark_(?P<exptime>\d+)s_\d{3}\.fits",
        "flat": r"flat_(?P<filter>[^_]+)_\d{3}\.fits",
        "light": r"(?P<object>[^_]+)_(?P<filter>[^_]+)_(?P<exptime>\d+)s_\d{3}\.fits",
    }
    keys = {"EXPTIME", "FILTER", "DATE-OBS", "GAIN", "RDNOISE", "XBINNING", "YBINNING"}
    for frame in nameonly["frames"]:
        name, hdr = frame["file"], _header(nameonly, frame)
        assert not {"IMAGETYP", "OBSTYPE"} & set(hdr) and frame["imagetyp"] is None
        assert keys <= set(hdr) and ("OBJECT" in hdr) == (frame["type"] == "light")
        # Types in the order a user would write the rules: the light pattern comes last.
        kind = next(k for k, p in patterns.items() if re.fullmatch(p, name))
        assert kind == frame["type"], name
        fields = re.fullmatch(patterns[kind], name).groupdict()
        if "exptime" in fields:
            assert float(fields["exptime"]) == hdr["EXPTIME"] == frame["exptime"]
        if "filter" in fields:
            assert fields["filter"] == hdr["FILTER"] == frame["filter"]
        assert fields.get("object", "M13demo") == "M13demo"
    lights = {f["file"] for f in nameonly["frames"] if f["type"] == "light"}
    assert "M13demo_V_060s_001.fits" in lights and "M13demo_R_120s_002.fits" in lights
    assert not any(n.startswith("light_") for n in lights)
    # Calibrations come first, so with the same seed they are the maxim ones.
    calibrations = [(f, d) for f, d in _raw(nameonly) if f["type"] != "light"]
    assert len(calibrations) == 9
    for (frame, data), (other, ref) in zip(calibrations, _raw(maxim), strict=False):
        assert frame["file"] == other["file"]
        np.testing.assert_array_equal(data, ref)


def test_two_nights_split_the_lights_and_keep_calibrations_on_night_one(nameonly):
    spec, frames = nameonly["spec"], nameonly["frames"]
    assert spec["n_nights"] == 2
    calibrations = [f for f in frames if f["type"] != "light"]
    assert {(f["night"], f["night_index"]) for f in calibrations} == {("2024-03-15", 1)}
    assert all(f["date_obs"].startswith("2024-03-15T") for f in calibrations)
    nights = {}
    for f in frames:
        if f["type"] == "light":
            nights.setdefault(f["night"], []).append(f)
    assert list(nights) == ["2024-03-15", "2024-03-16"]
    first, second = nights.values()
    assert all(f["night_index"] == 1 and f["file"].endswith("_001.fits") for f in first)
    assert all(f["night_index"] == 2 and f["file"].endswith("_002.fits") for f in second)
    assert max(f["date_obs"] for f in calibrations) < first[0]["date_obs"]
    for a, b in zip(first, second, strict=True):  # same sequence, one day later
        assert (a["exptime"], a["filter"]) == (b["exptime"], b["filter"])
        day = datetime.fromisoformat(b["date_obs"]) - datetime.fromisoformat(a["date_obs"])
        assert day == timedelta(days=1)
        assert _header(nameonly, b)["DATE-OBS"] == b["date_obs"]
        assert b["date_obs"].startswith("2024-03-16T")
    dates = [f["date_obs"] for f in frames]
    assert dates == sorted(dates)  # file order is acquisition order
    # Night-2 lights follow the same model (same field, same truth).
    frame, data = _raw(nameonly, file=second[-1]["file"])[0]
    excess = (data - nameonly["bias"]) * spec["gain"] - demo.expected_electrons(nameonly, frame)
    assert abs(np.median(excess)) < 2.0


def test_camera_and_nights_are_validated():
    with pytest.raises(ValueError, match="camera"):
        demo.NightSpec(camera="sbig")
    for n in (0, 4):  # the demo preset has 3 lights per filter and exposure
        with pytest.raises(ValueError, match="n_nights"):
            demo.NightSpec(n_nights=n)
    with pytest.raises(ValueError, match="overscan_cols"):
        demo.NightSpec(overscan_cols=2)


def test_cli_camera_and_nights(tmp_path, capsys):
    argv = ["--preset", "test", "--size", "24", "32"]
    assert demo.main([str(tmp_path / "bad"), *argv, "--nights", "3"]) == 2
    assert "n_nights" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert demo.main([str(tmp_path / "a"), *argv, "--camera", "pro", "--nights", "2"]) == 0
    truth = demo.load_truth(tmp_path / "a")
    assert truth["camera"]["style"] == "pro" and truth["spec"]["n_nights"] == 2
    assert truth["preset"] == "test" and len(truth["overscan"]) == len(truth["frames"])
    assert fits.getdata(truth["raw_dir"] / "bias_001.fits").shape == (24, 64)
    assert {f["night"] for f in truth["frames"]} == {"2024-03-15", "2024-03-16"}
    with pytest.raises(SystemExit):
        demo.main([str(tmp_path / "b"), "--camera", "sbig"])


def test_dome_flats_have_the_lamp_illumination_and_leave_the_other_pixels_alone(night, tmp_path):
    dome = demo.make_night(tmp_path, preset="test", seed=SEED, n_dome_flats=3)
    spec = dome["spec"]
    files = {f["file"]: f for f in dome["frames"]}
    assert {f["flat_kind"] for f in files.values() if f["type"] == "flat"} == {"sky", "dome"}
    for f in night["frames"]:  # same pixels; the twilight flats now say they are sky flats
        np.testing.assert_array_equal(
            fits.getdata(night["raw_dir"] / f["file"]), fits.getdata(dome["raw_dir"] / f["file"])
        )
        if f["type"] == "flat":
            assert fits.getheader(dome["raw_dir"] / f["file"])["IMAGETYP"] == "Sky Flat"
    frame = files["domeflat_V_002.fits"]
    assert fits.getheader(dome["raw_dir"] / frame["file"])["IMAGETYP"] == "Dome Flat"
    data = fits.getdata(dome["raw_dir"] / frame["file"]).astype(np.float64)
    signal = data - dome["bias"] - dome["dark_rate"] * frame["exptime"] / spec["gain"]
    lamp = demo.dome_illumination(spec)
    assert lamp[0, 0] == pytest.approx(1 - 0.12 + 0.08) and lamp[-1, -1] == pytest.approx(1.04)
    ratio = signal * spec["gain"] / (dome["flat"]["V"] * lamp * frame["level_e"])
    noise = 1 / math.sqrt(frame["level_e"])
    assert abs(np.median(ratio) - 1) < noise and np.std(ratio - 1) < 1.3 * noise
    with pytest.raises(ValueError, match="n_dome_flats"):
        demo.NightSpec(camera="nameonly", n_dome_flats=1)


def test_dead_pixels_and_bad_columns_are_in_the_flats_and_the_truth(tmp_path, capsys):
    """--dead-fraction and --bad-column lower the response of those pixels in every
    filter's flat (so in the raw flats and lights); truth/bad_pixels.fits names them, with
    the hot pixels; every other raw file of a night without them is byte-identical."""
    argv = ["--preset", "test", "--size", "24", "32"]
    assert demo.main([str(tmp_path / "plain"), *argv]) == 0
    extra = ["--dead-fraction", "0.01", "--bad-column", "7=0.3"]
    assert demo.main([str(tmp_path / "bad"), *argv, *extra]) == 0
    assert demo.main([str(tmp_path / "x"), *argv, "--bad-column", "99=0.3"]) == 2
    assert "bad_columns" in capsys.readouterr().err
    plain, bad = demo.load_truth(tmp_path / "plain"), demo.load_truth(tmp_path / "bad")
    tb = bad["bad_pixels"]
    assert ((tb & demo.TRUTH_COLUMN) != 0)[:, 7].all() and (tb & demo.TRUTH_COLUMN).sum() == 24 * 4
    dead = (tb & demo.TRUTH_DEAD) != 0
    assert dead.sum() == round(0.01 * 24 * 32)
    assert (
        ((tb & demo.TRUTH_HOT) != 0) == (bad["dark_rate"] != bad["spec"]["dark_current"])
    ).all()
    assert not (plain["bad_pixels"] & (demo.TRUTH_DEAD | demo.TRUTH_COLUMN)).any()
    for f in bad["flat"]:
        ratio = bad["flat"][f] / plain["flat"][f]
        np.testing.assert_allclose(ratio[:, 7][~dead[:, 7]], 0.3, rtol=1e-5)
        alone = dead & ((tb & demo.TRUTH_COLUMN) == 0)  # a dead pixel in the column: both
        assert (ratio[alone] <= 0.5 + 1e-6).all() and (ratio[alone] >= 0.2 - 1e-6).all()
        clean = (tb & (demo.TRUTH_DEAD | demo.TRUTH_COLUMN)) == 0
        np.testing.assert_array_equal(ratio[clean], 1.0)
    for f in plain["frames"]:
        same = (tmp_path / "plain/raw" / f["file"]).read_bytes() == (
            tmp_path / "bad/raw" / f["file"]
        ).read_bytes()
        assert same == (f["type"] in ("bias", "dark")), f["file"]
