"""Calibration library: masters of an earlier run found by header and used by the plan
only where the raw directory has no calibration of its own."""

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from ccdflow import inventory, library, plan, tasks

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[2] / "config/config.yaml").read_text())
SETUP = "1x1_10x8"


def _raw(folder, name, kind, exptime, level, filt="", seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(level, 3.0, (8, 10)).astype(np.float32)
    cards = {"IMAGETYP": kind, "EXPTIME": exptime, "DATE-OBS": "2024-03-15T22:00:00"}
    if filt:
        cards["FILTER"] = filt
    path = folder / name
    fits.PrimaryHDU(data, header=fits.Header(cards)).writeto(path)
    return [str(path), 0]


def _master(folder, kind, identity, level, exptime=0.0, filt="", bias=None):
    """A real master made by ``tasks.make_master_file`` from three tiny raw frames."""
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}_{identity['CCDSETUP']}_{identity['CALNIGHT']}_{filt or identity['CALEXPG']}"
    frames = [_raw(raw, f"{stem}_{i}.fits", kind, exptime, level, filt, i) for i in range(3)]
    out = folder / "masters" / f"{stem}.fits"
    out.parent.mkdir(exist_ok=True)
    tasks.make_master_file(
        kind,
        frames,
        str(out),
        CONFIG["combine"][kind],
        bias=bias,
        identity=identity,
    )
    return out


def _identity(night="20240315", setup=SETUP, filt="", expgroup="", temperature=None):
    return {
        "CCDSETUP": setup,
        "CALNIGHT": night,
        "CALFILT": filt,
        "CALEXPG": expgroup,
        "CALTEMP": temperature,
    }


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """A library of one night: bias, 300 s dark (bias-subtracted), V flat."""
    folder = tmp_path_factory.mktemp("library")
    bias = _master(folder, "bias", _identity(), 1000.0)
    dark = _master(
        folder, "dark", _identity(expgroup="300", temperature=-20.0), 1050.0, 300.0, bias=bias
    )
    flat = _master(folder, "flat", _identity(filt="V"), 20000.0, 2.0, "V", bias=bias)
    return {"folder": folder / "masters", "bias": bias, "dark": dark, "flat": flat}


def _light(name, date="2024-03-16T23:00:00", exptime=300.0, filt="V", setup=SETUP, temp=-20.0):
    label = inventory.exposure_label(exptime)
    return {
        "frame": name,
        "path": f"{name}.fits",
        "imagetyp": "light",
        "exptime": exptime,
        "expgroup": label,
        "filter": filt,
        "object": "M1",
        "group": f"M1_{filt}_{label}",
        "setup": setup,
        "date": date,
        "temperature": temp,
    }


def _cal(**extra):
    return {**copy.deepcopy(CONFIG["calibration"]), **extra}


def test_masters_say_what_they_are_and_the_scan_reads_it(lib):
    specs, skipped = library.scan_library([lib["folder"]])
    assert skipped == []
    by_kind = {s.kind: s for s in specs}
    assert set(by_kind) == {"bias", "dark", "flat"}
    dark = by_kind["dark"]
    assert (dark.setup, dark.night, dark.expgroup, dark.exptime) == (SETUP, "20240315", "300", 300)
    assert dark.temperature == -20.0
    assert dark.bias == lib["bias"].name  # bias-subtracted, so it can be scaled
    assert by_kind["flat"].filter == "V"
    assert by_kind["bias"].path == str(lib["bias"].resolve())  # used in place, not copied
    header = fits.getheader(lib["flat"])
    assert header["CCDSETUP"] == SETUP and header["CALFILT"] == "V"
    assert "CALTEMP" not in header  # unknown values are not written


def test_a_night_of_lights_only_uses_the_library(lib):
    specs, _ = library.scan_library([lib["folder"]])
    inv = inventory.Inventory(frames=[_light("l300"), _light("l60", exptime=60.0)])
    p = plan.make_plan(inv, _cal(), library=specs)
    assert p.masters == {}  # nothing to make
    names = {s.kind: s.name for s in specs}
    l300, l60 = p.lights["l300"], p.lights["l60"]
    assert (l300["bias"], l300["dark"], l300["dark_scale"], l300["flat"]) == (
        names["bias"],
        names["dark"],
        1.0,
        names["flat"],
    )
    assert l60["dark"] == names["dark"] and l60["dark_scale"] == pytest.approx(0.2)
    assert sorted(p.library) == sorted(names.values())
    # the choice is recorded with the distance in nights
    assert l300["candidates"]["flat"] == ["library night 20240315 (1 d)"]
    row = plan.frame_table(inv.frames, p, {"l300": "l300", "l60": "l300"})[0]
    assert row["night"] == "20240316" and row["flat"] == names["flat"]
    assert "library night 20240315" in row["candidates"]


