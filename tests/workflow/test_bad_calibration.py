"""Bad calibration frames are left out of their master (DESIGN §8), with real Snakemake.

The `--preset test` night plus one bad V flat of each kind of `conftest.BAD_FLATS` (all
zero, 10 % saturated, 200 times too faint, the data of an R flat): the run exits 0 (the
all-zero flat used to crash its master job, the others were combined silently), each bad
flat is listed with its reason, measured value and threshold in results/qc/calibration.tsv
and in the master's header, and the master flat equals the one made without the bad files.
"""

import shutil

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import demo
from conftest import BAD_FLATS, read_tsv, snakemake, write_bad_flats

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_calibration")
    truth = demo.make_night(base / "night", preset="test", seed=3)
    clean = base / "clean_raw"
    shutil.copytree(truth["raw_dir"], clean)
    bad = write_bad_flats(truth, truth["raw_dir"])
    out = {"bad": bad, "with": base / "with", "without": base / "without"}
    out["with"].mkdir()
    out["proc"] = snakemake(out["with"], config={"raw_dir": truth["raw_dir"]})
    out["master"] = next((out["with"] / "results/masters").glob("flat_*_V.fits")).name
    out["without"].mkdir()
    # only the master flat is needed from the night without the bad files
    snakemake(out["without"], f"results/masters/{out['master']}", config={"raw_dir": clean})
    return out


def test_each_bad_flat_is_left_out_with_its_reason_value_and_threshold(runs):
    assert runs["proc"].returncode == 0
    rows = {r["frame"]: r for r in read_tsv(runs["with"] / "results/qc/calibration.tsv")}
    master = runs["master"].removesuffix(".fits")
    for kind, path in runs["bad"].items():
        row = rows[path.name]
        assert (row["master"], row["status"], row["reason"]) == (
            master,
            "rejected",
            BAD_FLATS[kind],
        ), row
        assert row["value"] and row["threshold"], row
    assert float(rows[runs["bad"]["saturated"].name]["value"]) == pytest.approx(0.1, abs=0.01)
    assert float(rows[runs["bad"]["zero"].name]["value"]) <= 0
    # every other calibration frame (bias, darks, both filters' flats) is combined
    good = [r for name, r in rows.items() if name not in {p.name for p in runs["bad"].values()}]
    assert good and {r["status"] for r in good} == {"ok"}
    assert {r["master"] for r in good} >= {master}
    header = fits.getheader(runs["with"] / "results/masters" / runs["master"])
    assert header["NEXCLUDE"] == len(BAD_FLATS)
    cards = [str(header[k]) for k in header if k.startswith("EXCL")]
    for kind, path in runs["bad"].items():
        assert any(c.startswith(f"{path.name}: {BAD_FLATS[kind]} ") for c in cards), cards


def test_the_master_flat_equals_the_one_made_without_the_bad_files(runs):
    masters = [runs[run] / "results/masters" / runs["master"] for run in ("with", "without")]
    with fits.open(masters[0]) as a, fits.open(masters[1]) as b:
        assert a[0].header["NCOMBINE"] == b[0].header["NCOMBINE"]
        for name in ("PRIMARY", "UNCERT", "MASK"):
            np.testing.assert_allclose(a[name].data, b[name].data, rtol=1e-6, atol=1e-6)
