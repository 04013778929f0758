"""A configuration error is one line: the dotted key, the value, what was expected and the
key's description (DESIGN §8), not a jsonschema dump."""

import pytest

from ccdflow import config


def _message(**overrides):
    with pytest.raises(config.ConfigError) as info:
        config.load(overrides={"raw_dir": "/data", **overrides})
    text = str(info.value)
    assert "\n" not in text and text.startswith("config: ")
    return text


def test_wrong_type_names_key_value_expectation_and_description():
    text = _message(detector={"read_noise": "abc"})
    expected = "is not a number, 'header', 'measured' or null ("
    assert text.startswith(f"config: detector.read_noise = 'abc' {expected}")
    assert "Read noise (e-)" in text


def test_the_detector_source_switch_takes_header_measured_or_a_number():
    for value in ("header", "measured", None, 1.3):
        assert config.load(overrides={"detector": {"gain": value}})["detector"]["gain"] == value
    text = _message(detector={"gain": "measure"})
    assert "detector.gain = 'measure' is not a number, 'header', 'measured' or null" in text
    assert "detector.gain = 0 must be greater than 0" in _message(detector={"gain": 0})


def test_unknown_key_is_named_with_the_known_ones():
    text = _message(detector={"gian": 1.5})
    assert "detector.gian is not a known key" in text
    assert "gain" in text and "read_noise" in text


def test_out_of_bounds_value():
    text = _message(calibration={"flat_floor": 2})
    assert "calibration.flat_floor = 2 is above the maximum 1" in text


def test_enum_lists_the_choices():
    text = _message(calibration={"missing_master": "skip"})
    assert "calibration.missing_master = 'skip' is not one of 'exclude', 'error'" in text


def test_list_item_through_a_reference_keeps_its_index_and_description():
    text = _message(inventory={"keywords": {"filter": "FILTER"}})
    assert text.startswith("config: inventory.keywords.filter = 'FILTER' is not a list")
    assert "FITS keywords" in text


def test_a_valid_configuration_passes():
    assert config.load(overrides={"raw_dir": "/data"})["detector"]["read_noise"] is None
