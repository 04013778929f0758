"""Bad light frames are rejected from the data (issue 12), with real Snakemake.

One generated group (256x256, V, 60 s) of four good lights and three bad ones, injected
by the generator with their truth (`ccdflow.demo` ``bad_lights``): a cloudy frame
(transparency 0.3), one with doubled seeing and one trailed by 8 px; and one bad flat
(10 % of its pixels saturated). The night is reduced twice: as it is, and without the
four bad files (the generator draws the bad lights from their own random stream, so every
other raw file is the same). The selection must leave out exactly the bad lights and the
master flat exactly the bad flat, each with its reason, the value measured and the
threshold, in results/qc/frames.tsv or results/qc/calibration.tsv and the stack or master
header; and the stacks of the two runs must be equal, array for array.
"""

import shutil

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import demo, provenance
from conftest import read_tsv, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

BAD = (("cloudy", 0.3), ("seeing", 2.0), ("trailed", 8.0))
REASON = {"cloudy": "cloudy", "seeing": "bad_seeing", "trailed": "trailed"}
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
    base = tmp_path_factory.mktemp("bad_frames")
    truth = demo.make_night(base / "night", bad_lights=BAD, **NIGHT)
    bad = {f["file"]: f for f in truth["frames"] if "defect" in f}
    assert len(bad) == len(BAD)
    clean = base / "clean_raw"
    clean.mkdir()
    for path in truth["raw_dir"].iterdir():
        if path.name not in bad:
            shutil.copy2(path, clean / path.name)
    # the bad flat: a good flat's header, 10 % of its pixels at the saturation level
    good = next(f for f in truth["frames"] if f["type"] == "flat")
    with fits.open(truth["raw_dir"] / good["file"]) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    data[np.random.default_rng(2).random(data.shape) < 0.1] = truth["spec"]["saturation"]
    bad_flat = truth["raw_dir"] / "flat_V_bad_saturated.fits"
    fits.writeto(bad_flat, data, header)
    out = {"truth": truth, "bad": {name.removesuffix(".fits"): f for name, f in bad.items()}}
    out["bad_flat"] = bad_flat.name
    for name, raw in (("with", truth["raw_dir"]), ("without", clean)):
        work = base / name
        work.mkdir()
        snakemake(work, config={"raw_dir": raw})
        out[name] = work
    return out


def test_bad_frames_are_excluded_with_reason_value_and_threshold(runs):
    qc = {r["frame"]: r for r in read_tsv(runs["with"] / "results/qc/frames.tsv")}
    rejected = {f: r for f, r in qc.items() if r["status"] != "ok"}
    assert sorted(rejected) == sorted(runs["bad"])  # and no good frame
    for frame, truth in runs["bad"].items():
        row = rejected[frame]
        assert (row["step"], row["reason"]) == ("selection", REASON[truth["defect"]]), row
        value, threshold = float(row["value"]), float(row["threshold"])
        good = [float(r["fwhm_px"]) for f, r in qc.items() if f not in runs["bad"]]
        if truth["defect"] == "cloudy":
            assert value == pytest.approx(truth["transparency"], abs=0.03)
            assert value == pytest.approx(float(row["transparency"]), abs=1e-4)
            assert threshold == pytest.approx(0.5, rel=0.05)  # 0.5 x median ~1
        elif truth["defect"] == "seeing":
            assert value == pytest.approx(truth["fwhm"], rel=0.1)
            assert value == pytest.approx(float(row["fwhm_px"]), abs=1e-3)
            assert threshold == pytest.approx(1.5 * np.median(good), rel=0.1)
        else:
            assert value == pytest.approx(float(row["ellipticity"]), abs=1e-4) and value > 0.45
            assert threshold == 0.3
        assert row["detail"].endswith(")") and "selection." in row["detail"]
    for frame, row in qc.items():
        if frame not in runs["bad"]:
            assert float(row["transparency"]) == pytest.approx(1.0, abs=0.05)
            assert float(row["ellipticity"]) < 0.15
            assert float(row["fwhm_px"]) == pytest.approx(3.0, rel=0.1)  # demo FWHM


def test_the_bad_flat_is_left_out_of_its_master_with_reason_and_value(runs):
    rows = read_tsv(runs["with"] / "results/qc/calibration.tsv")
    row = next(r for r in rows if r["frame"] == runs["bad_flat"])
    assert (row["status"], row["reason"]) == ("rejected", "saturated"), row
    assert float(row["value"]) == pytest.approx(0.1, abs=0.01)
    assert float(row["threshold"]) == 0.01
    others = [r for r in rows if r["frame"] != runs["bad_flat"]]
    assert others and {r["status"] for r in others} == {"ok"}
    master = fits.getheader(runs["with"] / "results/masters" / f"{row['master']}.fits")
    cards = [str(master[k]) for k in master if k.startswith("EXCL") and k[4:].isdigit()]
    assert master["NEXCLUDE"] == 1 and len(cards) == 1, cards
    assert cards[0].startswith(f"{runs['bad_flat']}: saturated "), cards


def test_stack_header_lists_the_exclusions(runs):
    header = fits.getheader(runs["with"] / f"results/stacks/{GROUP}.fits")
    assert header["NCOMBINE"] == 4 and header["NEXCLUDE"] == 3
    cards = sorted(v for k, v in header.items() if k.startswith("EXCL") and k[4:].isdigit())
    qc = {r["frame"]: r for r in read_tsv(runs["with"] / "results/qc/frames.tsv")}
    for card, frame in zip(cards, sorted(runs["bad"]), strict=True):
        row = qc[frame]
        assert card == (
            f"{frame}: {row['reason']} {float(row['value']):.4g} vs {float(row['threshold']):.4g}"
        )


def test_stacks_equal_the_stacks_of_the_night_without_the_bad_frames(runs):
    for product in (f"{GROUP}.fits", f"raw/{GROUP}.fits"):
        with (
            fits.open(runs["with"] / "results/stacks" / product) as a,
            fits.open(runs["without"] / "results/stacks" / product) as b,
        ):
            assert [h.name for h in a] == [h.name for h in b]
            for ha, hb in zip(a, b, strict=True):
                assert np.array_equal(ha.data, hb.data, equal_nan=True), (product, ha.name)


def test_aligned_frame_carries_its_metrics(runs):
    import json

    frame = "light_M13demo_V_060s_002"
    header = fits.getheader(runs["with"] / f"results/aligned/{frame}.fits")
    record = json.loads((runs["with"] / f"results/records/{frame}.json").read_text())
    metrics = record["metrics"]
    for key, name in (
        ("FWHM", "fwhm_px"),
        ("ELLIPTIC", "ellipticity"),
        ("TRANSPAR", "transparency"),
    ):
        assert header[key] == pytest.approx(metrics[name], abs=1e-3)
        assert header.comments[key] == provenance.KEYWORDS[key][: len(header.comments[key])]
    assert header["NSTARS"] == metrics["n_stars"]
    assert header["SKYLEVEL"] == pytest.approx(record["sky"]["value"], abs=1e-3)
    assert "FWHMAS" not in header  # no pixel scale configured
    assert metrics["n_transparency_stars"] >= 20
