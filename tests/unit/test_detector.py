"""Gain and read noise from frame pairs: injected values are recovered within 5 %, the
reported uncertainty covers the error, hot pixels and cosmic rays do not bias them, and a
header value far from the measurement gives a warning naming both."""

import json
import math

import numpy as np
import pytest

from ccdflow.detector import compare_with_header, measure_detector

SHAPE = (256, 256)
GAIN = 1.6  # e-/ADU
READ_NOISE = 5.0  # ADU
BIAS = 1000.0  # ADU


def _camera(seed):
    """Fixed pattern of one synthetic camera: bias structure and pixel response (1 %)."""
    rng = np.random.default_rng(seed)
    x = np.arange(SHAPE[1])[None, :]
    bias = BIAS + 3.0 * np.sin(x / 7.0) + rng.normal(0, 2.0, SHAPE)  # same in every bias
    response = (1 + 0.05 * (x - 128) / 128) * rng.normal(1, 0.01, SHAPE)
    return rng, bias, response


def _bias(rng, bias):
    return np.round(bias + rng.normal(0, READ_NOISE, SHAPE)).astype(np.uint16)


def _flat(rng, bias, response, level):
    electrons = rng.poisson(GAIN * level * response)
    return np.round(bias + electrons / GAIN + rng.normal(0, READ_NOISE, SHAPE)).astype(np.uint16)


def _spoil(rng, frame, n=60):
    """Cosmic rays / hot pixels: n pixels far above the rest."""
    out = frame.copy()
    out.flat[rng.choice(frame.size, n, replace=False)] = 60000
    return out


@pytest.mark.parametrize("seed", range(5))
def test_pair_recovers_gain_and_read_noise(seed):
    rng, bias, response = _camera(seed)
    biases = (_spoil(rng, _bias(rng, bias)), _bias(rng, bias))
    flats = (_spoil(rng, _flat(rng, bias, response, 15000)), _flat(rng, bias, response, 15000))
    m = measure_detector([biases], [flats], tile=32)
    assert m.method == "pair" and m.n_bias_pairs == m.n_flat_pairs == 1
    assert m.n_tiles == 36
    for value, err, truth in (
        (m.gain, m.gain_err, GAIN),
        (m.read_noise_adu, m.read_noise_adu_err, READ_NOISE),
        (m.read_noise_e, m.read_noise_e_err, READ_NOISE * GAIN),
    ):
        assert abs(value / truth - 1) < 0.05
        assert 0 < err < 0.05 * truth
        assert abs(value - truth) < 3 * err  # the uncertainty covers the error
    assert m.levels_adu[0] == pytest.approx(15000, rel=0.01)


def test_photon_transfer_over_levels():
    rng, bias, response = _camera(11)
    biases = [(_bias(rng, bias), _bias(rng, bias)) for _ in range(2)]
    levels = (300, 2000, 10000)  # at 300 ADU the read noise is 12 % of the variance
    flats = [(_flat(rng, bias, response, lv), _flat(rng, bias, response, lv)) for lv in levels]
    m = measure_detector(biases, flats, tile=32)
    assert m.method == "photon_transfer" and m.n_flat_pairs == 3 and m.n_bias_pairs == 2
    assert abs(m.gain - GAIN) < 3 * m.gain_err and abs(m.gain / GAIN - 1) < 0.03
    np.testing.assert_allclose(m.levels_adu, levels, rtol=0.01)
    d = m.as_dict()
    assert d["units"]["gain"] == "electron/adu" and d["gain"] == m.gain


def test_masked_pixels_ignored_and_bias_only():
    rng, bias, _ = _camera(3)
    b1, b2 = _bias(rng, bias), _bias(rng, bias)
    b1[:, 100:110] = 0  # a dead band, masked
    mask = np.zeros(SHAPE, np.uint16)
    mask[:, 100:110] = 1
    m = measure_detector([(b1, b2)], mask=mask, tile=32)
    assert abs(m.read_noise_adu / READ_NOISE - 1) < 0.05
    assert math.isnan(m.gain) and math.isnan(m.read_noise_e)
    assert m.as_dict()["gain"] is None  # JSON-friendly


def test_only_tiles_are_read():
    """A 4k frame costs the tiles only: the frames may be memory maps or lazy arrays."""
    rng = np.random.default_rng(0)
    touched = []

    class Lazy:
        shape = (4096, 4096)

        def __init__(self):
            self.noise = rng.normal(0, READ_NOISE, (64, 64))  # the same in every tile

        def __getitem__(self, sl):
            touched.append(sl)
            return BIAS + self.noise

    m = measure_detector([(Lazy(), Lazy())])
    assert m.n_tiles == 64 and len(touched) == 2 * 64
    assert m.read_noise_adu == pytest.approx(READ_NOISE, rel=0.05)


