"""A master whose every input frame fails its gates (DESIGN §8), with real Snakemake.

The `--preset test` night with every V flat replaced by an all-zero frame (the headers of
the good flats): with ``calibration.missing_master: exclude`` (the default) the V master
flat is an explicit empty master (header-only, every flat's reason), the V lights are
rejected with ``no_good_master``, their groups get the empty-group handling, the R groups
are reduced as in the night without the V frames, the run exits 0 and a second run has
nothing to do. With ``missing_master: error`` the V master job stops with one message.
"""

import shutil

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import demo
from ccdflow.summary import format_summary
from conftest import read_tsv, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("empty_master")
    truth = demo.make_night(base / "night", preset="test", seed=4)
    raw = truth["raw_dir"]
    flats = [f["file"] for f in truth["frames"] if f["type"] == "flat" and f["filter"] == "V"]
    for name in flats:  # every V flat all zero (its header kept)
        with fits.open(raw / name) as hdul:
            hdul[0].data = np.zeros_like(hdul[0].data)
            hdul.writeto(raw / name, overwrite=True)
    # the same night without any V frame: the R groups' reference
    no_v = base / "no_v_raw"
    shutil.copytree(raw, no_v)
    for f in truth["frames"]:
        if f["type"] in ("light", "flat") and f["filter"] == "V":
            (no_v / f["file"]).unlink()
    out = {"truth": truth, "flats": flats, "work": base / "work", "no_v": base / "no_v"}
    out["v_lights"] = [
        f["file"] for f in truth["frames"] if f["type"] == "light" and f["filter"] == "V"
    ]
    out["r_lights"] = [
        f["file"] for f in truth["frames"] if f["type"] == "light" and f["filter"] == "R"
    ]
    out["work"].mkdir()
    out["proc"] = snakemake(out["work"], config={"raw_dir": raw}, check=False)
    out["again"] = snakemake(out["work"], "-n", config={"raw_dir": raw}, check=False)
    stacks = out["work"] / "results/stacks"
    out["r_groups"] = sorted(p.name for p in stacks.glob("*.fits") if "_R_" in p.name)
    out["no_v"].mkdir()
    targets = [f"results/stacks/{g}" for g in out["r_groups"]]
    snakemake(out["no_v"], *targets, config={"raw_dir": no_v})
    out["error"] = base / "error"
    out["error"].mkdir()
    master = next((out["work"] / "results/masters").glob("flat_*_V.fits")).name
    out["master"] = master
    cfg = base / "error.yaml"
    cfg.write_text("calibration:\n  missing_master: error\n")
    out["error_proc"] = snakemake(
        out["error"],
        f"results/masters/{master}",
        configfiles=[cfg],
        config={"raw_dir": raw},
        check=False,
    )
    return out


def test_the_run_exits_0_and_a_second_run_has_nothing_to_do(runs):
    assert runs["proc"].returncode == 0, runs["proc"].stderr[-3000:]
    assert runs["again"].returncode == 0
    assert "Nothing to be done" in runs["again"].stdout + runs["again"].stderr


def test_the_v_master_is_an_explicit_empty_master_listing_each_flat_and_why(runs):
    work = runs["work"]
    path = work / "results/masters" / runs["master"]
    with fits.open(path) as hdul:
        assert len(hdul) == 1 and hdul[0].data is None
        h = hdul[0].header
    assert (h["NAXIS"], h["NCOMBINE"], h["QCSTATUS"], h["QCREASON"]) == (
        0,
        0,
        "empty",
        "no_good_frames",
    )
    assert h["NEXCLUDE"] == len(runs["flats"])
    cards = [str(h[k]) for k in h if k.startswith("EXCL") and k[4:].isdigit()]
    assert sorted(c.split(":")[0] for c in cards) == sorted(runs["flats"])
    assert all(": no_signal" in c for c in cards), cards
    rows = [r for r in read_tsv(work / "results/qc/calibration.tsv")]
    v = {r["frame"]: r for r in rows if r["master"] == path.stem}
    assert set(v) == set(runs["flats"])
    assert {(r["status"], r["reason"]) for r in v.values()} == {("rejected", "no_signal")}
    log = (work / f"logs/make_master_flat/{path.stem.removeprefix('flat_')}.log").read_text()
    assert f"master {path.name} is empty" in log


def test_the_v_lights_are_rejected_with_no_good_master_and_their_stacks_are_empty(runs):
    work = runs["work"]
    rows = {r["frame"]: r for r in read_tsv(work / "results/qc/frames.tsv")}
    for name in runs["v_lights"]:
        row = rows[name.removesuffix(".fits")]
        assert (row["status"], row["step"], row["reason"]) == (
            "rejected",
            "calibrate",
            "no_good_master",
        ), row
        assert runs["master"] in row["detail"] and "no_signal" in row["detail"], row
    v_stacks = sorted((work / "results/stacks").glob("*_V_*.fits"))
    assert v_stacks
    for path in v_stacks:
        h = fits.getheader(path)
        assert (h["NAXIS"], h["NCOMBINE"]) == (0, 0), path
        assert "no_good_master" in str(h["EXCL001"]), path
    summary = format_summary(work)
    assert f"{runs['master']}: empty (no_good_frames" in summary
    for path in v_stacks:
        assert f"group {path.stem}: no stack, every frame was excluded (no_good_master)" in summary


def test_the_r_stacks_equal_those_of_the_night_without_the_v_frames(runs):
    assert len(runs["r_groups"]) == 2
    assert sorted(p.name for p in (runs["no_v"] / "results/masters").glob("*.fits")) == sorted(
        p.name
        for p in (runs["work"] / "results/masters").glob("*.fits")
        if p.name != runs["master"] and not p.name.startswith("bpm_")
    )
    n_r = 0
    for group in runs["r_groups"]:
        paths = [runs[run] / "results/stacks" / group for run in ("work", "no_v")]
        with fits.open(paths[0]) as a, fits.open(paths[1]) as b:
            assert a[0].header["NCOMBINE"] == b[0].header["NCOMBINE"] >= 2
            n_r += a[0].header["NCOMBINE"]
            assert np.isfinite(a[0].data).all()
            for name in ("PRIMARY", "UNCERT", "MASK"):
                np.testing.assert_allclose(a[name].data, b[name].data, rtol=1e-5, atol=1e-5)
    assert n_r == len(runs["r_lights"])


def test_with_missing_master_error_the_master_job_stops_with_the_one_message(runs):
    proc = runs["error_proc"]
    assert proc.returncode != 0
    assert "no master flat: every input frame failed its gates" in proc.stderr
    assert not (runs["error"] / "results/masters" / runs["master"]).exists()
