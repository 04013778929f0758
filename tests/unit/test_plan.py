"""Calibration plan: which masters are made and which masters every light frame uses."""

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from ccdflow import inventory, plan

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[2] / "config/config.yaml").read_text())
SETUP = "1x1_10x8"


@pytest.fixture
def cal():
    """The default ``calibration`` section (a fresh copy: tests may edit it)."""
    return copy.deepcopy(CONFIG["calibration"])


def rec(imagetyp, exptime=0.0, filt="", n=1, setup=SETUP, start=0, **extra):
    """``n`` inventory records as :func:`inventory.scan` makes them."""
    out = []
    for i in range(start, start + n):
        label = inventory.exposure_label(exptime)
        stem = f"{imagetyp}_{filt or 'x'}_{label}s_{setup}_{i:03d}"
        out.append(
            {
                "frame": stem,
                "path": f"{stem}.fits",
                "imagetyp": imagetyp,
                "exptime": exptime,
                "expgroup": label if imagetyp != "bias" else "0",
                "filter": filt,
                "object": "M51" if imagetyp == "light" else "",
                "group": f"M51_{filt}_{label}" if imagetyp == "light" else "",
                "setup": setup,
                "hdu": 0,
                **extra,
            }
        )
    return out


def night(*groups):
    return inventory.Inventory(frames=[r for g in groups for r in g])


def spec(name, exptime, expgroup=None):
    return plan.MasterSpec(
        "dark", name, SETUP, [], exptime=exptime, expgroup=expgroup or str(exptime)
    )


# --- choose_dark --------------------------------------------------------------------------

DARKS = [spec("d60", 60.0, "60"), spec("d300", 300.0, "300")]


@pytest.mark.parametrize(
    ("exptime", "expgroup", "scalable", "name", "scale"),
    [
        (300.1, "300", True, "d300", 1.0),  # equal exposure group: no scaling
        (60.0, "60", False, "d60", 1.0),  # ... even when darks cannot be scaled
        (120.0, "120", True, "d300", 0.4),  # nearest longer, scaled
        (30.0, "30", True, "d60", 0.5),
        (600.0, "600", True, "d300", 2.0),  # no longer dark: nearest shorter
        (120.0, "120", False, None, 0.0),  # not scalable: nothing
    ],
)
def test_choose_dark(exptime, expgroup, scalable, name, scale):
    dark, got = plan.choose_dark(exptime, expgroup, DARKS, scalable)
    assert (dark.name if dark else None) == name
    assert got == pytest.approx(scale)


def test_choose_dark_without_darks_or_with_only_zero_second_darks():
    assert plan.choose_dark(300.0, "300", []) == (None, 0.0)
    zero = spec("d0", 0.0, "0")
    assert plan.choose_dark(300.0, "300", [zero]) == (None, 0.0)  # never t / 0
    assert plan.choose_dark(0.0, "0", [zero]) == (zero, 1.0)
    assert plan.choose_dark(30.0, "30", [zero, *DARKS])[0].name == "d60"


# --- make_plan ----------------------------------------------------------------------------


def _write(path, cards):
    data = np.full((8, 10), 1000, dtype=np.uint16)
    header = fits.Header({**cards, "ORIGNAME": path.name})  # equal frames would be duplicates
    fits.PrimaryHDU(data, header=header).writeto(path)


