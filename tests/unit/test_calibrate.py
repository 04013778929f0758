"""Calibration of one frame: equals a straightforward numpy reduction; inputs untouched."""

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import bits
from ccdflow.calibrate import Master, calibrate_frame, central_region
from ccdflow.frame import Frame


def _master(data, unc=0.0, name="m.fits", exptime=0.0):
    data = np.asarray(data, np.float32)
    return Master(
        data=data,
        uncertainty=np.full(data.shape, unc, np.float32),
        mask=np.zeros(data.shape, bits.MASK_DTYPE),
        header=fits.Header(),
        name=name,
        exptime=exptime,
    )


@pytest.fixture
def frame():
    rng = np.random.default_rng(7)
    shape = (32, 48)
    bias = 1000 + rng.normal(0, 3, shape)
    dark = np.abs(rng.normal(20, 4, shape))  # ADU in 300 s
    flat = 1 + 0.1 * rng.standard_normal(shape)
    raw = np.round(bias + dark * 200 / 300 + 500 * flat + rng.normal(0, 4, shape))
    raw[5, 6] = 65535.0
    header = fits.Header({"EXPTIME": 200.0, "BZERO": 32768, "BSCALE": 1})
    return {
        "raw": raw.astype(np.float32),
        "mask": np.zeros(shape, bits.MASK_DTYPE),
        "header": header,
        "bias": _master(bias, 0.5, "bias.fits"),
        "dark": _master(dark, 0.7, "dark.fits", 300.0),
        "flat": _master(flat, 0.001, "flat.fits"),
    }


def _raw(frame):
    return Frame(frame["raw"], None, frame["mask"], frame["header"], "adu")


def test_equals_numpy_reference(frame):
    gain = 1.7
    out = calibrate_frame(
        _raw(frame),
        bias=frame["bias"],
        dark=frame["dark"],
        dark_scale=200 / 300,
        flat=frame["flat"],
        gain=gain,
        read_noise=5.0,
    )
    raw = frame["raw"].astype(np.float64)
    ref = (raw - frame["bias"].data - frame["dark"].data * 200 / 300) * gain / frame["flat"].data
    np.testing.assert_allclose(out.data, ref, rtol=2e-6, atol=1e-4)
    assert out.unit == "electron"
    assert out.data.dtype == np.float32


def test_inputs_are_never_mutated(frame):
    copies = {k: v.copy() for k, v in frame.items() if isinstance(v, np.ndarray)}
    masters = {k: frame[k].data.copy() for k in ("bias", "dark", "flat")}
    header = frame["header"].copy()
    calibrate_frame(
        _raw(frame),
        bias=frame["bias"],
        dark=frame["dark"],
        dark_scale=0.5,
        flat=frame["flat"],
        gain=2.0,
        saturation=60000,
    )
    for k, v in copies.items():
        np.testing.assert_array_equal(frame[k], v)
    for k, v in masters.items():
        np.testing.assert_array_equal(frame[k].data, v)
    assert frame["header"] == header


def test_uncertainty_from_read_noise_and_poisson(frame):
    gain, rn = 2.0, 6.0
    unc = calibrate_frame(
        _raw(frame),
        bias=_master(frame["bias"].data),  # noiseless masters: only frame noise
        flat=_master(np.ones_like(frame["raw"])),
        gain=gain,
        read_noise=rn,
    ).uncertainty
    electrons = (frame["raw"] - frame["bias"].data) * gain
    np.testing.assert_allclose(unc, np.sqrt(rn**2 + electrons), rtol=1e-5)


def test_mask_bits_and_provenance(frame):
    frame["flat"].mask[1, 1] = bits.FLAT_LOW
    out = calibrate_frame(
        _raw(frame),
        bias=frame["bias"],
        flat=frame["flat"],
        saturation=65000,
    )
    mask, header = out.mask, out.header
    assert mask[5, 6] & bits.SATURATED
    assert mask[1, 1] & bits.FLAT_LOW
    assert (mask != 0).sum() == 2
    assert header["BIASCORR"] == "bias.fits"
    assert header["FLATCORR"] == "flat.fits"
    assert header["DARKCORR"].startswith("skipped")  # recorded, not silent
    assert "BZERO" not in header
    assert header["PRODTYPE"] == "CALIBRATED"


def test_central_region_is_the_central_half():
    ys, xs = central_region((100, 60))
    assert (ys.start, ys.stop, xs.start, xs.stop) == (25, 75, 15, 45)


def test_defect_bits_of_the_masters_reach_the_frame(frame):
    """HOT of the dark, DEAD and BAD_COLUMN of the flat are inherited (a bias's are not
    defects: it gets none); other master bits (a dark's COSMIC, say) are not."""
    frame["dark"].mask[2, 3] = bits.HOT
    frame["dark"].mask[4, 4] = bits.COSMIC
    frame["flat"].mask[7, 8] = bits.DEAD
    frame["flat"].mask[:, 20] = bits.BAD_COLUMN
    out = calibrate_frame(_raw(frame), bias=frame["bias"], dark=frame["dark"], flat=frame["flat"])
    assert out.mask[2, 3] == bits.HOT
    assert out.mask[7, 8] == bits.DEAD
    assert (out.mask[:, 20] == bits.BAD_COLUMN).all()
    assert out.mask[4, 4] == 0
    assert np.count_nonzero(out.mask & ~bits.SATURATED) == 2 + out.shape[0]
