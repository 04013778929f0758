"""Masters and calibrated frames recover the injected truth of a seeded synthetic night."""

import numpy as np
import pytest

from ccdflow import bits, demo
from ccdflow.io import read_product
from ccdflow.tasks import make_master_file
from conftest import COMBINE, FLAT_COMBINE, calibrate_light


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("night")
    truth = demo.make_night(out, preset="test", seed=11)
    spec = truth["spec"]
    raw = truth["raw_dir"]
    by_type = {}
    for f in truth["frames"]:
        by_type.setdefault(f["type"], []).append(f)
    masters = out / "masters"
    make_master_file(
        "bias", [(raw / f["file"], 0) for f in by_type["bias"]], masters / "bias.fits", COMBINE
    )
    make_master_file(
        "dark",
        [(raw / f["file"], 0) for f in by_type["dark"]],
        masters / "dark.fits",
        COMBINE,
        bias=masters / "bias.fits",
        saturation=65535,
    )
    flats_v = [f for f in by_type["flat"] if f["filter"] == "V"]
    t_dark = by_type["dark"][0]["exptime"]
    make_master_file(
        "flat",
        [(raw / f["file"], 0) for f in flats_v],
        masters / "flat_V.fits",
        FLAT_COMBINE,
        bias=masters / "bias.fits",
        dark=masters / "dark.fits",
        dark_scales=[f["exptime"] / t_dark for f in flats_v],
        saturation=65535,
    )
    return {"truth": truth, "spec": spec, "by_type": by_type, "masters": masters, "out": out}


def test_master_bias_within_error_of_the_mean(night):
    spec, truth = night["spec"], night["truth"]
    data, header, _, _ = read_product(night["masters"] / "bias.fits")
    n = len(night["by_type"]["bias"])
    expected = spec["read_noise"] / spec["gain"] / np.sqrt(n)  # ADU
    resid = data - truth["bias"]
    assert abs(resid.mean()) < 5 * expected / np.sqrt(resid.size)  # no level offset
    assert resid.std() <= 1.5 * expected
    assert header["NCOMBINE"] == n
    # read noise measured from bias pairs
    assert header["RDNOISEM"] == pytest.approx(spec["read_noise"] / spec["gain"], rel=0.1)


def test_master_dark_recovers_the_dark_rate(night):
    spec, truth = night["spec"], night["truth"]
    data, header, _, _ = read_product(night["masters"] / "dark.fits")
    darks = night["by_type"]["dark"]
    t, n, g = darks[0]["exptime"], len(darks), spec["gain"]
    assert header["EXPTIME"] == t
    rate = data * g / t
    true = truth["dark_rate"]
    # noise of one pixel of the master (e-/s): read noise, shot noise, master bias error
    nb = len(night["by_type"]["bias"])
    # frame noise averages down over n darks; the master bias error is common to all
    sigma = np.sqrt((spec["read_noise"] ** 2 + true * t) / n + spec["read_noise"] ** 2 / nb) / t
    z = (rate - true) / sigma
    assert abs(np.mean(rate - true)) < 3 * np.mean(sigma) / np.sqrt(true.size)
    assert np.std(z) < 1.5
    # every cosmic ray of the darks is rejected: no pixel more than 6 sigma off
    hits = np.any([truth["cosmics"][f["file"].rsplit(".", 1)[0]] for f in darks], axis=0)
    assert hits.sum() > 10
    assert np.abs(z[hits]).max() < 6


