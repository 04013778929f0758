"""A bad calibration frame is left out of its master with a reason and the measured value
(DESIGN §8; `ccdflow.calibrate.CALIBRATION_GATES`), and the master is the one made
without it."""

import json
import os

import numpy as np
import pytest

from ccdflow import calibrate, demo
from ccdflow.io import read_product
from ccdflow.tasks import calibration_table, make_master_file
from conftest import BAD_FLATS, COMBINE, FLAT_COMBINE, REPO, read_tsv, write_bad_flats


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("gates")
    truth = demo.make_night(out, preset="test", seed=11)
    raw = truth["raw_dir"]
    biases = [(raw / f["file"], 0) for f in truth["frames"] if f["type"] == "bias"]
    make_master_file("bias", biases, out / "bias.fits", COMBINE)
    good = [(raw / f["file"], 0) for f in truth["frames"] if f["filter"] == "V"]
    good = [g for g in good if g[0].name.startswith("flat")]
    return {"truth": truth, "out": out, "good": good, "biases": biases}


def _flat(night, frames, name, **kw):
    out = night["out"]
    return make_master_file(
        "flat",
        frames,
        out / f"{name}.fits",
        FLAT_COMBINE,
        bias=out / "bias.fits",
        saturation=night["truth"]["spec"]["saturation"],
        **kw,
    )


def test_bad_flats_are_left_out_with_reason_and_value_and_the_master_is_made_without(night):
    bad = write_bad_flats(night["truth"], night["out"] / "bad")
    frames = night["good"] + [(p, 0) for p in bad.values()]
    record = night["out"] / "flat_with.json"
    _flat(night, frames, "flat_with", record=record)  # the all-zero flat used to crash
    _flat(night, night["good"], "flat_without")
    with_bad, header, _, _ = read_product(night["out"] / "flat_with.fits")
    without, *_ = read_product(night["out"] / "flat_without.fits")
    np.testing.assert_allclose(with_bad, without, rtol=1e-6, atol=1e-6)
    assert header["NCOMBINE"] == len(night["good"]) and header["NEXCLUDE"] == len(bad)

    rows = {r["frame"]: r for r in json.loads(record.read_text())["frames"]}
    assert len(rows) == len(frames)
    for kind, path in bad.items():
        row = rows[path.name]
        assert (row["status"], row["reason"]) == ("rejected", BAD_FLATS[kind]), row
    assert {r["status"] for n, r in rows.items() if "_bad_" not in n} == {"ok"}
    assert rows[bad["zero"].name]["value"] <= 0
    assert rows[bad["saturated"].name]["value"] == pytest.approx(0.1, abs=0.01)
    faint = rows[bad["faint"].name]
    assert faint["value"] == pytest.approx(faint["threshold"] / 0.1 / 200, rel=0.2)
    assert rows[bad["otherfilter"].name]["value"] > 0.01
    # every good flat's pattern is well inside the limit: the gate has room
    assert max(r["pattern_rms"] for n, r in rows.items() if "_bad_" not in n) < 0.005
    cards = [str(header[k]) for k in header if k.startswith("EXCL")]
    for kind, path in bad.items():
        assert any(c.startswith(f"{path.name}: {BAD_FLATS[kind]} ") for c in cards), cards

    table = night["out"] / "calibration.tsv"
    calibration_table([record], table)
    tsv = {r["frame"]: r for r in read_tsv(table)}
    assert tsv[bad["faint"].name]["reason"] == "faint"
    assert tsv[bad["faint"].name]["master"] == "flat_with"
    assert float(tsv[bad["faint"].name]["value"]) == pytest.approx(faint["value"], rel=1e-3)


def test_a_gate_set_to_null_lets_the_frame_in(night):
    bad = write_bad_flats(night["truth"], night["out"] / "bad")
    frames = night["good"] + [(bad["saturated"], 0)]
    master = _flat(night, frames, "flat_sat_ok", gates={"max_saturated_fraction": None})
    assert all(r["status"] == "ok" for r in master.frames)


