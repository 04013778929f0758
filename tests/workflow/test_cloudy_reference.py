"""A cloudy first frame does not become the alignment reference (issue 14), real Snakemake.

One generated group (256x256, V, 60 s) of four good lights and a cloudy one
(transparency 0.1) taken *before* them, so it is the earliest frame of its group: the
reference chosen by DATE-OBS alone. The reference is chosen for quality instead
(`ccdflow.reference`): every good frame aligns, the cloudy one is left out as cloudy (or
few_stars), and the stack equals the stack of the night without the cloudy file (the
generator draws it from its own random stream, so every other raw file is the same).
Then a frame better than the reference arrives: the reference does not move, and only
the new frame's chain and its group's products run.
"""

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import demo, reference
from conftest import planned_jobs, read_tsv, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

GROUP = "M13demo_V_60"
NIGHT = dict(
    preset="test",
    seed=5,
    shape=(256, 256),
    n_stars=80,
    n_lights=4,
    filters=("V",),
    light_exptimes=(60.0,),
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    truth = demo.make_night(
        base / "night", bad_lights=(("cloudy", 0.1),), bad_lights_first=True, **NIGHT
    )
    cloudy = next(f for f in truth["frames"] if "defect" in f)
    lights = [f for f in truth["frames"] if f["type"] == "light"]
    lights.sort(key=lambda f: f["date_obs"])
    assert lights[0]["file"] == cloudy["file"]  # the earliest frame of the group
    clean = base / "clean_raw"
    clean.mkdir()
    for path in truth["raw_dir"].iterdir():
        if path.name != cloudy["file"]:
            shutil.copy2(path, clean / path.name)
    out = {"truth": truth, "cloudy": cloudy["file"].removesuffix(".fits"), "base": base}
    for name, raw in (("with", truth["raw_dir"]), ("without", clean)):
        work = base / name
        work.mkdir()
        snakemake(work, config={"raw_dir": raw})
        out[name] = work
    return out


def _reference(work):
    return json.loads((work / f"results/references/{GROUP}.json").read_text())


def test_the_cloudy_first_frame_is_not_the_reference(runs):
    doc = _reference(runs["with"])
    measures = {c["frame"]: c for c in doc["candidates"]}
    assert len(measures) == 5 and runs["cloudy"] in measures
    assert doc["reference"] != runs["cloudy"]
    # the choice is the candidate with the most sources (or a tie within 10 %)
    most = max(c["n_stars"] for c in measures.values())
    assert measures[doc["reference"]]["n_stars"] >= 0.9 * most
    assert measures[runs["cloudy"]]["n_stars"] < 0.7 * most
    assert doc["reference"] == _reference(runs["without"])["reference"]


def test_every_good_frame_aligns_and_the_cloudy_one_is_rejected_as_cloudy(runs):
    qc = {r["frame"]: r for r in read_tsv(runs["with"] / "results/qc/frames.tsv")}
    assert len(qc) == 5
    reference_frame = _reference(runs["with"])["reference"]
    for frame, row in qc.items():
        assert row["reference"] == reference_frame
        if frame == runs["cloudy"]:
            assert row["status"] == "rejected" and row["step"] == "selection", row
            assert row["reason"] in ("cloudy", "few_stars"), row
            if row["reason"] == "cloudy":
                assert float(row["value"]) == pytest.approx(0.1, abs=0.03)
        else:
            assert row["status"] == "ok", row
            assert int(row["n_matches"]) >= 20 or frame == reference_frame
            # transparency against the reference's raw fluxes: about 1 for every good frame
            assert float(row["transparency"]) == pytest.approx(1.0, abs=0.05)


def test_stack_equals_the_stack_of_the_night_without_the_cloudy_frame(runs):
    for product in (f"{GROUP}.fits", f"raw/{GROUP}.fits"):
        with (
            fits.open(runs["with"] / "results/stacks" / product) as a,
            fits.open(runs["without"] / "results/stacks" / product) as b,
        ):
            assert [h.name for h in a] == [h.name for h in b]
            for ha, hb in zip(a, b, strict=True):
                if ha.data is None:
                    continue
                np.testing.assert_allclose(ha.data, hb.data, rtol=1e-6, atol=1e-6)
    header = fits.getheader(runs["with"] / f"results/stacks/{GROUP}.fits")
    assert header["NCOMBINE"] == 4 and header["NEXCLUDE"] == 1


def _better_frame(runs, name):
    """A copy of the reference's raw frame with 60 more faint stars (no noise added),
    taken after the last frame: more sources than any candidate."""
    truth = runs["truth"]
    doc = _reference(runs["with"])
    shape = tuple(truth["spec"]["shape"])
    rng = np.random.default_rng(9)
    x, y = rng.uniform(10, shape[1] - 10, 60), rng.uniform(10, shape[0] - 10, 60)
    stars = demo.render_stars(shape, x, y, rng.uniform(800, 2000, 60), truth["spec"]["fwhm"])
    path = truth["raw_dir"] / f"{doc['reference']}.fits"
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data.astype(np.float64)
    data = np.clip(np.rint(data + stars / truth["spec"]["gain"]), 0, truth["spec"]["saturation"])
    header["DATE-OBS"] = "2024-03-16T03:00:00.000"
    out = truth["raw_dir"] / name
    fits.writeto(out, data.astype(np.uint16), header)
    return out


def test_a_better_frame_arriving_later_does_not_move_the_reference(runs):
    work, raw = runs["with"], runs["truth"]["raw_dir"]
    before = _reference(work)
    mtime = (work / f"results/references/{GROUP}.json").stat().st_mtime_ns
    new = _better_frame(runs, "light_M13demo_V_060s_009.fits")
    # it is better: the reference's own measure ranks it first
    ref_raw = raw / f"{before['reference']}.fits"
    measures = [reference.measure(p, gain=1.5) for p in (ref_raw, new)]
    assert reference.rank(measures)[0] == 1, measures
    dry = snakemake(work, "-n", config={"raw_dir": raw})
    jobs = {k: v for k, v in planned_jobs(dry.stdout).items() if k != "all"}
    assert jobs == {
        "process_frame": 1,
        "select_frames": 1,
        "stack_group": 1,
        "stack_raw_group": 1,
        "make_preview": 1,
        "report_group": 1,
        "collect_qc": 1,
        "make_report": 1,
    }
    assert "light_M13demo_V_060s_009" in dry.stdout
    snakemake(work, config={"raw_dir": raw})
    assert (work / f"results/references/{GROUP}.json").stat().st_mtime_ns == mtime
    assert _reference(work) == before
    qc = {r["frame"]: r for r in read_tsv(work / "results/qc/frames.tsv")}
    assert qc["light_M13demo_V_060s_009"]["status"] == "ok"
    assert qc["light_M13demo_V_060s_009"]["reference"] == before["reference"]


def test_reference_frames_override_names_the_reference(runs, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    raw = runs["truth"]["raw_dir"]
    frame = "light_M13demo_V_060s_002"
    cfg = tmp_path / "ref.yaml"
    cfg.write_text(f"align:\n  reference_frames: [{frame}.fits]\n")
    snakemake(work, "--configfile", str(cfg), config={"raw_dir": raw})
    doc = _reference(work)
    assert doc["reference"] == frame and [c["frame"] for c in doc["candidates"]] == [frame]
    assert "align.reference_frames" in doc["why"]
    cfg.write_text("align:\n  reference_frames: [no_such_frame]\n")
    proc = snakemake(work, "-n", "--configfile", str(cfg), config={"raw_dir": raw}, check=False)
    assert proc.returncode != 0
    assert "align.reference_frames: 'no_such_frame'" in proc.stdout + proc.stderr


def test_removing_the_reference_chooses_again(runs):
    """(Last: it changes the night.) The reference's raw file deleted: its set chooses
    again among the frames present, and the group's frames are aligned anew."""
    work, raw = runs["with"], runs["truth"]["raw_dir"]
    chosen = _reference(work)["reference"]
    (raw / f"{chosen}.fits").unlink()
    dry = snakemake(work, "-n", config={"raw_dir": raw})
    jobs = planned_jobs(dry.stdout)
    assert jobs["choose_reference"] == 1 and jobs["process_frame"] == 5, jobs
    snakemake(work, config={"raw_dir": raw})
    doc = _reference(work)
    assert doc["reference"] != chosen and chosen not in [c["frame"] for c in doc["candidates"]]
    assert doc["reference"] != runs["cloudy"]
