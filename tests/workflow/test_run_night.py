"""Real Snakemake on a generated night in a temp dir: planned jobs, products, errors."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from astropy.io import fits

from ccdflow import demo
from conftest import REPO, planned_jobs, read_tsv, snakemake

pytestmark = pytest.mark.workflow


def snapshot(folder):
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("night")
    truth = demo.make_night(base / "night", preset="test", seed=5)
    return truth


@pytest.fixture(scope="module")
def run(night, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    raw = night["raw_dir"]
    before = snapshot(raw)
    dry = snakemake(work, "-n", config={"raw_dir": raw})
    real = snakemake(work, config={"raw_dir": raw})
    again = snakemake(work, "-n", config={"raw_dir": raw})
    return {"work": work, "dry": dry, "real": real, "again": again, "before": before}


def test_dry_run_plans_the_whole_night(run):
    # test preset: 2 filters x 2 exposures x 2 lights, darks at 300 s only
    assert planned_jobs(run["dry"].stdout) == {
        "make_master_bias": 1,
        "make_master_dark": 1,
        "make_master_flat": 2,
        "choose_reference": 4,
        "make_bad_pixel_map": 1,
        "process_frame": 8,
        "select_frames": 4,
        "stack_group": 4,
        "stack_raw_group": 4,
        "make_preview": 4,
        "report_group": 4,
        "report_masters": 1,
        "collect_qc": 1,
        "make_report": 1,
        "measure_detector": 1,
        "collect_calibration_qc": 1,
        "all": 1,
    }


def test_products_and_provenance(run, night):
    work = run["work"]
    frames = read_tsv(work / "results/index/frames.tsv")
    lights = [f for f in frames if f["imagetyp"] == "light"]
    assert len(lights) == 8
    assert {f["group"] for f in lights} == {
        "M13demo_V_60",
        "M13demo_V_120",
        "M13demo_R_60",
        "M13demo_R_120",
    }
    for f in lights:
        path = work / "results/calibrated" / f"{f['frame']}.fits"
        with fits.open(path) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "UNCERT", "MASK"]
            h = hdul[0].header
            assert h["RAWFILE"] == f["path"]
            assert h["RAWSHA"] == f["fingerprint"]
            assert h["BIASCORR"] == "bias_1x1_128x96.fits"
            assert h["DARKCORR"] == "dark_1x1_128x96_300s.fits"
            assert h["DARKSCAL"] == pytest.approx(float(f["exptime"]) / 300)
            assert h["FLATCORR"] == f"flat_1x1_128x96_{f['filter']}.fits"
            assert h["BUNIT"] == "electron" and h["PIPEVER"]
    with fits.open(work / "results/masters/flat_1x1_128x96_V.fits") as hdul:
        h = hdul[0].header
        assert h["NCOMBINE"] == 5 and h["IMCMB001"].startswith("flat_V_")
        assert h["COMBMETH"] == "sigma_clip_median" and h["CLIPSIG"] == "winsorized"
        assert h["BIASCORR"] == "bias_1x1_128x96.fits"
    # one log per job, saying which step it was in and how long each took
    logs = sorted((work / "logs/process_frame").glob("*.log"))
    assert len(logs) == 8
    assert re.search(r"cosmics done in \d+\.\d+ s", logs[0].read_text())


def test_every_frame_has_a_record_with_units_and_sources(run):
    import json

    work = run["work"]
    for path in sorted((work / "results/records").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["unit"] == "electron"
        det = record["detector"]
        assert det["gain"] == {"value": 1.5, "unit": "electron/adu", "source": "header"}
        assert det["read_noise"]["unit"] == "electron" and det["read_noise"]["value"] > 0
        assert record["cosmics"]["method"].startswith("astroscrappy")
        assert len(record["alignment"]["matrix"]) == 3 and record["alignment"]["ok"]
        assert record["sky"]["unit"] == "electron" and record["sky"]["value"] > 0
        assert set(record["seconds"]) >= {"read", "calibrate", "cosmics", "total"}
    assert len(list((work / "results/records").glob("*.json"))) == 8


def test_one_stack_per_group_with_provenance(run):
    work = run["work"]
    qc = read_tsv(work / "results/qc/frames.tsv")
    assert len(qc) == 8 and {r["status"] for r in qc} == {"ok"}
    for group in ("M13demo_V_60", "M13demo_V_120", "M13demo_R_60", "M13demo_R_120"):
        with fits.open(work / f"results/stacks/{group}.fits") as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "UNCERT", "MASK", "COVERAGE"]
            h = hdul[0].header
            assert h["NCOMBINE"] == 2 and h["NEXCLUDE"] == 0
            assert h["STKGROUP"] == group
            chosen = json.loads((work / f"results/references/{group}.json").read_text())
            assert h["ALIGNREF"] == chosen["reference"]  # chosen for quality
            assert f"{h['ALIGNREF']}.fits" in {h["IMCMB001"], h["IMCMB002"]}
            assert h["FLATCORR"].startswith("flat_1x1_128x96_")
            assert h["COMBMETH"] == "sigma_clip" and h["IMCMB001"].startswith("light_")
            assert hdul["COVERAGE"].data.max() == 2
        assert (work / f"results/stacks/raw/{group}.fits").exists()
        png = (work / f"results/qc/previews/{group}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
    refs = {r["reference"] for r in read_tsv(work / "results/qc/frames.tsv")}
    assert len(refs) == 4  # one reference per stack group


def test_rerun_with_nothing_changed_does_nothing(run):
    assert "Nothing to be done" in run["again"].stdout + run["again"].stderr


def test_raw_dir_is_never_modified(run, night):
    assert snapshot(night["raw_dir"]) == run["before"]


def test_bad_files_are_skipped_and_reported(night, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(night["raw_dir"], raw)
    data = (raw / "bias_001.fits").read_bytes()
    (raw / "bias_999.fits").write_bytes(data[: len(data) // 2])  # half-copied
    (raw / "notes.fits").write_text("not a FITS file\n")
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, config={"raw_dir": raw})
    assert proc.returncode == 0
    rejected = {r["path"]: r["reason"] for r in read_tsv(work / "results/index/rejected.tsv")}
    assert rejected == {"bias_999.fits": "truncated", "notes.fits": "unreadable"}
    assert "bias_999.fits: truncated" in proc.stderr
    assert len(list((work / "results/calibrated").glob("*.fits"))) == 8


def _stray(src, dst, drop=(), binned=False, **cards):
    with fits.open(src) as hdul:
        data, header = hdul[0].data, hdul[0].header.copy()
    header.update(cards)
    for key in drop:
        del header[key]
    if binned:
        data = data[::2, ::2]
        header["XBINNING"] = header["YBINNING"] = 2
    fits.PrimaryHDU(data, header).writeto(dst)


def test_stray_frames_are_rejected_and_the_night_is_reduced(night, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(night["raw_dir"], raw)
    _stray(raw / "light_M13demo_V_060s_001.fits", raw / "stray_nofilter.fits", drop=["FILTER"])
    _stray(raw / "light_M13demo_V_060s_002.fits", raw / "stray_binned.fits", binned=True)
    _stray(raw / "flat_V_001.fits", raw / "stray_flat.fits", drop=["FILTER"])
    _stray(raw / "light_M13demo_R_060s_002.fits", raw / "stray_gain.fits", GAIN=0.0)
    shutil.copy(raw / "light_M13demo_R_060s_001.fits", raw / "light_copy.fits")
    with fits.open(raw / "light_M13demo_R_120s_001.fits") as hdul:
        hdul.writeto(raw / "stray_corrupt.fits", checksum=True)
    data = bytearray((raw / "stray_corrupt.fits").read_bytes())
    data[-1000] ^= 0x01
    (raw / "stray_corrupt.fits").write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, config={"raw_dir": raw})
    assert proc.returncode == 0
    rejected = {r["path"]: r for r in read_tsv(work / "results/index/rejected.tsv")}
    assert {p: r["reason"] for p, r in rejected.items()} == {
        "light_copy.fits": "duplicate_of:light_M13demo_R_060s_001.fits",
        "stray_binned.fits": "no_matching_master",
        "stray_corrupt.fits": "checksum",
        "stray_flat.fits": "missing_keyword:FILTER",
        "stray_gain.fits": "gain_out_of_range",
        "stray_nofilter.fits": "missing_keyword:FILTER",
    }
    assert "setup 2x2_64x48" in rejected["stray_binned.fits"]["detail"]
    assert "FILTER" in rejected["stray_nofilter.fits"]["detail"]
    assert "GAIN = 0 is outside the sane range 0.05-50" in rejected["stray_gain.fits"]["detail"]
    assert "stray_binned.fits: no_matching_master" in proc.stderr  # listed at parse time
    frames = {r["path"] for r in read_tsv(work / "results/index/frames.tsv")}
    assert not frames & set(rejected)
    assert sorted(p.name for p in (work / "results/stacks").glob("*.fits")) == [
        f"M13demo_{f}_{t}.fits" for f in ("R", "V") for t in ("120", "60")
    ]
    assert len(list((work / "results/records").glob("*.json"))) == 8


def test_a_gain_setting_on_every_frame_stops_at_parse_time_naming_it(night, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in night["raw_dir"].iterdir():
        _stray(path, raw / path.name, GAIN=1e4)
    proc = snakemake(tmp_path, "-n", config={"raw_dir": raw}, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "gain_out_of_range 28 (" in err and "GAIN = 10000 is outside" in err
    assert "Traceback" not in err


def test_no_flats_at_all_stops_at_parse_time_with_one_clear_message(night, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(night["raw_dir"], raw, ignore=shutil.ignore_patterns("flat_*"))
    proc = snakemake(tmp_path, "-n", config={"raw_dir": raw}, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "no flat frames for filter(s) R (4 light frames), V (4 light frames)" in err
    assert "require_flat" in err  # says how to fix it
    assert "Traceback" not in err


def test_missing_raw_dir_is_a_clear_error(tmp_path):
    proc = snakemake(tmp_path, "-n", config={"raw_dir": tmp_path / "nope"}, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "is not a directory" in err and "Traceback" not in err


def test_demo_command_reports_truth_recovery(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
    proc = subprocess.run(
        [sys.executable, "-m", "ccdflow", "demo", "--preset", "test", "--workdir", tmp_path],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = [float(x) for x in re.findall(r"ratio\s+([0-9.]+)", proc.stdout)]
    assert len(ratios) >= 9  # bias, dark, 2 flats, calibrated frames, 4 stack noise gains
    assert all(0.7 < r < 1.5 for r in ratios), proc.stdout
    assert "Frames calibrated: 8" in proc.stdout
    assert f"night report: {tmp_path / 'results/report/index.html'}" in proc.stdout
    assert (tmp_path / "results/report/index.html").stat().st_size > 0


def test_a_frame_that_cannot_be_aligned_is_excluded_and_the_run_goes_on(night, tmp_path):
    import numpy as np

    raw = tmp_path / "raw"
    shutil.copytree(night["raw_dir"], raw)
    src = raw / "light_M13demo_V_060s_002.fits"
    with fits.open(src) as hdul:
        header = hdul[0].header.copy()
        rng = np.random.default_rng(1)
        noise = rng.normal(hdul[0].data.mean(), 8, hdul[0].data.shape).astype(np.uint16)
    bad = raw / "light_M13demo_V_060s_003.fits"  # same group, but only noise: no stars
    fits.PrimaryHDU(noise, header=header).writeto(bad)
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, config={"raw_dir": raw})
    assert proc.returncode == 0
    qc = {r["frame"]: r for r in read_tsv(work / "results/qc/frames.tsv")}
    assert qc["light_M13demo_V_060s_003"]["status"] == "rejected"
    assert qc["light_M13demo_V_060s_003"]["reason"]
    assert sum(r["status"] == "ok" for r in qc.values()) == 8
    with fits.open(work / "results/stacks/M13demo_V_60.fits") as hdul:
        h = hdul[0].header
        assert h["NCOMBINE"] == 2 and h["NEXCLUDE"] == 1
        assert h["EXCL001"].startswith("light_M13demo_V_060s_003: ")
    # no full-size placeholder: the rejected frame's aligned file holds no image
    with fits.open(work / "results/aligned/light_M13demo_V_060s_003.fits") as hdul:
        assert hdul[0].data is None and hdul[0].header["QCSTATUS"] == "rejected"
    selection = (work / "results/selection/M13demo_V_60.json").read_text()
    assert (
        '"light_M13demo_V_060s_003"' in selection
        and qc["light_M13demo_V_060s_003"]["reason"] in selection
    )


def test_with_cosmics_disabled_the_frame_job_skips_the_cleaning(night, tmp_path):
    import json

    import numpy as np

    from ccdflow import bits

    layer = tmp_path / "no_cosmics.yaml"
    layer.write_text("cosmics:\n  enabled: false\n")
    raw = night["raw_dir"]
    snakemake(
        tmp_path, "results/stacks/M13demo_V_60.fits", configfiles=[layer], config={"raw_dir": raw}
    )
    header = fits.getheader(tmp_path / "results/stacks/M13demo_V_60.fits")
    assert header["CRMETHOD"] == "none"
    assert header["NCOMBINE"] == 2
    for path in (tmp_path / "results/records").glob("light_M13demo_V_060s_*.json"):
        assert json.loads(path.read_text())["cosmics"] == {"method": "none"}
        mask = fits.getdata(tmp_path / "results/calibrated" / f"{path.stem}.fits", "MASK")
        assert not np.any(mask & bits.COSMIC)
