"""`ccdflow inspect`: check a configuration for a new camera in seconds, before a run."""

import os
import subprocess
import sys

import pytest
import yaml

from ccdflow import config, demo
from conftest import REPO


def inspect(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
    return subprocess.run(
        [sys.executable, "-m", "ccdflow", "inspect", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )


def test_config_load_matches_the_schema_defaults(tmp_path):
    layer = tmp_path / "camera.yaml"
    layer.write_text(yaml.safe_dump({"detector": {"gain": 1.9}, "stack": {"method": "median"}}))
    cfg = config.load([layer], {"raw_dir": "x"})
    assert cfg["detector"]["gain"] == 1.9 and cfg["stack"]["method"] == "median"
    assert cfg["stack"]["sigma_low"] == 3.0  # untouched keys keep their values
    assert cfg["cosmics"]["star_noise"] == 0.3
    assert cfg["inventory"]["keywords"]["exptime"] == ["EXPTIME", "EXPOSURE"]


def test_inspect_shows_classification_masters_and_choices(m51_dir):
    proc = inspect(m51_dir, "--configfile", REPO / "config/cameras/qsi532_maxim_m51.yaml")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "27 frames" in out and "0 rejected" in out
    assert "dark_2x2_1092x736_300s x0.6667" in out  # the 300 s dark scaled to 200 s
    assert out.count("; ref set M51_I_200") == 18
    assert "18 frames; reference chosen for quality among 10 earliest" in out


def test_inspect_explains_an_impossible_plan_and_a_bad_key(tmp_path):
    night = demo.make_night(tmp_path / "n", preset="test", seed=1)
    for p in night["raw_dir"].glob("flat_*"):
        p.unlink()
    proc = inspect(night["raw_dir"])
    assert proc.returncode == 1
    assert "no flat frames for filter(s) R" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("detector: {gian: 2}\n")
    proc = inspect(night["raw_dir"], "--configfile", bad)
    assert proc.returncode == 2 and "gian" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_lists_objects_and_groups_and_fails_when_every_file_is_rejected(tmp_path):
    night = demo.make_night(tmp_path / "n", preset="test", seed=2)
    proc = inspect(night["raw_dir"])
    assert proc.returncode == 0, proc.stderr
    assert "objects: 1\n  M13demo" in proc.stdout and "(OBJECT 'M13demo')" in proc.stdout
    assert "stack groups: 4" in proc.stdout and "M13demo_V_120" in proc.stdout
    bad = tmp_path / "gain.yaml"
    bad.write_text("detector: {gain_range: [0.05, 1.0]}\n")  # the night's GAIN is 1.5
    proc = inspect(night["raw_dir"], "--configfile", bad)
    assert proc.returncode == 1
    assert "every file was rejected (28 rejected: gain_out_of_range 28" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = inspect(tmp_path / "nowhere")
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


@pytest.mark.parametrize("key", ["inventory", "calibration", "cosmics", "align", "stack"])
def test_every_section_has_defaults(key):
    assert config.load([], {"raw_dir": "x"})[key]
