"""``detector.gain``: header, measured or a number, with real Snakemake (issue 12).

A generated night (test preset at 256 x 256, so the detector measurement has 9 tiles and
an uncertainty) whose every header says GAIN = 3.0 e-/ADU while the camera's truth is
1.5. With ``detector.gain: measured`` the frame jobs take the gain measure_detector
finds from the flat pairs (results/qc/detector.json): every record's gain is that value,
within 5 % of the truth, and the calibrated frame's uncertainty plane matches the truth
noise, where the header's gain gives a plane about 30 % low. A number is used as given,
with source ``config``. With ``measured`` the frame jobs depend on detector.json, so a
new flat reruns every light of its setup, not only those of its filter (DESIGN §7 with
the default, tests/workflow/test_incremental.py, is unchanged).
"""

import json
import shutil

import numpy as np
import pytest
import yaml
from astropy.io import fits

from ccdflow import demo
from conftest import planned_jobs, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

WRONG_GAIN = 3.0  # e-/ADU in every header; the truth is NightSpec.gain = 1.5
HELD = "flat_V_006.fits"  # arrives after the first run


def _configfile(base, name, gain):
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"detector": {"gain": gain}}))
    return path


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("detector_source")
    truth = demo.make_night(base / "night", preset="test", seed=5, shape=(256, 256), n_flats=6)
    raw = base / "raw"
    raw.mkdir()
    for path in sorted(truth["raw_dir"].glob("*.fits")):
        with fits.open(path) as hdul:
            hdul[0].header["GAIN"] = WRONG_GAIN
            hdul.writeto(raw / path.name)
    shutil.move(raw / HELD, base / HELD)
    out = {"truth": truth, "raw": raw, "base": base}
    out["measured"] = base / "measured"
    out["measured"].mkdir()
    out["measured_cfg"] = _configfile(base, "measured", "measured")
    snakemake(out["measured"], config={"raw_dir": raw}, configfiles=[out["measured_cfg"]])
    records = sorted((out["measured"] / "results/records").glob("*.json"))
    out["records"] = {p.stem: json.loads(p.read_text()) for p in records}
    # the reference of one group: its frame job needs no other frame's record
    out["frame"] = next(f for f, r in out["records"].items() if r["reference"] == f)
    for name, gain in (("header", "header"), ("number", 1.7)):
        out[name] = base / name
        out[name].mkdir()
        target = f"results/records/{out['frame']}.json"
        cfg = [_configfile(base, name, gain)]
        snakemake(out[name], target, config={"raw_dir": raw}, configfiles=cfg)
    return out


def _detector_json(run):
    return json.loads((run / "results/qc/detector.json").read_text())["setups"]


def test_measured_gain_is_the_flat_pairs_gain_and_within_5_percent_of_the_truth(night):
    (setup,) = _detector_json(night["measured"]).values()
    truth = night["truth"]["spec"]["gain"]
    assert setup["gain_err"] > 0 and setup["header"]["gain"] == WRONG_GAIN
    assert any("gain" in w and "3 e-/ADU" in w for w in setup["warnings"])  # warned, once
    assert len(night["records"]) == 8
    for name, record in night["records"].items():
        gain = record["detector"]["gain"]
        assert record["status"] == "ok", (name, record["reason"], record["detail"])
        assert gain["source"] == "measured:results/qc/detector.json"
        assert gain["unit"] == "electron/adu"
        assert abs(gain["value"] - setup["gain"]) <= setup["gain_err"]
        assert gain["uncertainty"] == pytest.approx(setup["gain_err"])
        assert abs(gain["value"] / truth - 1) < 0.05, gain
        assert record["detector"]["read_noise"]["source"] == "header"  # only the gain switched


def _plane_over_truth(run, night):
    """Median of uncertainty plane / truth noise of the frame's calibrated product, both
    in the product's unit (the record's gain x ADU), over the unmasked pixels."""
    truth, frame = night["truth"], night["frame"]
    record = json.loads((run / f"results/records/{frame}.json").read_text())
    gain_used = record["detector"]["gain"]["value"]
    with fits.open(run / f"results/calibrated/{frame}.fits") as hdul:
        unc, mask = hdul["UNCERT"].data, hdul["MASK"].data
    flat_name = record["masters"]["flat"]
    master_flat = fits.getdata(run / "results/masters" / flat_name)
    electrons = demo.expected_electrons(truth, f"{frame}.fits")
    read_noise = truth["spec"]["read_noise"]
    sigma = gain_used * np.sqrt(electrons + read_noise**2) / truth["spec"]["gain"] / master_flat
    good = mask == 0
    return float(np.median(unc[good] / sigma[good])), gain_used


def test_the_measured_gain_gives_the_uncertainty_plane_of_the_truth_the_header_does_not(night):
    measured, _ = _plane_over_truth(night["measured"], night)
    header, gain = _plane_over_truth(night["header"], night)
    assert gain == WRONG_GAIN
    assert abs(measured - 1) < 0.05, measured
    assert abs(header - 1) > 0.15, header  # 0.79 on this night (sky-limited: 0.71)
    assert abs(measured - 1) < abs(header - 1)


def test_a_configured_number_is_used_with_source_config(night):
    record = json.loads((night["number"] / f"results/records/{night['frame']}.json").read_text())
    assert record["detector"]["gain"] == {"value": 1.7, "unit": "electron/adu", "source": "config"}
    assert not (night["number"] / "results/qc/detector.json").exists()  # not needed


def test_with_measured_a_new_flat_reruns_every_light_of_its_setup(night):
    """DESIGN §7 'new flat in filter F': with the default only F's lights rerun
    (test_incremental); with ``gain: measured`` the flat changes the setup's gain, so
    detector.json and every light of the setup (both filters) rerun."""
    shutil.copy2(night["base"] / HELD, night["raw"] / HELD)
    cfg = [night["measured_cfg"]]
    proc = snakemake(night["measured"], "-n", config={"raw_dir": night["raw"]}, configfiles=cfg)
    jobs = planned_jobs(proc.stdout)
    assert jobs["measure_detector"] == 1 and jobs["make_master_flat"] == 1
    assert jobs["process_frame"] == len(night["records"]) == 8
    assert "make_master_bias" not in jobs and "make_master_dark" not in jobs