def test_master_flat_within_its_noise(night):
    truth = night["truth"]
    data, header, _, mask = read_product(night["masters"] / "flat_V.fits")
    flats = [f for f in night["by_type"]["flat"] if f["filter"] == "V"]
    level = np.mean([f["level_e"] for f in flats])
    # median combine of n flats of `level` electrons per pixel
    expected = np.sqrt(np.pi / 2) / np.sqrt(len(flats) * level)
    resid = data - truth["flat"]["V"]
    assert resid.std() <= 1.5 * expected
    ys, xs = slice(data.shape[0] // 4, -(data.shape[0] // 4)), slice(data.shape[1] // 4, None)
    assert np.median(data[ys, xs][:, : data.shape[1] // 2]) == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.isfinite(data)) and not (mask & bits.FLAT_LOW).any()
    assert header["DARKCORR"] == "dark.fits"


def test_calibrated_light_matches_truth_within_its_uncertainty(night):
    truth, spec = night["truth"], night["spec"]
    light = next(
        f for f in night["by_type"]["light"] if f["filter"] == "V" and f["exptime"] == 120
    )
    t_dark = night["by_type"]["dark"][0]["exptime"]
    out = calibrate_light(
        truth["raw_dir"] / light["file"],
        night["out"],
        bias=night["masters"] / "bias.fits",
        dark=night["masters"] / "dark.fits",
        dark_scale=light["exptime"] / t_dark,
        flat=night["masters"] / "flat_V.fits",
        gain=spec["gain"],
        read_noise=spec["read_noise"],
        saturation=65535,
    )
    data, header, unc, mask = read_product(out)
    assert header["BUNIT"] == "electron"
    assert header["DARKSCAL"] == pytest.approx(120 / 300)
    # truth: sky + stars, in electrons, after the flat
    expected = demo.expected_electrons(truth, light)
    signal = (expected - truth["dark_rate"] * light["exptime"]) / truth["flat"]["V"]
    cosmic = truth["cosmics"][light["file"].rsplit(".", 1)[0]]
    good = (mask == 0) & ~cosmic
    z = (data - signal)[good] / unc[good]
    assert abs(np.median(z)) < 0.1  # no bias in the level
    assert 0.85 < np.std(z) < 1.15  # and the uncertainty plane is right
    if light.get("n_saturated_pixels"):
        assert (mask & bits.SATURATED).sum() >= light["n_saturated_pixels"]


def test_a_one_frame_master_bias_carries_the_frame_noise_and_warns(night, caplog):
    # With one frame there is no scatter: UNCERT = 0 would make every stack built on the
    # master 15-20 % too confident. It gets the frame's own pixel noise (the read noise).
    spec, raw = night["spec"], night["truth"]["raw_dir"]
    one = night["by_type"]["bias"][:1]
    out = night["out"] / "one" / "bias.fits"
    with caplog.at_level("WARNING", logger="ccdflow"):
        make_master_file("bias", [(raw / f["file"], 0) for f in one], out, COMBINE)
    _, header, unc, _ = read_product(out)
    rn_adu = spec["read_noise"] / spec["gain"]
    assert np.all(unc == unc.flat[0]) and unc.flat[0] == pytest.approx(rn_adu, rel=0.05)
    assert header["NCOMBINE"] == 1
    assert any("single frame" in r.message and "bias" in r.message for r in caplog.records)


@pytest.mark.parametrize("factor", [1 / 3, 1.0])
def test_a_header_read_noise_far_from_the_bias_pairs_warns_and_the_measured_one_is_used(
    night, caplog, factor
):
    # a real night's header said 3 times less than its bias pairs: the noise model of the
    # cosmic-ray guard then took the sky noise for cosmic rays. Within the factor the
    # header value stands.
    import json

    spec = night["spec"]
    light = next(f for f in night["by_type"]["light"] if f["filter"] == "V")
    header_rn = factor * spec["read_noise"]
    out_dir = night["out"] / f"rn_{factor:.2f}"
    with caplog.at_level("WARNING", logger="ccdflow"):
        calibrate_light(
            night["truth"]["raw_dir"] / light["file"],
            out_dir,
            bias=night["masters"] / "bias.fits",
            gain=spec["gain"],
            read_noise=header_rn,
            detector_sources={"read_noise": "header"},
            saturation=65535,
        )
    stem = light["file"].rsplit(".", 1)[0]
    rn = json.loads((out_dir / f"{stem}.json").read_text())["detector"]["read_noise"]
    warned = [r.message for r in caplog.records if "read noise" in r.message]
    if factor == 1.0:
        assert rn["value"] == pytest.approx(header_rn) and rn["source"] == "header"
        assert not warned
    else:
        assert rn["source"].startswith("measured:bias.fits")
        assert rn["value"] == pytest.approx(spec["read_noise"], rel=0.1)
        assert len(warned) == 1
        assert f"{header_rn:.4g}" in warned[0] and f"{rn['value']:.4g}" in warned[0]


KINDS = ("bias", "dark", "flat")


def test_master_dark_and_flat_carry_their_defect_bits(tmp_path):
    """The frame jobs' defect bits come from the masters: HOT pixels of the dark's rate
    (recall >= 95 %), DEAD pixels and a BAD_COLUMN of the flat, counted in the header
    and the record; off (badpix None), no defect bit at all."""
    from ccdflow import badpix

    truth = demo.make_night(
        tmp_path / "n",
        preset="test",
        seed=2,
        hot_pixel_fraction=3e-3,
        dead_pixel_fraction=3e-3,
        bad_columns=((40, 0.3),),
        n_lights=1,
        light_exptimes=(60.0,),
        filters=("V",),
        sky=(("V", 2.0),),
        colour=(("V", 1.0),),
    )
    raw = truth["raw_dir"]
    of = {k: [(raw / f["file"], 0) for f in truth["frames"] if f["type"] == k] for k in KINDS}
    m = tmp_path / "m"
    make_master_file("bias", of["bias"], m / "bias.fits", COMBINE)
    on = {k: badpix.master_thresholds({}, k) for k in ("dark", "flat")}
    dark = make_master_file(
        "dark", of["dark"], m / "dark.fits", COMBINE, bias=m / "bias.fits", badpix=on["dark"]
    )
    scales = [2.0 / 300] * len(of["flat"])
    kw = dict(bias=m / "bias.fits", dark=m / "dark.fits", dark_scales=scales)
    flat = make_master_file(
        "flat", of["flat"], m / "flat.fits", FLAT_COMBINE, **kw, badpix=on["flat"]
    )
    off = make_master_file("flat", of["flat"], m / "flat_off.fits", FLAT_COMBINE, **kw)
    tb = truth["bad_pixels"]
    hot, dead = (tb & demo.TRUTH_HOT) != 0, (tb & demo.TRUTH_DEAD) != 0
    assert ((dark.mask[hot] & bits.HOT) != 0).mean() >= 0.95
    assert np.count_nonzero(((dark.mask & bits.HOT) != 0) & ~hot) <= 0.0005 * tb.size
    assert ((flat.mask[dead] & (bits.DEAD | bits.FLAT_LOW)) != 0).mean() >= 0.95
    assert ((flat.mask[:, 40] & bits.BAD_COLUMN) != 0).mean() >= 0.95
    assert not (flat.mask & bits.HOT).any() and not (dark.mask & bits.DEAD).any()
    assert not (off.mask & bits.DEFECT_BITS).any()
    assert dark.header["NHOT"] == np.count_nonzero(dark.mask & bits.HOT)
    assert flat.header["NBADCOL"] == np.count_nonzero(flat.mask & bits.BAD_COLUMN)
    _, _, _, written = read_product(m / "flat.fits")
    np.testing.assert_array_equal(written, flat.mask)