def test_a_noisy_bias_is_left_out(night, tmp_path):
    from astropy.io import fits

    path, _ = night["biases"][0]
    data = fits.getdata(path).astype(np.float64)
    noisy = data + np.random.default_rng(3).normal(0, 4 * data.std(), data.shape)
    fits.writeto(
        tmp_path / "bias_noisy.fits", np.rint(noisy).astype(np.uint16), fits.getheader(path)
    )
    frames = night["biases"] + [(tmp_path / "bias_noisy.fits", 0)]
    master = make_master_file("bias", frames, tmp_path / "bias.fits", COMBINE)
    rows = {r["frame"]: r for r in master.frames}
    assert rows["bias_noisy.fits"]["reason"] == "noisy"
    assert master.header["NCOMBINE"] == len(night["biases"])


def test_with_missing_master_error_a_master_whose_every_frame_fails_names_each_and_why(night):
    bad = write_bad_flats(night["truth"], night["out"] / "bad")
    with pytest.raises(calibrate.MasterError, match=bad["zero"].name + ": no_signal"):
        _flat(night, [(bad["zero"], 0)], "flat_none", missing_master="error")
    assert not (night["out"] / "flat_none.fits").exists()


def test_gate_defaults_are_the_config_defaults():
    # STYLE 16: one place says the default; the config and the schema repeat it
    import yaml

    from conftest import REPO

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())["calibration"]["gates"]
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]["calibration"]["properties"]["gates"]["properties"]
    gates = {g.key: g for gs in calibrate.CALIBRATION_GATES.values() for g in gs if g.key}
    assert set(gates) == set(config) == set(props)
    for key, gate in gates.items():
        assert config[key] == props[key]["default"] == gate.threshold, key
        assert gate.reason in props[key]["description"], key


