"""Inventory: raw headers in, classified frames and rejected files with reasons out."""

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from ccdflow import inventory
from ccdflow.sections import SectionError

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[2] / "config/config.yaml").read_text())


@pytest.fixture
def cfg():
    """The default ``inventory`` section (a fresh copy: tests may edit it)."""
    return copy.deepcopy(CONFIG["inventory"])


def write_frame(path, cards=(), dtype=np.uint16, shape=(8, 10), extension=False):
    """Write a tiny frame; ``cards`` is a dict (or pairs) of header keyword -> value."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(shape[0] * shape[1]).reshape(shape) % 50 + 1000).astype(dtype)
    header = fits.Header()
    header["ORIGNAME"] = str(path)[-68:]  # equal cards under two names: not duplicates
    for key, value in dict(cards).items():
        header[key] = value
    if extension:
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=header)])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data, header=header)])
    hdul.writeto(path, overwrite=True)
    return path


def light(path, exptime=300.0, filt="V", obj="M51", **extra):
    cards = {"IMAGETYP": "Light Frame", "EXPTIME": exptime, "FILTER": filt, "OBJECT": obj}
    return write_frame(path, {**cards, **extra})


def scan(raw, cfg, **kwargs):
    """Scan and index the result by relative path: (frames, rejected)."""
    inv = inventory.scan(raw, cfg, **kwargs)
    return {f["path"]: f for f in inv.frames}, {r["path"]: r for r in inv.rejected}


# --- header translation -----------------------------------------------------------------


def test_imagetyp_vocabulary_is_case_insensitive(tmp_path, cfg):
    values = {
        "a.fits": ("Bias Frame", "bias"),
        "b.fits": ("ZERO", "bias"),
        "c.fits": ("Dark Frame", "dark"),
        "d.fits": ("flat field", "flat"),
        "e.fits": ("SkyFlat", "flat"),
        "f.fits": ("Light Frame", "light"),
        "g.fits": ("object", "light"),
        "h.fits": (" LIGHT ", "light"),
    }
    for name, (raw, _) in values.items():
        write_frame(tmp_path / name, {"IMAGETYP": raw, "EXPTIME": 10.0, "FILTER": "V"})
    frames, rejected = scan(tmp_path, cfg)
    assert not rejected
    assert {name: frames[name]["imagetyp"] for name in values} == {
        name: canonical for name, (_, canonical) in values.items()
    }


def test_unknown_imagetyp_is_rejected_naming_the_value(tmp_path, cfg):
    write_frame(tmp_path / "focus.fits", {"IMAGETYP": "Focus", "EXPTIME": 1.0})
    frames, rejected = scan(tmp_path, cfg)
    assert not frames
    assert rejected["focus.fits"]["reason"] == "unknown_imagetyp"
    assert "'Focus'" in rejected["focus.fits"]["detail"]
    assert "imagetyp_values" in rejected["focus.fits"]["detail"]  # says how to fix it


def test_vocabulary_is_configuration(tmp_path, cfg):
    write_frame(tmp_path / "focus.fits", {"IMAGETYP": "Focus", "EXPTIME": 1.0, "FILTER": "V"})
    cfg["imagetyp_values"]["light"].append("FOCUS")
    frames, _ = scan(tmp_path, cfg)
    assert frames["focus.fits"]["imagetyp"] == "light"


def test_flat_kinds_are_kept_from_the_imagetyp_value(tmp_path, cfg):
    values = {
        "a.fits": ("SKYFLAT", "sky"),
        "b.fits": ("Twilight Flat", "sky"),  # a flat only through inventory.flat_kinds
        "c.fits": ("DomeFlat", "dome"),
        "d.fits": ("lampflat", "dome"),
        "e.fits": ("Flat Field", "unspecified"),
        "f.fits": ("Light Frame", ""),
    }
    for name, (raw, _) in values.items():
        write_frame(tmp_path / name, {"IMAGETYP": raw, "EXPTIME": 10.0, "FILTER": "V"})
    frames, rejected = scan(tmp_path, cfg)
    assert not rejected
    assert {n: frames[n]["flat_kind"] for n in values} == {n: k for n, (_, k) in values.items()}
    assert {frames[f"{n}.fits"]["imagetyp"] for n in "abcde"} == {"flat"}
    assert "flat_kind" in inventory.COLUMNS
    # the kinds are configuration: a camera's own word for its lamp flats
    cfg["flat_kinds"]["dome"] = ["Screen Flat"]
    write_frame(tmp_path / "g.fits", {"IMAGETYP": "Screen Flat", "EXPTIME": 1.0, "FILTER": "V"})
    frames, rejected = scan(tmp_path, cfg)
    assert frames["g.fits"]["flat_kind"] == "dome" and frames["g.fits"]["imagetyp"] == "flat"
    assert frames["c.fits"]["flat_kind"] == "unspecified"  # DomeFlat: a flat, kind unknown
    assert {
        k: tuple(v) for k, v in CONFIG["inventory"]["flat_kinds"].items()
    } == inventory.FLAT_KINDS


def test_keyword_aliases_in_priority_order(tmp_path, cfg):
    write_frame(
        tmp_path / "both.fits",
        {"IMAGETYP": "Dark", "OBSTYPE": "Bias", "EXPTIME": 30.0, "EXPOSURE": 60.0},
    )
    write_frame(tmp_path / "obstype.fits", {"OBSTYPE": "dark", "EXPOSURE": 60.0})
    # A blank first alias does not hide the next one.
    write_frame(tmp_path / "blank.fits", {"IMAGETYP": "  ", "OBSTYPE": "DARK", "EXPTIME": 5.0})
    frames, rejected = scan(tmp_path, cfg)
    assert not rejected
    assert frames["both.fits"]["imagetyp"] == "dark"
    assert frames["both.fits"]["exptime"] == 30.0
    assert frames["obstype.fits"]["imagetyp"] == "dark"
    assert frames["obstype.fits"]["exptime"] == 60.0
    assert frames["blank.fits"]["imagetyp"] == "dark"


def test_missing_exptime_rejects_a_light_but_not_a_bias(tmp_path, cfg):
    write_frame(tmp_path / "light.fits", {"IMAGETYP": "Light", "FILTER": "V"})
    write_frame(tmp_path / "bias.fits", {"IMAGETYP": "Bias"})
    write_frame(tmp_path / "notype.fits", {"EXPTIME": 1.0})
    frames, rejected = scan(tmp_path, cfg)
    assert rejected["light.fits"]["reason"] == "missing_keyword"
    assert "EXPTIME/EXPOSURE" in rejected["light.fits"]["detail"]
    assert rejected["notype.fits"]["reason"] == "missing_keyword"
    assert frames["bias.fits"]["exptime"] == 0.0
    assert frames["bias.fits"]["expgroup"] == "0"


@pytest.mark.parametrize(
    ("cards", "word"),
    [
        ({"EXPTIME": -1.0}, "negative"),
        ({"EXPTIME": "long"}, "EXPTIME"),
        ({"EXPTIME": 1.0, "XBINNING": "two"}, "XBINNING"),
        ({"EXPTIME": 1.0, "GAIN": "n/a"}, "gain"),
    ],
)
def test_bad_values_are_rejected_with_a_reason(tmp_path, cfg, cards, word):
    write_frame(tmp_path / "x.fits", {"IMAGETYP": "dark", **cards})
    frames, rejected = scan(tmp_path, cfg)
    assert not frames
    assert rejected["x.fits"]["reason"] == "bad_value"
    assert word in rejected["x.fits"]["detail"]


def test_setup_binning_detector_values_and_datamax(tmp_path, cfg):
    cfg["keywords"]["readout"] = ["READOUTM"]
    light(tmp_path / "u16.fits", XBINNING=2, YBINNING=2, GAIN=1.4, RDNOISE=9.0, SATURATE=60000)
    light(tmp_path / "mode.fits", READOUTM="High Gain", **{"CCD-TEMP": -15.5})
    write_frame(
        tmp_path / "f32.fits",
        {"IMAGETYP": "light", "EXPTIME": 1.0, "FILTER": "V"},
        dtype=np.float32,
        shape=(6, 4),
    )
    write_frame(tmp_path / "i16.fits", {"IMAGETYP": "bias"}, dtype=np.int16)
    frames, rejected = scan(tmp_path, cfg)
    assert not rejected
    u16 = frames["u16.fits"]
    assert u16["setup"] == "2x2_10x8"
    assert (u16["ny"], u16["nx"], u16["hdu"]) == (8, 10, 0)
    assert (u16["gain"], u16["rdnoise"], u16["saturation"]) == (1.4, 9.0, 60000.0)
    assert u16["datamax"] == 65535.0  # BZERO 32768
    mode = frames["mode.fits"]
    assert mode["setup"] == "1x1_10x8_High-Gain"  # no "_" inside a part of {setup}
    assert mode["readout"] == "High Gain"
    assert mode["temperature"] == -15.5
    assert mode["gain"] is None and mode["saturation"] is None
    assert frames["f32.fits"]["setup"] == "1x1_4x6"
    assert frames["f32.fits"]["datamax"] is None
    assert frames["i16.fits"]["datamax"] == 32767.0


@pytest.mark.parametrize(
    ("cards", "reason", "words"),
    [
        ({"GAIN": 0.0}, "gain_out_of_range", ["GAIN = 0 ", "0.05-50 e-/ADU", "detector.gain"]),
        ({"GAIN": 1e4}, "gain_out_of_range", ["GAIN = 10000 ", "detector.gain_range"]),
        ({"RDNOISE": 0.0}, "read_noise_out_of_range", ["RDNOISE = 0 ", "0.1-100 e-"]),
    ],
)
def test_insane_header_gain_or_read_noise_rejects_the_frame(tmp_path, cfg, cards, reason, words):
    light(tmp_path / "a.fits", **cards)
    _, rejected = scan(tmp_path, cfg, detector=CONFIG["detector"])
    assert rejected["a.fits"]["reason"] == reason
    for word in words:
        assert word in rejected["a.fits"]["detail"]
    key = "gain" if "GAIN" in cards else "read_noise"
    frames, _ = scan(tmp_path, cfg, detector={**CONFIG["detector"], key: 2.0})
    assert list(frames) == ["a.fits"]  # a configured value is used, the header's ignored
    frames, _ = scan(tmp_path, cfg, detector={**CONFIG["detector"], key: "measured"})
    assert list(frames) == ["a.fits"]  # measured from frame pairs: the header's unused
    _, rejected = scan(tmp_path, cfg, detector={**CONFIG["detector"], key: "header"})
    assert rejected["a.fits"]["reason"] == reason  # "header" is null: checked


def test_egain_is_read_before_a_gain_setting(tmp_path, cfg):
    light(tmp_path / "nina.fits", GAIN=100, EGAIN=0.25)
    frames, _ = scan(tmp_path, cfg)
    assert frames["nina.fits"]["gain"] == 0.25
    light(tmp_path / "nina.fits", GAIN=100)  # the setting alone: not e-/ADU
    _, rejected = scan(tmp_path, cfg)
    assert rejected["nina.fits"]["reason"] == "gain_out_of_range"
    assert (
        "put it first in inventory.keywords.gain (now EGAIN/GAIN)"
        in rejected["nina.fits"]["detail"]
    )


OVERSCAN = {**CONFIG["overscan"], "enabled": True, "trimsec": "TRIMSEC"}


def test_nonsense_section_keywords_reject_the_frame_at_the_inventory(tmp_path, cfg):
    good = {"BIASSEC": "[9:10,1:8]", "TRIMSEC": "[1:8,1:8]"}
    light(tmp_path / "good.fits", **good)
    light(tmp_path / "zero.fits", **{**good, "BIASSEC": "[0,513:0,1536]"})
    light(tmp_path / "outside.fits", **{**good, "TRIMSEC": "[1:80,1:8]"})
    light(tmp_path / "none.fits", TRIMSEC="[1:8,1:8]")
    frames, rejected = scan(tmp_path, cfg, overscan=OVERSCAN)
    assert list(frames) == ["good.fits"]
    assert {k: r["reason"] for k, r in rejected.items()} == dict.fromkeys(
        ["none.fits", "outside.fits", "zero.fits"], "bad_section"
    )
    assert "BIASSEC = '[0,513:0,1536]' is not a section" in rejected["zero.fits"]["detail"]
    assert "TRIMSEC = '[1:80,1:8]' does not fit" in rejected["outside.fits"]["detail"]
    assert "BIASSEC = None is missing" in rejected["none.fits"]["detail"]
    assert "overscan.biassec" in rejected["zero.fits"]["detail"]  # how to fix it
    frames, rejected = scan(tmp_path, cfg)  # no overscan: sections are not used
    assert len(frames) == 4


def test_a_configured_section_that_is_none_stops_the_scan(tmp_path, cfg):
    light(tmp_path / "a.fits")
    with pytest.raises(SectionError, match=r"overscan.biassec = '\[0,513:0,1536\]' is not"):
        inventory.scan(tmp_path, cfg, overscan={**OVERSCAN, "biassec": "[0,513:0,1536]"})


@pytest.mark.parametrize("ccdsum", ["2 2", "2x2", " 2  2 "])
def test_ccdsum_binning_when_no_x_y_keywords(tmp_path, cfg, ccdsum):
    # NOAO-style cameras write the binning in one card; it must set the setup, or binned
    # and unbinned frames of one shape would share calibrations.
    light(tmp_path / "binned.fits", CCDSUM=ccdsum)
    light(tmp_path / "xy_wins.fits", CCDSUM="2 2", XBINNING=1, YBINNING=1)
    frames, rejected = scan(tmp_path, cfg)
    assert not rejected
    assert frames["binned.fits"]["setup"] == "2x2_10x8"
    assert (frames["binned.fits"]["xbinning"], frames["binned.fits"]["ybinning"]) == (2, 2)
    assert frames["xy_wins.fits"]["setup"] == "1x1_10x8"


def test_unreadable_ccdsum_is_rejected_naming_it(tmp_path, cfg):
    light(tmp_path / "odd.fits", CCDSUM="2 2 2")
    light(tmp_path / "half.fits", XBINNING=1.5)
    _, rejected = scan(tmp_path, cfg)
    assert rejected["odd.fits"]["reason"] == "bad_value"
    assert (
        "CCDSUM" in rejected["odd.fits"]["detail"] and "'2 2 2'" in rejected["odd.fits"]["detail"]
    )
    assert "XBINNING" in rejected["half.fits"]["detail"]


# --- damaged files ----------------------------------------------------------------------


def test_truncated_and_unreadable_files_are_rejected_not_fatal(tmp_path, cfg):
    good = light(tmp_path / "good.fits")
    cut = light(tmp_path / "cut.fits")
    full = cut.read_bytes()
    cut.write_bytes(full[: 2880 + 100])  # header complete, 100 of 160 data bytes
    (tmp_path / "x.fits").write_text("SIMPLE? no, this is a text file\n" * 200)
    (tmp_path / "short.fits").write_text("hello")
    (tmp_path / "notes.txt").write_text("not a frame at all")
    frames, rejected = scan(tmp_path, cfg)
    assert list(frames) == [good.name]
    assert rejected["cut.fits"]["reason"] == "truncated"
    assert "2980" in rejected["cut.fits"]["detail"]
    assert rejected["x.fits"]["reason"] == "unreadable"
    assert rejected["short.fits"]["reason"] == "unreadable"
    assert "notes.txt" not in rejected  # not a frame extension: ignored, not rejected


def test_a_flipped_byte_fails_the_checksum_and_rejects_the_file(tmp_path, cfg):
    for name in ("good.fits", "flipped.fits", "header.fits", "plain.fits"):
        path = light(tmp_path / name, OBSERVER="me")
        if name != "plain.fits":
            with fits.open(path) as hdul:
                hdul.writeto(path, checksum=True, overwrite=True)
    data = bytearray((tmp_path / "flipped.fits").read_bytes())
    data[2880 + 41] ^= 0x10  # one bit of one pixel
    (tmp_path / "flipped.fits").write_bytes(data)
    data = bytearray((tmp_path / "header.fits").read_bytes())
    data[data.index(b"OBSERVER= 'me") + 11] = ord("y")  # 'me' -> 'ye'
    (tmp_path / "header.fits").write_bytes(data)
    frames, rejected = scan(tmp_path, cfg)
    assert sorted(frames) == ["good.fits", "plain.fits"]  # no CHECKSUM: not checked
    assert {k: r["reason"] for k, r in rejected.items()} == {
        "flipped.fits": "checksum",
        "header.fits": "checksum",
    }
    assert "DATASUM" in rejected["flipped.fits"]["detail"]
    assert "CHECKSUM" in rejected["header.fits"]["detail"]
    assert "DATASUM" not in rejected["header.fits"]["detail"]


def test_a_frame_copied_under_two_names_is_used_once(tmp_path, cfg):
    light(tmp_path / "a.fits")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "copy.fits").write_bytes((tmp_path / "a.fits").read_bytes())
    (tmp_path / "b.fits").write_bytes((tmp_path / "a.fits").read_bytes())
    light(tmp_path / "other.fits", OBJECT="other")
    frames, rejected = scan(tmp_path, cfg)
    assert sorted(frames) == ["a.fits", "other.fits"]
    assert {k: r["reason"] for k, r in rejected.items()} == {
        "b.fits": "duplicate_of:a.fits",
        "sub/copy.fits": "duplicate_of:a.fits",
    }
    assert "as a.fits" in rejected["b.fits"]["detail"]


def test_truncated_file_is_picked_up_once_complete(tmp_path, cfg):
    raw, cache = tmp_path / "raw", tmp_path / "cache.pkl"
    path = light(raw / "late.fits")
    full = path.read_bytes()
    path.write_bytes(full[:3000])
    _, rejected = scan(raw, cfg, cache_path=cache)
    assert rejected["late.fits"]["reason"] == "truncated"
    path.write_bytes(full)  # the copy finishes: new size (and mtime)
    frames, rejected = scan(raw, cfg, cache_path=cache)
    assert not rejected
    assert frames["late.fits"]["imagetyp"] == "light"


def test_gzip_float32_and_image_in_extension(tmp_path, cfg):
    cards = {"IMAGETYP": "Light Frame", "EXPTIME": 60.0, "FILTER": "R", "OBJECT": "M51"}
    write_frame(tmp_path / "a.fits.gz", cards)
    write_frame(tmp_path / "b.fits", cards, dtype=np.float32)
    write_frame(tmp_path / "c.fits", cards, extension=True)
    frames, rejected = scan(tmp_path, cfg)
    assert not rejected
    assert set(frames) == {"a.fits.gz", "b.fits", "c.fits"}
    for f in frames.values():
        assert (f["imagetyp"], f["exptime"], f["filter"], f["object"]) == ("light", 60, "R", "M51")
        assert (f["ny"], f["nx"]) == (8, 10)
    assert frames["a.fits.gz"]["datamax"] == 65535.0
    assert frames["a.fits.gz"]["frame"] == "a"
    assert frames["b.fits"]["datamax"] is None
    assert frames["c.fits"]["hdu"] == 1
    assert frames["a.fits.gz"]["hdu"] == frames["b.fits"]["hdu"] == 0


def test_file_without_an_image_is_rejected(tmp_path, cfg):
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"IMAGETYP": "light"}))]).writeto(
        tmp_path / "empty.fits"
    )
    _, rejected = scan(tmp_path, cfg)
    assert rejected["empty.fits"]["reason"] == "no_image"


# --- configuration: filename rules, overrides, exclusions ----------------------------------


def test_filename_rule_types_frames_of_a_camera_without_imagetyp(tmp_path, cfg):
    write_frame(tmp_path / "bias_001.fit", {})
    write_frame(tmp_path / "Dark_300s_001.fit", {"EXPTIME": 300.0})
    write_frame(tmp_path / "m51_V_001.fit", {"EXPTIME": 300.0, "FILTER": "V"})
    cfg["filename_rules"] = [
        {"match": "bias*", "set": {"imagetyp": "bias"}},
        {"match": "[Dd]ark*", "set": {"imagetyp": "dark"}},
    ]
    frames, rejected = scan(tmp_path, cfg)
    assert frames["bias_001.fit"]["imagetyp"] == "bias"
    assert frames["Dark_300s_001.fit"]["imagetyp"] == "dark"
    assert rejected["m51_V_001.fit"]["reason"] == "missing_keyword"


def test_regex_rule_fills_a_blank_object_from_the_file_name(tmp_path, cfg):
    light(tmp_path / "m51_V_001.fits", obj="")
    light(tmp_path / "ngc891_V_001.fits", obj="NGC 891")
    cfg["filename_rules"] = [{"match": "*.fits", "regex": r"^(?P<object>[a-z0-9]+)_"}]
    frames, _ = scan(tmp_path, cfg)
    assert frames["m51_V_001.fits"]["object_name"] == "m51"
    assert frames["ngc891_V_001.fits"]["object_name"] == "NGC 891"  # header kept
    assert frames["ngc891_V_001.fits"]["object"] == "NGC_891"


def test_rule_replaces_header_values_only_with_override(tmp_path, cfg):
    light(tmp_path / "a.fits", filt="Clear")
    rule = {"match": "a.fits", "set": {"filter": "L", "object": "M101"}}
    cfg["filename_rules"] = [rule]
    frames, _ = scan(tmp_path, cfg)
    assert (frames["a.fits"]["filter"], frames["a.fits"]["object"]) == ("Clear", "M51")
    rule["override"] = True
    frames, _ = scan(tmp_path, cfg)
    assert (frames["a.fits"]["filter"], frames["a.fits"]["object"]) == ("L", "M101")


def test_rule_whose_regex_does_not_match_is_skipped(tmp_path, cfg):
    write_frame(tmp_path / "flat_V_01.fits", {"EXPTIME": 2.0})
    write_frame(tmp_path / "flatV.fits", {"EXPTIME": 2.0})
    cfg["filename_rules"] = [
        {"regex": r"^flat_(?P<filter>[A-Za-z]+)_", "set": {"imagetyp": "flat"}},
    ]
    frames, rejected = scan(tmp_path, cfg)
    assert (frames["flat_V_01.fits"]["imagetyp"], frames["flat_V_01.fits"]["filter"]) == (
        "flat",
        "V",
    )
    assert rejected["flatV.fits"]["reason"] == "missing_keyword"


def test_per_file_overrides_always_win(tmp_path, cfg):
    light(tmp_path / "night1/m51_001.fits", filt="V")
    light(tmp_path / "night1/m51_002.fits", filt="V")
    cfg["filename_rules"] = [{"match": "*", "set": {"filter": "B"}, "override": True}]
    cfg["overrides"] = {"night1/m51_002.fits": {"filter": "R", "imagetyp": "flat"}}
    frames, _ = scan(tmp_path, cfg)
    assert frames["night1/m51_001.fits"]["filter"] == "B"
    assert frames["night1/m51_002.fits"]["filter"] == "R"
    assert frames["night1/m51_002.fits"]["imagetyp"] == "flat"
    assert frames["night1/m51_002.fits"]["object"] == ""  # only lights have an object


def test_exclude_globs_list_files_as_excluded(tmp_path, cfg):
    light(tmp_path / "keep.fits")
    light(tmp_path / "focus_001.fits")
    light(tmp_path / "bad/broken.fits")
    (tmp_path / "bad/junk.fits").write_text("junk")
    cfg["exclude"] = ["focus_*", "bad/*"]
    frames, rejected = scan(tmp_path, cfg)
    assert list(frames) == ["keep.fits"]
    assert {p: r["reason"] for p, r in rejected.items()} == {
        "focus_001.fits": "excluded",
        "bad/broken.fits": "excluded",
        "bad/junk.fits": "excluded",
    }


def test_hidden_files_other_extensions_and_recursion(tmp_path, cfg):
    light(tmp_path / "a.fits")
    light(tmp_path / ".hidden.fits")
    light(tmp_path / ".git/b.fits")
    light(tmp_path / "sub/c.FIT")
    light(tmp_path / "d.png")
    frames, rejected = scan(tmp_path, cfg)
    assert sorted(frames) == ["a.fits", "sub/c.FIT"] and not rejected
    assert frames["sub/c.FIT"]["frame"] == "sub__c"
    cfg["recursive"] = False
    frames, _ = scan(tmp_path, cfg)
    assert sorted(frames) == ["a.fits"]


# --- exposure groups ----------------------------------------------------------------------


def test_scan_groups_exposures_within_tolerance(tmp_path, cfg):
    for i, t in enumerate([299.98, 300.0, 300.1, 60.0, 120.0]):
        light(tmp_path / f"l{i}.fits", exptime=t)
    write_frame(tmp_path / "d60.fits", {"IMAGETYP": "dark", "EXPTIME": 60.02})
    write_frame(tmp_path / "z.fits", {"IMAGETYP": "bias", "EXPTIME": 0.001})
    frames, _ = scan(tmp_path, cfg)
    groups = {p: f["expgroup"] for p, f in frames.items()}
    assert groups == {
        "l0.fits": "300",
        "l1.fits": "300",
        "l2.fits": "300",
        "l3.fits": "60",
        "l4.fits": "120",
        "d60.fits": "60",  # darks share the lights' labels, so they can be matched
        "z.fits": "0",
    }
    assert frames["l2.fits"]["group"] == "M51_V_300"
    assert frames["l2.fits"]["exptime"] == 300.1  # the exact value is kept
    assert frames["z.fits"]["exptime"] == 0.0
    assert frames["d60.fits"]["group"] == ""  # only lights are stacked


def test_exposure_groups_are_per_setup(tmp_path, cfg):
    light(tmp_path / "a.fits", exptime=300.0)
    light(tmp_path / "b.fits", exptime=300.2, XBINNING=2, YBINNING=2)
    frames, _ = scan(tmp_path, cfg)
    assert frames["a.fits"]["setup"] != frames["b.fits"]["setup"]
    assert frames["a.fits"]["expgroup"] == frames["b.fits"]["expgroup"] == "300"


def test_exposure_tolerance_is_configuration(tmp_path, cfg):
    light(tmp_path / "a.fits", exptime=300.0)
    light(tmp_path / "b.fits", exptime=301.0)
    frames, _ = scan(tmp_path, cfg)
    assert frames["a.fits"]["expgroup"] != frames["b.fits"]["expgroup"]
    cfg["exptime_tolerance"] = {"absolute": 2.0, "relative": 0.0}
    frames, _ = scan(tmp_path, cfg)
    assert frames["a.fits"]["expgroup"] == frames["b.fits"]["expgroup"] == "301"


def test_group_exposures_edge_cases():
    assert inventory.group_exposures([]) == {}
    assert inventory.group_exposures([5.0]) == {5.0: "5"}
    labels = inventory.group_exposures([300.0, 299.98, 300.1, 300.0, 60.0, 120.0])
    assert labels == {299.98: "300", 300.0: "300", 300.1: "300", 60.0: "60", 120.0: "120"}
    # The label is the median over frames: five flats of 0.5 s and one of 0.33 s are '0.5'.
    flats = inventory.group_exposures([0.33, 0.5, 0.5, 0.5, 0.5, 0.5], absolute=0.2)
    assert set(flats.values()) == {"0.5"}
    # A group is measured from its first member, so a slow drift does not chain forever.
    chain = inventory.group_exposures([10.0, 10.04, 10.08, 10.12])
    assert len(set(chain.values())) == 2
    # The relative tolerance takes over for long exposures (0.1 % of 1800 s = 1.8 s).
    assert len(set(inventory.group_exposures([1800.0, 1801.5]).values())) == 1
    assert len(set(inventory.group_exposures([1800.0, 1802.0]).values())) == 2
    # Short exposures keep their digits; the absolute tolerance joins 0.01 s and 0.02 s.
    assert inventory.group_exposures([0.1, 0.2, 1.0]) == {0.1: "0.1", 0.2: "0.2", 1.0: "1"}
    assert len(set(inventory.group_exposures([0.01, 0.02]).values())) == 1


@pytest.mark.parametrize(
    ("times", "absolute", "expected"),
    [
        ([299.5, 300.0], 0.05, {299.5: "299.5", 300.0: "300"}),
        ([300.0, 300.4], 0.05, {300.0: "300", 300.4: "300.4"}),
        ([0.1004, 0.1006], 0.0001, {0.1004: "0.1", 0.1006: "0.101"}),
        ([59.9, 60.0, 60.1, 60.2], 0.05, {59.9: "59.9", 60.0: "60", 60.1: "60.1", 60.2: "60.2"}),
    ],
)
def test_distinct_exposure_groups_get_distinct_labels(times, absolute, expected):
    # Labels name master darks: two groups that round alike must not share (merge) one.
    labels = inventory.group_exposures(times, absolute=absolute, relative=0.0)
    assert labels == expected


@pytest.mark.parametrize(
    ("seconds", "label"),
    [
        (300.04, "300"),
        (299.98, "300"),
        (0.33, "0.33"),
        (0.001, "0.001"),
        (1.5, "1.5"),
        (2.0, "2"),
        (12.345, "12.3"),
        (1234.0, "1234"),
        (0.0, "0"),
        (-1.0, "0"),
    ],
)
def test_exposure_label(seconds, label):
    assert inventory.exposure_label(seconds) == label


# --- names --------------------------------------------------------------------------------


def test_closed_shutter_frames_ignore_filter(tmp_path, cfg):
    write_frame(tmp_path / "bias.fits", {"IMAGETYP": "bias", "FILTER": "V"})
    write_frame(tmp_path / "dark.fits", {"IMAGETYP": "dark", "EXPTIME": 60.0, "FILTER": "V"})
    write_frame(tmp_path / "flat.fits", {"IMAGETYP": "flat", "EXPTIME": 2.0, "FILTER": "V"})
    write_frame(tmp_path / "flat0.fits", {"IMAGETYP": "flat", "EXPTIME": 2.0})
    light(tmp_path / "light.fits", filt="I")
    frames, _ = scan(tmp_path, cfg)
    got = {p: (f["filter_name"], f["filter"]) for p, f in frames.items()}
    assert got == {
        "bias.fits": ("", ""),
        "dark.fits": ("", ""),
        "flat.fits": ("V", "V"),
        "flat0.fits": ("", "none"),  # a flat or light without FILTER gets the name 'none'
        "light.fits": ("I", "I"),
    }


def test_filter_and_object_names_are_file_safe_and_distinct(tmp_path, cfg):
    raw_filters = ["g'", "Johnson B", "a b", "a_b", "V"]
    for i, filt in enumerate(raw_filters):
        light(tmp_path / f"l{i}.fits", filt=filt, obj="NGC 891 / field:2")
    frames, _ = scan(tmp_path, cfg)
    names = {f["filter_name"]: f["filter"] for f in frames.values()}
    assert set(names) == set(raw_filters)
    assert len(set(names.values())) == len(raw_filters)  # collisions resolved
    for name in names.values():
        assert name == inventory.sanitize(name)  # only [A-Za-z0-9._+-]
    assert names["Johnson B"] == "Johnson_B"
    assert names["V"] == "V"
    assert names["a_b"] == "a_b"  # an already safe name keeps its name
    objects = {f["object"] for f in frames.values()}
    assert objects == {"NGC_891_field_2"}
    groups = {f["group"] for f in frames.values()}
    assert len(groups) == len(raw_filters)
    assert all(g == inventory.sanitize(g) for g in groups)


def test_sanitize():
    assert inventory.sanitize("Johnson B") == "Johnson_B"
    assert inventory.sanitize(" H-alpha 7nm ") == "H-alpha_7nm"
    assert inventory.sanitize("") == "none"
    assert inventory.sanitize("'''") == "none"
    out = inventory.sanitize("g'")
    assert out and out == inventory.sanitize(out) and not out.startswith("_")


def test_frame_ids_are_unique(tmp_path, cfg):
    for rel in ["a.fit", "a.fits", "a.fits.gz", "n1/a.fits", "n1__a.fits", "n2/x y.fits"]:
        light(tmp_path / rel)
    light(tmp_path / "b.fits.gz").rename(tmp_path / "B.FITS.GZ")
    frames, _ = scan(tmp_path, cfg)
    ids = {p: f["frame"] for p, f in frames.items()}
    assert len(set(ids.values())) == len(ids) == 7
    assert ids["B.FITS.GZ"] == "B"
    assert ids["a.fit"] == "a"
    assert ids["n1/a.fits"] == "n1__a"
    assert ids["n2/x y.fits"] == "n2__x_y"
    assert all(i == inventory.sanitize(i) for i in ids.values())


def test_group_is_file_safe_with_any_grouping(tmp_path, cfg):
    light(tmp_path / "a.fits", **{"DATE-OBS": "2024-03-01T21:14:05.3"})
    frames, _ = scan(tmp_path, cfg, grouping=("object", "date", "setup"))
    group = frames["a.fits"]["group"]
    assert group == inventory.sanitize(group)
    assert group.startswith("M51_2024-03-01T21") and group.endswith("_1x1_10x8")


# --- cache --------------------------------------------------------------------------------


def _replace_keeping_size_and_mtime(path, **cards):
    """Rewrite a frame with other header values but the original size and mtime."""
    st = path.stat()
    with fits.open(path) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    for key, value in cards.items():
        header[key] = value
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_unchanged_directory_is_served_from_the_cache(tmp_path, cfg):
    raw, cache = tmp_path / "raw", tmp_path / "index/cache.pkl"
    for i in range(3):
        light(raw / f"l{i}.fits", obj="M51")
    first, _ = scan(raw, cfg, cache_path=cache)
    stamp = cache.stat().st_mtime_ns
    again, _ = scan(raw, cfg, cache_path=cache)
    assert again == first
    assert cache.stat().st_mtime_ns == stamp  # not rewritten
    # Proof that no file was read: different bytes, same size and mtime -> old header.
    _replace_keeping_size_and_mtime(raw / "l1.fits", OBJECT="M52")
    cached, _ = scan(raw, cfg, cache_path=cache)
    assert cached["l1.fits"]["object"] == "M51"
    assert cache.stat().st_mtime_ns == stamp
    # Without the cache the file is read.
    fresh, _ = scan(raw, cfg)
    assert fresh["l1.fits"]["object"] == "M52"


def test_changed_file_is_reread_and_cache_updated(tmp_path, cfg):
    raw, cache = tmp_path / "raw", tmp_path / "cache.pkl"
    light(raw / "a.fits", obj="M51")
    light(raw / "b.fits", obj="M51")
    first, _ = scan(raw, cfg, cache_path=cache)
    st = (raw / "a.fits").stat()
    _replace_keeping_size_and_mtime(raw / "a.fits", OBJECT="M52")
    os.utime(raw / "a.fits", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    frames, _ = scan(raw, cfg, cache_path=cache)
    assert frames["a.fits"]["object"] == "M52"
    assert frames["a.fits"]["fingerprint"] != first["a.fits"]["fingerprint"]
    assert frames["b.fits"] == first["b.fits"]
    # A removed file leaves the inventory and the cache.
    before = cache.read_bytes()
    (raw / "b.fits").unlink()
    frames, _ = scan(raw, cfg, cache_path=cache)
    assert list(frames) == ["a.fits"]
    assert len(cache.read_bytes()) < len(before)  # its entry is dropped


def test_recopied_file_keeps_its_fingerprint(tmp_path, cfg):
    raw, cache = tmp_path / "raw", tmp_path / "cache.pkl"
    path = light(raw / "a.fits")
    first, _ = scan(raw, cfg, cache_path=cache)
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    again, _ = scan(raw, cfg, cache_path=cache)
    assert again["a.fits"]["fingerprint"] == first["a.fits"]["fingerprint"]
    assert again == first


def test_corrupt_or_foreign_cache_is_ignored(tmp_path, cfg):
    raw, cache = tmp_path / "raw", tmp_path / "cache.pkl"
    light(raw / "a.fits")
    cache.write_bytes(b"not a pickle")
    frames, _ = scan(raw, cfg, cache_path=cache)
    assert frames["a.fits"]["imagetyp"] == "light"
    assert scan(raw, cfg, cache_path=cache)[0] == frames  # the rewritten cache is valid


# --- tables -------------------------------------------------------------------------------


def test_write_tsv_rewrites_only_when_content_changes(tmp_path, cfg):
    light(tmp_path / "raw/a.fits")
    inv = inventory.scan(tmp_path / "raw", cfg)
    out = tmp_path / "index/frames.tsv"
    assert inventory.write_tsv(out, inv.frames, inventory.COLUMNS) is True
    stamp = out.stat().st_mtime_ns
    assert inventory.write_tsv(out, inv.frames, inventory.COLUMNS) is False
    assert out.stat().st_mtime_ns == stamp
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(inventory.COLUMNS)
    row = dict(zip(inventory.COLUMNS, lines[1].split("\t"), strict=True))
    assert (row["frame"], row["filter_name"], row["exptime"]) == ("a", "V", "300.0")
    assert row["gain"] == ""  # None is an empty cell
    inv.frames[0]["object_name"] = "M 51\twith a tab"
    assert inventory.write_tsv(out, inv.frames, inventory.COLUMNS) is True
    assert len(out.read_text().splitlines()[1].split("\t")) == len(inventory.COLUMNS)
    assert not list(out.parent.glob(".*part"))  # no temporary file left behind