def test_header_comparison_warns_with_both_values():
    assert compare_with_header("gain", 1.32, 1.4, unit="e-/ADU") is None
    msg = compare_with_header("gain", 1.3, 2.4, unit="e-/ADU")
    assert "1.3 e-/ADU" in msg and "2.4 e-/ADU" in msg and "inverse" not in msg
    assert "inverse" in compare_with_header("gain", 2.0, 0.5)
    assert compare_with_header("gain", 1.3, 2.4, factor=2.0) is None
    assert compare_with_header("read noise", 5.0, None) is None
    with pytest.raises(ValueError, match="factor"):
        compare_with_header("gain", 1.0, 1.0, factor=0.5)


def _detector_json(path, **entry):
    path.write_text(json.dumps({"setups": {"1x1_64x48": entry}}))
    return path


def test_a_setup_without_flat_pairs_rejects_its_lights_naming_setup_and_pairs(tmp_path):
    """``detector.gain: measured`` and no pair of flats of one level: the frame (not the
    night) is rejected, reason no_measured_detector, the detail names the setup."""
    from astropy.io import fits

    from ccdflow.framejob import measured_detector, process_frame
    from ccdflow.io import FrameError

    no_gain = _detector_json(
        tmp_path / "detector.json", n_bias=5, n_flats=3, read_noise_adu=4.0, gain=None
    )
    with pytest.raises(FrameError) as info:
        measured_detector(no_gain, "1x1_64x48", ["gain"], "light.fits")
    assert info.value.reason == "no_measured_detector"
    assert "setup 1x1_64x48" in info.value.detail and "3 flat(s)" in info.value.detail
    assert "pair of flats" in info.value.detail and "detector.gain: measured" in info.value.detail
    # only the read noise wanted: the missing gain does not matter
    entry = measured_detector(no_gain, "1x1_64x48", ["read_noise"])
    assert entry["read_noise_adu"] == 4.0
    with pytest.raises(FrameError, match="0 bias frame"):  # setup not measured at all
        measured_detector(None, "1x1_64x48", ["read_noise"])

    raw = tmp_path / "light.fits"
    fits.writeto(raw, np.full((48, 64), 1200, np.uint16))
    record = process_frame(
        raw,
        0,
        frame="light",
        group="g",
        calibrated_path=tmp_path / "c.fits",
        aligned_path=tmp_path / "a.fits",
        record_path=tmp_path / "r.json",
        masters={},
        calibration={"measured": ["gain"], "setup": "1x1_64x48"},
        cosmics={"enabled": False},
        align={},
        reference=None,  # the frame is its own reference
        detector_record=no_gain,
    )
    assert (record["status"], record["reason"], record["failed_step"]) == (
        "rejected",
        "no_measured_detector",
        "detector",
    )
    assert "1x1_64x48" in record["detail"]


def test_measured_values_reach_the_record_with_unit_source_and_uncertainty(tmp_path):
    from astropy.io import fits

    from ccdflow.framejob import process_frame

    path = _detector_json(
        tmp_path / "detector.json",
        n_bias=4,
        n_flats=4,
        gain=1.25,
        gain_err=0.01,
        read_noise_adu=4.0,
        read_noise_adu_err=0.02,
        read_noise_e=5.0,
        read_noise_e_err=0.05,
    )
    raw = tmp_path / "light.fits"
    fits.writeto(raw, np.full((48, 64), 1200, np.uint16))
    record = process_frame(
        raw,
        0,
        frame="light",
        group="g",
        calibrated_path=tmp_path / "c.fits",
        aligned_path=tmp_path / "a.fits",
        record_path=tmp_path / "r.json",
        masters={},
        calibration={"measured": ["gain", "read_noise"], "setup": "1x1_64x48", "gain": None},
        cosmics={"enabled": False},
        align={},
        reference=None,  # the frame is its own reference
        detector_record=path,
    )
    det = record["detector"]
    source = f"measured:{path}"
    assert det["gain"] == {
        "value": 1.25,
        "unit": "electron/adu",
        "source": source,
        "uncertainty": 0.01,
    }
    assert det["read_noise"] == {
        "value": 5.0,
        "unit": "electron",
        "source": source,
        "uncertainty": 0.05,
    }
    with fits.open(tmp_path / "c.fits") as hdul:
        # no bias, no flat: 1200 ADU x 1.25 e-/ADU, noise sqrt(5^2 + 1500) e-
        assert np.allclose(hdul[0].data, 1500)
        assert np.allclose(hdul["UNCERT"].data, np.sqrt(25 + 1500), rtol=1e-5)