def test_plan_of_a_scanned_night(tmp_path, cal):
    def frames(kind, n, exptime, filt, prefix):
        for i in range(n):
            cards = {"IMAGETYP": kind, "EXPTIME": exptime, "FILTER": filt, "OBJECT": "M51"}
            _write(tmp_path / f"{prefix}_{i}.fits", cards)

    frames("Bias Frame", 3, 0.0, "V", "bias")
    frames("Dark Frame", 3, 300.0, "V", "dark300")  # closed shutter: the V means nothing
    frames("Dark Frame", 3, 60.0, "V", "dark60")
    frames("Flat Field", 3, 2.0, "V", "flatV")
    frames("Flat Field", 3, 3.0, "I", "flatI")
    frames("Light Frame", 2, 300.0, "V", "m51V")
    frames("Light Frame", 1, 299.98, "I", "m51I300")
    frames("Light Frame", 1, 120.0, "I", "m51I120")
    inv = inventory.scan(tmp_path, CONFIG["inventory"])
    assert not inv.rejected
    p = plan.make_plan(inv, cal)

    assert sorted(p.masters) == [
        f"bias_{SETUP}",
        f"dark_{SETUP}_300s",
        f"dark_{SETUP}_60s",
        f"flat_{SETUP}_I",
        f"flat_{SETUP}_V",
    ]
    bias = p.masters[f"bias_{SETUP}"]
    assert bias.path == f"results/masters/bias_{SETUP}.fits"
    assert sorted(f["path"] for f in bias.frames) == [f"bias_{i}.fits" for i in range(3)]
    d300 = p.masters[f"dark_{SETUP}_300s"]
    assert (d300.kind, d300.exptime, d300.expgroup, d300.bias) == ("dark", 300, "300", bias.name)
    assert len(d300.frames) == 3
    flat_v = p.masters[f"flat_{SETUP}_V"]
    assert (flat_v.filter, flat_v.bias, flat_v.dark) == ("V", bias.name, f"dark_{SETUP}_60s")
    assert flat_v.dark_scales == pytest.approx([2 / 60] * 3)  # nearest longer dark, scaled
    assert {f["filter"] for f in flat_v.frames} == {"V"}

    use = {f: (u["bias"], u["dark"], u["dark_scale"], u["flat"]) for f, u in p.lights.items()}
    assert use == {
        "m51V_0": (bias.name, d300.name, 1.0, flat_v.name),
        "m51V_1": (bias.name, d300.name, 1.0, flat_v.name),
        # the V-filter darks serve the I band: closed-shutter frames ignore FILTER
        "m51I300_0": (bias.name, d300.name, 1.0, f"flat_{SETUP}_I"),
        "m51I120_0": (bias.name, d300.name, pytest.approx(0.4), f"flat_{SETUP}_I"),
    }
    assert p.lights["m51V_0"]["record"]["path"] == "m51V_0.fits"
    assert p.groups() == {
        "M51_I_120": ["m51I120_0"],
        "M51_I_300": ["m51I300_0"],
        "M51_V_300": ["m51V_0", "m51V_1"],
    }
    assert p.warnings == []


def test_lights_in_a_filter_without_flats_stop_the_plan_with_policy_error(cal):
    cal["missing_master"] = "error"
    inv = night(
        rec("bias", n=3),
        rec("flat", 2.0, "V", n=3),
        rec("light", 300.0, "V"),
        rec("light", 300.0, "Ha", n=2),
    )
    with pytest.raises(plan.PlanError) as err:
        plan.make_plan(inv, cal)
    message = str(err.value)
    assert "Ha (2 light frames)" in message
    assert "V (" not in message
    assert "require_flat: false" in message and "Add flats" in message  # how to fix it


def test_lights_no_master_can_calibrate_are_excluded_and_the_rest_reduced(cal):
    assert cal["missing_master"] == "exclude"  # the default
    no_filter = rec("light", 300.0, "none", start=7, missing={"filter": "FILTER/FILTER1"})
    inv = night(
        rec("bias", n=3),
        rec("flat", 2.0, "V", n=3),
        rec("light", 300.0, "V"),
        rec("light", 300.0, "Ha", n=2),
        rec("light", 300.0, "V", setup="2x2_5x4"),  # binned: no master for its setup
        no_filter,
    )
    p = plan.make_plan(inv, cal)
    assert list(p.lights) == [rec("light", 300.0, "V")[0]["frame"]]
    reasons = {r["path"]: r["reason"] for r in p.rejected}
    assert reasons == {
        "light_Ha_300s_1x1_10x8_000.fits": "no_matching_master",
        "light_Ha_300s_1x1_10x8_001.fits": "no_matching_master",
        "light_V_300s_2x2_5x4_000.fits": "no_matching_master",
        no_filter[0]["path"]: "missing_keyword:FILTER",
    }
    detail = {r["path"]: r["detail"] for r in p.rejected}
    ha = detail["light_Ha_300s_1x1_10x8_000.fits"]
    assert "no flat frames for filter(s) Ha (2 light frames)" in ha
    binned = detail["light_V_300s_2x2_5x4_000.fits"]
    assert "setup 2x2_5x4" in binned and f"flats of them exist for setup {SETUP}" in binned
    assert "setup 2x2_5x4" not in " ".join(p.warnings)  # no warnings about a setup left out


