"""Gain and read noise from frame pairs: injected values are recovered within 5 %, the
reported uncertainty covers the error, hot pixels and cosmic rays do not bias them, and a
header value far from the measurement gives a warning naming both."""

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