def test_own_calibrations_win_over_the_library(lib):
    specs, _ = library.scan_library([lib["folder"]])
    flats = [
        {**_light(f"f{i}", exptime=2.0), "imagetyp": "flat", "object": "", "group": ""}
        for i in range(3)
    ]
    inv = inventory.Inventory(frames=[_light("l300"), *flats])
    p = plan.make_plan(inv, _cal(), library=specs)
    assert p.lights["l300"]["flat"] == f"flat_{SETUP}_V"  # made from tonight's flats
    assert p.masters[f"flat_{SETUP}_V"].bias.endswith(lib["bias"].name)  # library bias
    assert p.lights["l300"]["bias"].endswith(lib["bias"].name)


def test_library_masters_must_match_setup_filter_gap_and_temperature(lib):
    specs, _ = library.scan_library([lib["folder"]])
    binned = inventory.Inventory(frames=[_light("l", setup="2x2_5x4")])
    with pytest.raises(plan.PlanError, match="no flat frames"):
        plan.make_plan(binned, _cal(), library=specs)
    other_filter = inventory.Inventory(frames=[_light("l", filt="R")])
    with pytest.raises(plan.PlanError, match="R"):
        plan.make_plan(other_filter, _cal(), library=specs)
    late = inventory.Inventory(frames=[_light("l", date="2024-06-01T23:00:00")])
    with pytest.raises(plan.PlanError, match="within 30 nights"):
        plan.make_plan(late, _cal(by_night=True), library=specs)
    assert plan.make_plan(late, _cal(), library=specs).lights["l"]["flat"]  # no gap without
    warm = inventory.Inventory(frames=[_light("l", temp=-5.0)])
    p = plan.make_plan(warm, _cal(dark_max_temp_diff=2.0), library=specs)
    assert p.lights["l"]["dark"] is None


def test_the_nearest_library_night_is_used(tmp_path, lib):
    bias2 = _master(tmp_path, "bias", _identity(night="20240401"), 990.0)
    specs, _ = library.scan_library([lib["folder"], bias2.parent])
    for date, expected in (("2024-03-20T23:00:00", lib["bias"]), ("2024-03-30T23:00:00", bias2)):
        inv = inventory.Inventory(frames=[_light("l", date=date)])
        assert plan.make_plan(inv, _cal(), library=specs).lights["l"]["bias"] == str(
            expected.resolve()
        )


def test_unusable_files_are_skipped_with_a_reason(tmp_path, lib):
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "notes.fits").write_text("not FITS")
    fits.PrimaryHDU(np.zeros((4, 4), np.float32), fits.Header({"OBJECT": "M1"})).writeto(
        folder / "other.fits"
    )
    old = fits.open(lib["bias"])
    del old[0].header["CCDSETUP"]
    old.writeto(folder / "old_bias.fits")
    old.close()
    specs, skipped = library.scan_library([folder])
    assert specs == []
    reasons = {Path(r["path"]).name: r["reason"] for r in skipped}
    assert reasons == {
        "notes.fits": "unreadable",
        "other.fits": "not_a_master",
        "old_bias.fits": "no_setup",
    }
    # made without overscan subtraction: not mixed into a run that subtracts it
    specs, skipped = library.scan_library([lib["folder"]], overscan=True)
    assert specs == [] and {r["reason"] for r in skipped} == {"overscan_mismatch"}
    with pytest.raises(FileNotFoundError, match="not a directory"):
        library.scan_library([tmp_path / "missing"])


def test_the_sky_or_dome_part_of_a_combined_flat_is_skipped(tmp_path):
    """Only the combination is a flat for lights; its parts (CALFKIND) are listed as
    skipped, so a later run never takes a dome flat's illumination for the sky's."""
    bias = _master(tmp_path, "bias", _identity(), 1000.0)
    part = _master(
        tmp_path, "flat", _identity(filt="V") | {"CALFKIND": "dome"}, 2e4, 2.0, "V", bias
    )
    specs, skipped = library.scan_library([tmp_path / "masters"])
    assert [s.kind for s in specs] == ["bias"]
    assert skipped == [
        {
            "path": str(part),
            "reason": "flat_component",
            "detail": "the dome part of a combined flat; the combination is used",
        }
    ]