def test_a_single_flat_without_filter_is_excluded_not_fatal(cal):
    stray = rec("flat", 2.0, "none", start=5, missing={"filter": "FILTER"})
    inv = night(rec("bias", n=3), rec("flat", 2.0, "V", n=3), stray, rec("light", 300.0, "V"))
    p = plan.make_plan(inv, cal)
    assert len(p.lights) == 1 and f"flat_{SETUP}_none" not in p.masters
    (r,) = p.rejected
    assert (r["path"], r["reason"]) == (stray[0]["path"], "missing_keyword:FILTER")
    assert "calibration.min_frames.flat is 3" in r["detail"]


def test_no_flat_for_any_light_stops_the_plan_whatever_the_policy(cal):
    inv = night(rec("bias", n=3), rec("light", 300.0, "V"), rec("light", 300.0, "R"))
    with pytest.raises(plan.PlanError, match=r"no light frame can be calibrated: .*R \(1 light"):
        plan.make_plan(inv, cal)


def test_require_flat_false_calibrates_without_a_flat(cal):
    cal["require_flat"] = False
    inv = night(rec("bias", n=3), rec("flat", 2.0, "V", n=3), rec("light", 300.0, "Ha"))
    p = plan.make_plan(inv, cal)
    (use,) = p.lights.values()
    assert use["flat"] is None
    assert use["bias"] == f"bias_{SETUP}"
    assert f"flat_{SETUP}_V" in p.masters


def test_flats_of_another_setup_do_not_count(cal):
    inv = night(
        rec("bias", n=3),
        rec("flat", 2.0, "V", n=3),
        rec("bias", n=3, setup="2x2_5x4"),
        rec("light", 300.0, "V", setup="2x2_5x4"),
    )
    with pytest.raises(plan.PlanError, match="setup 2x2_5x4: no flat frames for filter"):
        plan.make_plan(inv, cal)


@pytest.mark.parametrize(
    ("kind", "frames"),
    [
        ("bias", rec("bias", n=2)),
        ("dark", rec("dark", 300.0, n=3) + rec("dark", 60.0, n=1)),
        ("flat", rec("flat", 2.0, "V", n=2)),
    ],
)
def test_too_few_frames_for_a_master_stop_the_plan_with_policy_error(cal, kind, frames):
    cal["missing_master"] = "error"
    enough = {"bias": rec("bias", n=3), "dark": [], "flat": rec("flat", 2.0, "V", n=3)}
    enough[kind] = frames
    inv = night(*enough.values(), rec("light", 300.0, "V"))
    with pytest.raises(plan.PlanError) as err:
        plan.make_plan(inv, cal)
    message = str(err.value)
    count = 1 if kind == "dark" else 2
    assert message.startswith(f"{kind} ")
    assert f"{count} frame(s)" in message
    assert f"calibration.min_frames.{kind} is 3" in message
    assert frames[-1]["path"] in message  # names the files
    cal["min_frames"][kind] = count
    plan.make_plan(inv, cal)  # lowering the minimum lets it through


def test_too_few_frames_for_a_master_are_excluded_by_default(cal):
    few = rec("dark", 60.0, n=1)
    flats = rec("flat", 2.0, "V", n=3)
    inv = night(rec("bias", n=2), rec("dark", 300.0, n=3), few, flats, rec("light", 300.0, "V"))
    p = plan.make_plan(inv, cal)
    assert sorted(p.masters) == [f"dark_{SETUP}_300s", f"flat_{SETUP}_V"]
    assert {r["path"]: r["reason"] for r in p.rejected} == {
        **{f["path"]: "too_few_frames" for f in rec("bias", n=2)},
        few[0]["path"]: "too_few_frames",
    }
    assert len(p.lights) == 1 and next(iter(p.lights.values()))["bias"] is None


def test_without_bias_darks_are_not_scaled(cal):
    inv = night(
        rec("dark", 300.0, n=3),
        rec("dark", 2.0, n=3),
        rec("flat", 2.0, "V", n=2),
        rec("flat", 4.0, "V", n=1),
        rec("light", 300.0, "V"),
        rec("light", 120.0, "V"),
    )
    p = plan.make_plan(inv, cal)
    assert not any(m.kind == "bias" for m in p.masters.values())
    assert p.masters[f"dark_{SETUP}_300s"].bias is None
    by_exp = {u["record"]["exptime"]: u for u in p.lights.values()}
    assert (by_exp[300.0]["dark"], by_exp[300.0]["dark_scale"]) == (f"dark_{SETUP}_300s", 1.0)
    assert (by_exp[120.0]["dark"], by_exp[120.0]["bias"]) == (None, None)
    assert any("no bias frames" in w for w in p.warnings)
    (warning,) = [w for w in p.warnings if by_exp[120.0]["record"]["path"] in w]
    assert "no usable dark" in warning and "without a bias" in warning
    # The flat master uses the 2 s dark as it is: a dark that still holds the bias is
    # never scaled (a 4 s flat with a 2 s dark gets scale 1, not 2).
    flat = p.masters[f"flat_{SETUP}_V"]
    assert flat.dark == f"dark_{SETUP}_2s"
    assert flat.dark_scales == [1.0, 1.0, 1.0]