def test_with_missing_master_error_a_master_without_frames_stops_its_job_with_the_message(
    night, tmp_path
):
    # a user error, not a bug: the job's stderr and log hold the message, no traceback
    import subprocess
    import sys

    bad = write_bad_flats(night["truth"], night["out"] / "bad")
    log = tmp_path / "job.log"
    code = (
        "from ccdflow.tasks import make_master_file, setup_logging\n"
        f"setup_logging({str(log)!r})\n"
        f"make_master_file('flat', [({str(bad['zero'])!r}, 0)], {str(tmp_path / 'f.fits')!r},"
        " {'method': 'median'}, missing_master='error')\n"
    )
    # The job's own process finds the library as the rule scripts do, whether or not the
    # test runner was started with PYTHONPATH set (pytest's `pythonpath` is in-process).
    scripts = str(REPO / "scripts")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [scripts, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert f"{bad['zero'].name}: no_signal" in proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in log.read_text()
    assert not (tmp_path / "f.fits").exists()


def test_a_master_without_good_frames_is_an_explicit_empty_master_that_rejects_its_lights(
    night, tmp_path, caplog
):
    # calibration.missing_master: exclude (the default): no image, every frame's reason in
    # the header and the record (so calibration.tsv lists them), a warning naming the
    # master; a light that needs it is rejected (no_good_master), not a failed job
    from astropy.io import fits

    from ccdflow.tasks import bad_pixel_map_file
    from conftest import calibrate_light

    bad = write_bad_flats(night["truth"], night["out"] / "bad_all")
    frames = [(bad["zero"], 0), (bad["saturated"], 0)]
    with caplog.at_level("WARNING", logger="ccdflow"):
        # the record beside its master, as the workflow writes it (the frame job reads it)
        result = _flat(night, frames, "flat_empty", record=night["out"] / "flat_empty.json")
    assert result is None
    assert any("flat_empty.fits is empty" in r.getMessage() for r in caplog.records)
    path = night["out"] / "flat_empty.fits"
    with fits.open(path) as hdul:
        assert len(hdul) == 1 and hdul[0].data is None and hdul[0].header["NAXIS"] == 0
        h = hdul[0].header
    assert (h["QCSTATUS"], h["QCREASON"], h["NCOMBINE"], h["NEXCLUDE"]) == (
        "empty",
        "no_good_frames",
        0,
        2,
    )
    assert h["EXCL001"].startswith(f"{bad['zero'].name}: no_signal")
    assert h["EXCL002"].startswith(f"{bad['saturated'].name}: saturated")
    record = json.loads((night["out"] / "flat_empty.json").read_text())
    assert record["status"] == "empty"
    assert [(r["frame"], r["reason"]) for r in record["frames"]] == [
        (bad["zero"].name, "no_signal"),
        (bad["saturated"].name, "saturated"),
    ]
    calibration_table([night["out"] / "flat_empty.json"], tmp_path / "calibration.tsv")
    rows = read_tsv(tmp_path / "calibration.tsv")
    assert [(r["frame"], r["status"], r["reason"]) for r in rows] == [
        (bad["zero"].name, "rejected", "no_signal"),
        (bad["saturated"].name, "rejected", "saturated"),
    ]

    light = next(f for f in night["truth"]["frames"] if f["type"] == "light")
    raw = night["truth"]["raw_dir"] / light["file"]
    calibrate_light(raw, tmp_path, bias=night["out"] / "bias.fits", flat=path)
    rec = json.loads((tmp_path / f"{raw.stem}.json").read_text())
    assert (rec["status"], rec["reason"], rec["failed_step"]) == (
        "rejected",
        "no_good_master",
        "calibrate",
    )
    assert "flat_empty.fits" in rec["detail"] and f"{bad['zero'].name}: no_signal" in rec["detail"]
    assert fits.getheader(tmp_path / f"{raw.stem}.calibrated.fits")["NAXIS"] == 0

    # a master made with an empty master bias is empty too, naming it
    flats = night["good"]
    make_master_file(
        "flat",
        flats,
        tmp_path / "flat_up.fits",
        FLAT_COMBINE,
        bias=path,
        record=tmp_path / "u.json",
    )
    up = json.loads((tmp_path / "u.json").read_text())
    assert up["status"] == "empty" and len(up["frames"]) == len(flats)
    assert {r["reason"] for r in up["frames"]} == {"no_good_master"}
    assert "flat_empty.fits" in fits.getheader(tmp_path / "flat_up.fits")["EMPTYWHY"]

    # a sky/dome combination with an empty part is empty, naming it
    from ccdflow.tasks import combine_flat_file

    _flat(night, night["good"], "flat_good")
    illumination = {"degree": 2, "bin": 16}
    combine_flat_file(
        path,
        night["out"] / "flat_good.fits",
        tmp_path / "comb.fits",
        tmp_path / "comb.json",
        illumination=illumination,
    )
    assert fits.getheader(tmp_path / "comb.fits")["EMPTYWHY"] == "flat_empty.fits is empty"
    calibration_table([tmp_path / "comb.json"], tmp_path / "comb.tsv")
    assert [(r["status"], r["reason"]) for r in read_tsv(tmp_path / "comb.tsv")] == [
        ("empty", "no_good_master")
    ]

    # the bad-pixel map leaves the empty master out
    bpm = bad_pixel_map_file(
        [path, night["out"] / "flat_good.fits"], tmp_path / "bpm.fits", setup="s"
    )
    assert bpm.shape == read_product(night["out"] / "flat_good.fits")[0].shape


def test_tall_frames_are_measured_on_a_row_sample_that_agrees_with_every_row(
    tmp_path, monkeypatch
):
    # A master reads each input once in full; the gate measures of a tall frame come from
    # every (ny // 256)-th row instead of a second full read. They must agree.
    from astropy.io import fits

    rng = np.random.default_rng(8)
    ny, nx = 1100, 96
    yy, xx = np.mgrid[0:ny, 0:nx]
    signal = 20000 * (1 - 0.1 * ((yy - ny / 2) ** 2 / ny**2 + (xx - nx / 2) ** 2 / nx**2))
    raw = rng.poisson(signal) + 1000 + rng.normal(0, 5, (ny, nx)) + 3 * rng.normal(size=nx)
    raw[rng.random((ny, nx)) < 0.002] = 65535
    path = tmp_path / "tall_flat.fits"
    fits.PrimaryHDU(np.clip(raw, 0, 65535).astype(np.uint16)).writeto(path)

    def measures(rows):
        monkeypatch.setattr(calibrate, "_MEASURE_ROWS", rows)
        reader = calibrate._RowReader(path, 0)
        try:
            return calibrate._frame_measures(reader, "flat", None, None, 1.0, 65535)
        finally:
            reader.close()

    every, sample = measures(10**6), measures(256)
    assert sample["level"] == pytest.approx(every["level"], rel=0.005)
    assert sample["noise"] == pytest.approx(every["noise"], rel=0.1)
    assert sample["saturated_fraction"] == pytest.approx(every["saturated_fraction"], abs=1e-3)
    assert np.nanmax(np.abs(sample["pattern"] - every["pattern"])) < 0.01


def _light_leak(path, out, amplitude, gain=1.5, seed=4):
    """A copy of ``path`` with a light leak: a round blob of ``amplitude`` ADU (relative
    to the frame's median when ``amplitude`` < 1) covering 10 % of the frame, with its
    photon noise; it is smooth inside, so neighbour-difference noise hardly changes."""
    from astropy.io import fits

    data = fits.getdata(path).astype(np.float64)
    ny, nx = data.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    radius = np.sqrt(0.10 * ny * nx / np.pi)
    inside = np.hypot(yy - 0.35 * ny, xx - 0.6 * nx) < radius
    level = amplitude * np.median(data) if amplitude < 1 else amplitude
    rng = np.random.default_rng(seed)
    leak = np.where(inside, rng.poisson(level * gain, data.shape) / gain, 0.0)
    fits.writeto(out, np.rint(data + leak).astype(np.uint16), fits.getheader(path))
    return out


def test_a_light_leak_is_left_out_of_its_master_as_outliers_and_normal_frames_are_not(
    night, tmp_path
):
    """A dark with a bright blob over 10 % of the frame (60 ADU, 12 x the read noise)
    passes every other gate (no saturation, its neighbour-difference noise barely grows);
    the outlier fraction leaves it out, and the master dark is the one made without it."""
    truth, out = night["truth"], night["out"]
    raw = truth["raw_dir"]
    darks = [(raw / f["file"], 0) for f in truth["frames"] if f["type"] == "dark"]
    leaky = _light_leak(darks[0][0], tmp_path / "dark_leak.fits", 60.0)
    record = tmp_path / "dark.json"
    bias = out / "bias.fits"
    frames = [*darks, (leaky, 0)]
    master = make_master_file("dark", frames, tmp_path / "dark.fits", COMBINE, bias, record=record)
    without = make_master_file("dark", darks, tmp_path / "dark0.fits", COMBINE, bias)
    rows = {r["frame"]: r for r in master.frames}
    bad = rows["dark_leak.fits"]
    assert (bad["status"], bad["reason"]) == ("rejected", "outliers"), bad
    assert bad["value"] == pytest.approx(0.10, abs=0.02) and bad["threshold"] == 0.02
    # every other gate would have let it in
    assert [g for g in calibrate.CALIBRATION_GATES["dark"] if g.reason != "outliers"]
    good = [r for name, r in rows.items() if name != "dark_leak.fits"]
    assert {r["status"] for r in good} == {"ok"}
    assert max(r["outlier_fraction"] for r in good) < 0.01  # 5 x room to the limit
    np.testing.assert_allclose(master.data, without.data, rtol=1e-6, atol=1e-6)
    assert master.header["NCOMBINE"] == len(darks)
    # the value is in the master's record and in calibration.tsv
    calibration_table([record], tmp_path / "calibration.tsv")
    tsv = {r["frame"]: r for r in read_tsv(tmp_path / "calibration.tsv")}
    assert float(tsv["dark_leak.fits"]["outlier_fraction"]) == pytest.approx(bad["value"])
    assert json.loads(record.read_text())["units"]["outlier_fraction"] == ""


def test_a_flat_with_a_light_leak_is_left_out_and_has_outliers(night, tmp_path):
    # a 5 % leak over 10 % of a flat: the pattern gate, first in the table, already names
    # it (1.6 % rms > 1 %); its outlier fraction is over the limit too
    leaky = _light_leak(night["good"][0][0], tmp_path / "flat_leak.fits", 0.05)
    master = _flat(night, night["good"] + [(leaky, 0)], "flat_leak")
    rows = {r["frame"]: r for r in master.frames}
    assert rows["flat_leak.fits"]["status"] == "rejected"
    assert rows["flat_leak.fits"]["outlier_fraction"] > 0.02
    others = [r["outlier_fraction"] for n, r in rows.items() if n != "flat_leak.fits"]
    assert max(others) < 0.004


def test_the_outlier_fraction_needs_two_other_frames(night, tmp_path):
    # with one other frame a defect of either shows in both: not measured, not gated
    master = make_master_file("bias", night["biases"][:2], tmp_path / "b2.fits", COMBINE)
    assert [r["outlier_fraction"] for r in master.frames] == [None, None]
    master = make_master_file("bias", night["biases"][:3], tmp_path / "b3.fits", COMBINE)
    assert all(r["outlier_fraction"] is not None for r in master.frames)


@pytest.mark.parametrize("n", [2, 3, 4, 7, 50])
def test_the_median_of_the_other_frames_is_numpys_nanmedian_without_that_frame(n):
    """The outlier and pattern gates compare a frame with the median of the *other* frames;
    it comes from one sort of the group and must equal ``np.nanmedian`` of the group
    without the frame, bit for bit, with NaN (saturated pixels), ties (integer ADU),
    all-NaN pixels and odd and even counts."""
    rng = np.random.default_rng(n)
    group = rng.normal(1000, 5, (n, 3000)).astype(np.float32)
    group[rng.random(group.shape) < 0.1] = np.nan
    group[:, :10] = np.nan  # no value at all
    group[:, 10:20] = np.nan
    group[0, 10:20] = 7.0  # a single value, which leaving frame 0 out removes
    group[:, 20:400] = np.round(group[:, 20:400] / 10)  # ties
    others = calibrate._OthersMedian(list(group))
    for leave_out in [None, *range(n)]:
        rest = group if leave_out is None else np.delete(group, leave_out, axis=0)
        with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
            expected = np.nanmedian(rest, axis=0)
        np.testing.assert_array_equal(others(leave_out), expected)


@pytest.mark.parametrize("size", [1, 2, 7, 1000, 1001])
@pytest.mark.parametrize("kind", ["adu", "float32", "float64"])
def test_median_and_mad_are_numpys_median_and_median_absolute_deviation(size, kind):
    """The gates' noise measures take the median and the MAD from one pass (integer ADU
    differences from a histogram): both equal numpy's, to the bit."""
    rng = np.random.default_rng(size)
    values = rng.normal(0.0, 4.0, size)
    values = {"adu": np.round(values), "float32": values.astype(np.float32)}.get(kind, values)
    centre, mad = calibrate._median_and_mad(values)
    median = np.median(values)
    assert centre == median
    assert mad == np.median(np.abs(values - median)) == calibrate._mad(values)
