"""Calibration library, end to end: a night of light frames only, reduced with the masters
of an earlier run, gives the same calibrated frames as the run that made those masters."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from astropy.io import fits

from ccdflow import demo
from conftest import REPO, planned_jobs, read_tsv, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("library")
    truth = demo.make_night(base / "night", preset="test", seed=11)
    raw = truth["raw_dir"]
    first = base / "first"
    first.mkdir()
    snakemake(first, "-n", config={"raw_dir": raw})  # writes the frame table
    lights = [f for f in read_tsv(first / "results/index/frames.tsv") if f["imagetyp"] == "light"]
    targets = [f"results/calibrated/{f['frame']}.fits" for f in lights]
    snakemake(first, *targets, config={"raw_dir": raw})

    # the next night: the same light frames, no calibrations, and a library
    raw2 = base / "lights_only"
    raw2.mkdir()
    for f in lights:
        os.symlink(raw / f["path"], raw2 / f["path"].replace("/", "_"))
    second = base / "second"
    second.mkdir()
    layer = second / "library.yaml"
    layer.write_text(
        yaml.safe_dump({"calibration": {"library": [str(first / "results/masters")]}})
    )
    dry = snakemake(second, "-n", configfiles=[layer], config={"raw_dir": raw2})
    frames2 = read_tsv(second / "results/index/frames.tsv")
    targets2 = [f"results/calibrated/{f['frame']}.fits" for f in frames2]
    snakemake(second, *targets2, configfiles=[layer], config={"raw_dir": raw2})
    again = snakemake(second, "-n", *targets2, configfiles=[layer], config={"raw_dir": raw2})
    return {
        "layer": layer,
        "raw2": raw2,
        "first": first,
        "second": second,
        "lights": lights,
        "frames2": frames2,
        "dry": dry,
        "again": again,
    }


def test_library_masters_are_used_not_remade(runs):
    jobs = planned_jobs(runs["dry"].stdout)
    assert not any(rule.startswith("make_master") for rule in jobs)
    assert jobs["process_frame"] == len(runs["lights"])
    assert not (runs["second"] / "results/masters").exists()
    assert "Nothing to be done" in runs["again"].stdout + runs["again"].stderr


def test_frame_table_records_night_and_library_choice(runs):
    masters = runs["first"] / "results/masters"
    for f in runs["frames2"]:
        assert f["night"] and len(f["night"]) == 8
        assert f["bias"] == str((masters / "bias_1x1_128x96.fits").resolve())
        assert f["flat"] == str((masters / f"flat_1x1_128x96_{f['filter']}.fits").resolve())
        assert f["dark"].endswith("dark_1x1_128x96_300s.fits")
        assert "library night" in f["candidates"]


def test_calibrated_frames_equal_those_of_the_run_that_made_the_masters(runs):
    by_raw = {f["path"].replace("/", "_"): f["frame"] for f in runs["lights"]}
    for f in runs["frames2"]:
        mine = runs["second"] / f"results/calibrated/{f['frame']}.fits"
        theirs = runs["first"] / f"results/calibrated/{by_raw[f['path']]}.fits"
        with fits.open(mine) as a, fits.open(theirs) as b:
            for name in ("PRIMARY", "UNCERT", "MASK"):
                np.testing.assert_array_equal(a[name].data, b[name].data)
            h = a[0].header
            assert h["BIASCORR"] == "bias_1x1_128x96.fits"
            assert h["FLATCORR"] == f"flat_1x1_128x96_{f['filter']}.fits"
            assert "library night" in h["CALCANDS"]


def test_inspect_lists_the_library_masters_it_will_use(runs):
    proc = subprocess.run(
        [sys.executable, "-m", "ccdflow", "inspect", runs["raw2"], "--configfile", runs["layer"]],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "scripts")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "masters to make: none" in proc.stdout
    # bias, the 300 s dark and the V and R flats, all used
    assert "calibration library: 4 masters, 4 used" in proc.stdout
    assert proc.stdout.count("library:bias_1x1_128x96,") == len(runs["lights"])