def test_flat_master_scales_one_dark_per_flat_exposure(cal):
    inv = night(
        rec("bias", n=3),
        rec("dark", 2.0, n=3),
        rec("flat", 2.0, "V", n=2),
        rec("flat", 1.0, "V", n=1, start=2),
        rec("light", 2.0, "V"),
    )
    flat = plan.make_plan(inv, cal).masters[f"flat_{SETUP}_V"]
    assert flat.dark == f"dark_{SETUP}_2s"
    assert [f["exptime"] for f in flat.frames] == [2.0, 2.0, 1.0]
    assert flat.dark_scales == pytest.approx([1.0, 1.0, 0.5])


def test_dark_scaling_false_uses_only_equal_exposures(cal):
    cal["dark_scaling"] = False
    inv = night(rec("bias", n=3), rec("dark", 300.0, n=3), rec("light", 120.0, ""))
    cal["require_flat"] = False
    p = plan.make_plan(inv, cal)
    (use,) = p.lights.values()
    assert use["dark"] is None
    assert any("dark_scaling is false" in w for w in p.warnings)


def test_use_switches_skip_steps_and_their_masters(cal):
    inv = night(
        rec("bias", n=3),
        rec("dark", 300.0, n=3),
        rec("flat", 2.0, "V", n=1),  # too few, but not needed when use_flat is false
        rec("light", 300.0, "V"),
    )
    cal.update(use_bias=False, use_dark=False, use_flat=False)
    p = plan.make_plan(inv, cal)
    assert p.masters == {}
    (use,) = p.lights.values()
    assert (use["bias"], use["dark"], use["flat"]) == (None, None, None)
    assert [w for w in p.warnings if "dark" in w] == []  # darks off on purpose: no warning
    assert any("use_bias is false" in w for w in p.warnings)


def test_no_darks_at_all_skips_the_dark_step_silently(cal):
    inv = night(rec("bias", n=3), rec("flat", 2.0, "V", n=3), rec("light", 300.0, "V"))
    p = plan.make_plan(inv, cal)
    (use,) = p.lights.values()
    assert (use["dark"], use["dark_scale"]) == (None, 0.0)
    assert p.masters[f"flat_{SETUP}_V"].dark is None
    assert p.warnings == []


def test_calibration_only_night_makes_masters(cal):
    inv = night(rec("bias", n=3), rec("dark", 60.0, n=3), rec("flat", 2.0, "R", n=3))
    p = plan.make_plan(inv, cal)
    assert sorted(m.kind for m in p.masters.values()) == ["bias", "dark", "flat"]
    assert p.lights == {} and p.groups() == {}


# --- detector -----------------------------------------------------------------------------


def test_detector_config_beats_header():
    record = {"gain": 1.4, "rdnoise": 9.0, "saturation": 60000.0, "datamax": 65535.0}
    cfg = {"gain": 2.0, "read_noise": 7.5, "saturation": 50000.0}
    assert plan.detector(record, cfg) == {"gain": 2.0, "read_noise": 7.5, "saturation": 50000.0}
    none = dict.fromkeys(cfg)
    assert plan.detector(record, none) == {"gain": 1.4, "read_noise": 9.0, "saturation": 60000.0}
    assert plan.detector(record, {"gain": 0.8})["read_noise"] == 9.0


def test_detector_source_header_is_null_and_measured_is_left_to_the_frame_job():
    record = {"gain": 1.4, "rdnoise": 9.0, "saturation": None, "datamax": 65535.0}
    header = {"gain": "header", "read_noise": "header"}
    assert plan.detector(record, header) == plan.detector(record, dict.fromkeys(header))
    assert plan.detector_sources(record, header)["gain"] == "header"
    cfg = {"gain": "measured", "read_noise": 5.0}
    assert plan.detector(record, cfg)["gain"] is None  # from detector.json at run time
    assert plan.detector_sources(record, cfg) == {
        "gain": "measured",
        "read_noise": "config",
        "saturation": "header or data type",
    }
    assert plan.measured(cfg) == ("gain",) and plan.measured(header) == ()


