"""Overscan in the calibration chain, on a generated professional-CCD night."""

import numpy as np
import pytest

from ccdflow import bits, demo
from ccdflow.calibrate import make_master, prepare_raw
from ccdflow.combine import Clip
from ccdflow.frame import Frame
from ccdflow.io import read_frame
from ccdflow.sections import SectionError
from conftest import COMBINE

OVERSCAN = {"biassec": "BIASSEC", "trimsec": "TRIMSEC", "method": "median", "order": 3}


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return demo.make_night(tmp_path_factory.mktemp("pro"), preset="test", seed=4, camera="pro")


def _frames(night, kind):
    return [f for f in night["frames"] if f["type"] == kind]


def test_bias_after_overscan_recovers_the_residual_pattern(night):
    spec = night["spec"]
    frames = [(night["raw_dir"] / f["file"], 0) for f in _frames(night, "bias")]
    master = make_master(frames, "bias", Clip.from_config(COMBINE), overscan=OVERSCAN)
    truth = night["bias"] - spec["bias_level"]  # the 2-D pattern the overscan cannot see
    assert master.data.shape == truth.shape  # trimmed to the image area
    # per-frame offsets and ramps are gone: only the mean of n frames' noise is left,
    # plus the error of each row's overscan level (30 columns)
    n = len(frames)
    rn = spec["read_noise"] / spec["gain"]
    expected = rn * np.sqrt(1 / n + 1.25**2 / 30 / n)
    resid = master.data - truth
    assert abs(resid.mean()) < 5 * expected
    assert resid.std() <= 1.5 * expected
    assert "median" in master.header["OVSCCORR"]
    assert master.header["TRIMSEC"] == "[1:128,1:96]"


def _prepare(data, mask, header, overscan, path, saturation=None):
    out = prepare_raw(Frame(data, None, mask, header, "adu"), overscan, saturation, path)
    return out.data, out.mask, out.header


def test_prepare_raw_flags_saturation_before_subtracting_the_overscan(night):
    light = _frames(night, "light")[0]
    path = night["raw_dir"] / light["file"]
    data, header, mask = read_frame(path)
    data[10, 20] = 65535.0
    out, out_mask, out_header = _prepare(data, mask, header, OVERSCAN, path, 65535)
    assert out.shape == (96, 128)
    assert out_mask[10, 20] & bits.SATURATED  # though its value is now ~64500
    true_level = night["overscan"][path.stem]
    subtracted = (data[:, :128] - out)[:, 0]
    # each row's level is a median of 30 pixels of read noise
    spec = night["spec"]
    sigma = 1.2533 * spec["read_noise"] / spec["gain"] / np.sqrt(30)
    err = subtracted - true_level
    assert np.sqrt(np.mean(err**2)) < 1.5 * sigma and np.abs(err).max() < 5 * sigma
    assert out_header["NSATUR"] >= 1


def test_missing_or_misfit_section_names_file_and_keyword(night):
    light = _frames(night, "light")[0]
    path = night["raw_dir"] / light["file"]
    data, header, mask = read_frame(path)
    with pytest.raises(SectionError, match=r"light_.*GAINSEC.*is missing"):
        _prepare(data, mask, header, {**OVERSCAN, "biassec": "GAINSEC"}, path)
    header["BIASSEC"] = "[130:170,1:96]"
    with pytest.raises(SectionError, match=r"BIASSEC = '\[130:170,1:96\]' does not fit"):
        _prepare(data, mask, header, OVERSCAN, path)


def test_signal_in_the_overscan_is_reported_in_the_header(night, caplog):
    light = _frames(night, "light")[0]
    path = night["raw_dir"] / light["file"]
    data, header, mask = read_frame(path)
    assert "OVSCWARN" not in _prepare(data, mask, header, OVERSCAN, path)[2]
    data[40:44, 140:144] += 5000.0  # a star bleeding into the strip
    with caplog.at_level("WARNING", logger="ccdflow"):
        out_header = _prepare(data, mask, header, OVERSCAN, path)[2]
    assert out_header["OVSCWARN"].startswith("signal in overscan")
    assert "signal in the overscan" in caplog.text and path.name in caplog.text