def test_detector_saturation_falls_back_to_the_data_type_maximum(tmp_path):
    _write(tmp_path / "u16.fits", {"IMAGETYP": "light", "EXPTIME": 1.0, "FILTER": "V"})
    header = fits.Header({"IMAGETYP": "bias"})
    fits.PrimaryHDU(np.zeros((8, 10), np.float32), header=header).writeto(tmp_path / "f32.fits")
    inv = inventory.scan(tmp_path, CONFIG["inventory"])
    rows = {f["path"]: f for f in inv.frames}
    with fits.open(tmp_path / "u16.fits") as hdul:
        assert hdul[0].header["BZERO"] == 32768
    got = plan.detector(rows["u16.fits"], CONFIG["detector"])
    assert got == {"gain": None, "read_noise": None, "saturation": 65535.0}
    assert plan.detector(rows["f32.fits"], CONFIG["detector"])["saturation"] is None


# --- calibration sets across nights ------------------------------------------------


def _frame(name, imagetyp, date, *, exptime=60.0, filt="V", temperature=None):
    return {
        "frame": name,
        "path": f"{name}.fits",
        "imagetyp": imagetyp,
        "exptime": 0.0 if imagetyp == "bias" else exptime,
        "expgroup": inventory.exposure_label(exptime) if imagetyp != "bias" else "0",
        "filter": "" if imagetyp in ("bias", "dark") else filt,
        "object": "M1" if imagetyp == "light" else "",
        "group": f"M1_{filt}_60" if imagetyp == "light" else "",
        "setup": "1x1_10x8",
        "date": date,
        "temperature": temperature,
    }


def _cfg():
    return copy.deepcopy(CONFIG["calibration"])


def _two_nights(cal_date="2024-03-15T22:00:00", light_dates=("2024-03-15T23:00:00",)):
    frames = []
    for i in range(3):
        frames.append(_frame(f"b{i}", "bias", cal_date))
        frames.append(_frame(f"d{i}", "dark", cal_date, temperature=-20.0))
        frames.append(_frame(f"f{i}", "flat", cal_date, exptime=2.0))
    for j, date in enumerate(light_dates):
        frames.append(_frame(f"l{j}", "light", date, temperature=-20.0))
    return inventory.Inventory(frames=frames)


def test_night_is_local_noon_to_noon():
    assert plan.night_of("2024-03-16T03:00:00") == "20240315"  # after midnight: same night
    assert plan.night_of("2024-03-15T13:00:00") == "20240315"
    assert plan.night_of("2024-03-16T03:00:00", utc_offset_hours=-10) == "20240315"
    assert plan.night_of("2024-03-16T01:00:00", utc_offset_hours=+12) == "20240316"
    assert plan.night_of("") == "" and plan.night_of("garbage") == ""


def test_lights_of_a_night_without_calibrations_use_the_nearest_nights():
    inv = _two_nights(light_dates=("2024-03-15T23:00:00", "2024-03-17T01:00:00"))
    cfg = {**_cfg(), "by_night": True}
    p = plan.make_plan(inv, cfg)
    assert sorted(p.masters) == [
        "bias_1x1_10x8_20240315",
        "dark_1x1_10x8_20240315_60s",
        "flat_1x1_10x8_20240315_V",
    ]
    second = p.lights["l1"]
    assert second["night"] == "20240316"
    assert second["bias"] == "bias_1x1_10x8_20240315"
    assert second["flat"] == "flat_1x1_10x8_20240315_V"
    assert second["candidates"]["flat"] == ["night 20240315 (1 d)"]  # recorded, with distance


def test_masters_beyond_the_night_gap_are_not_used():
    inv = _two_nights(light_dates=("2024-05-30T23:00:00",))
    with pytest.raises(plan.PlanError, match="within 30 nights"):
        plan.make_plan(inv, {**_cfg(), "by_night": True})
    p = plan.make_plan(inv, {**_cfg(), "by_night": True, "max_night_gap": 90})
    assert p.lights["l0"]["flat"] == "flat_1x1_10x8_20240315_V"


def test_darks_can_be_required_to_match_the_temperature():
    inv = _two_nights()
    inv.frames[-1]["temperature"] = -5.0  # the light was taken warm
    p = plan.make_plan(inv, {**_cfg(), "dark_max_temp_diff": 2.0})
    assert p.lights["l0"]["dark"] is None
    assert any("no usable dark" in w for w in p.warnings)
    p = plan.make_plan(inv, {**_cfg(), "dark_max_temp_diff": 20.0})
    assert p.lights["l0"]["dark"] == "dark_1x1_10x8_60s"


def test_overscan_without_bias_after_overscan_uses_no_bias_frames():
    inv = _two_nights()
    p = plan.make_plan(inv, _cfg(), overscan={"enabled": True, "bias_after_overscan": False})
    assert not any(m.startswith("bias_") for m in p.masters)
    assert p.lights["l0"]["bias"] is None
    assert any("bias frames are not used" in w for w in p.warnings)
    p = plan.make_plan(inv, _cfg(), overscan={"enabled": True, "bias_after_overscan": True})
    assert p.lights["l0"]["bias"] == "bias_1x1_10x8"


# --- sky and dome flats (calibration.illumination) ---------------------------------------


def _sky_dome_night(n_sky=3, n_dome=3, n_plain=0):
    return night(
        rec("bias", n=3),
        rec("flat", 1.0, "V", n=n_sky, flat_kind="sky"),
        rec("flat", 5.0, "V", n=n_dome, start=10, flat_kind="dome"),
        rec("flat", 2.0, "V", n=n_plain, start=20, flat_kind="unspecified"),
        rec("flat", 1.0, "R", n=3, flat_kind="sky"),
        rec("light", 60.0, "V", n=2),
        rec("light", 60.0, "R", n=2),
    )


def test_sky_and_dome_flats_make_two_masters_and_their_combination(cal):
    cal["illumination"]["enabled"] = True
    p = plan.make_plan(_sky_dome_night(), cal)
    name = f"flat_{SETUP}_V"
    combined = p.masters[name]
    assert combined.components == {"sky": f"{name}_sky", "dome": f"{name}_dome"}
    assert combined.frames == [] and combined.identity()["CALFILT"] == "V"
    sky, dome = p.masters[f"{name}_sky"], p.masters[f"{name}_dome"]
    assert {f["flat_kind"] for f in sky.frames} == {"sky"} and len(sky.frames) == 3
    assert {f["flat_kind"] for f in dome.frames} == {"dome"} and len(dome.frames) == 3
    assert sky.identity()["CALFKIND"] == "sky" and sky.bias == f"bias_{SETUP}"
    # the lights use the combination; R (sky flats only) is made as always
    assert {row["flat"] for row in p.lights.values() if row["record"]["filter"] == "V"} == {name}
    assert not p.masters[f"flat_{SETUP}_R"].components and f"flat_{SETUP}_R_sky" not in p.masters
    assert not p.warnings and not p.rejected


def test_mixed_flats_with_the_option_off_are_one_master_and_a_warning(cal):
    p = plan.make_plan(_sky_dome_night(), cal)
    spec = p.masters[f"flat_{SETUP}_V"]
    assert len(spec.frames) == 6 and not spec.components
    assert set(p.masters) == {f"bias_{SETUP}", f"flat_{SETUP}_V", f"flat_{SETUP}_R"}
    (warning,) = p.warnings
    assert "filter V" in warning and "3 sky and 3 dome" in warning
    assert "calibration.illumination.enabled" in warning


def test_too_few_of_one_kind_is_one_master_and_flats_of_no_kind_are_left_out(cal):
    cal["illumination"]["enabled"] = True
    p = plan.make_plan(_sky_dome_night(n_dome=2), cal)  # min_frames.flat is 3
    assert len(p.masters[f"flat_{SETUP}_V"].frames) == 5
    assert any("fewer than calibration.min_frames.flat" in w for w in p.warnings)
    p = plan.make_plan(_sky_dome_night(n_plain=2), cal)
    assert p.masters[f"flat_{SETUP}_V"].components
    assert {r["reason"] for r in p.rejected} == {"unspecified_flat_kind"}
    assert len(p.rejected) == 2 and "inventory.flat_kinds" in p.rejected[0]["detail"]
    used = {f["path"] for m in p.masters.values() for f in m.frames}
    assert not used & {r["path"] for r in p.rejected}
