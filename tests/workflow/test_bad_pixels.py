"""Bad pixels end to end (real Snakemake on a generated night with injected hot pixels,
dead pixels, a dead and a low column, and a user map): the setup's bpm_{setup}.fits holds
them (recall >= 95 %, false pixels <= 0.05 %), every calibrated frame carries their bits,
and the stack leaves those input pixels out, landing on the truth from the other frames."""

import json

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import bits, demo
from ccdflow.io import read_product
from conftest import snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

DEAD_COLUMN, LOW_COLUMN = 40, 90
USER_PIXELS = [(10, 20), (50, 100), (70, 5)]  # (y, x)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("badpix")
    truth = demo.make_night(
        base / "night",
        preset="test",
        seed=5,
        hot_pixel_fraction=3e-3,
        dead_pixel_fraction=3e-3,
        bad_columns=((DEAD_COLUMN, 0.3), (LOW_COLUMN, 0.8)),
    )
    user = np.zeros(truth["spec"]["shape"], np.uint8)
    for y, x in USER_PIXELS:
        user[y, x] = 1
    fits.writeto(base / "user_bpm.fits", user)
    cfg = base / "badpix.yaml"
    cfg.write_text(f"badpix:\n  user_map: {base / 'user_bpm.fits'}\n")
    work = base / "work"
    work.mkdir()
    snakemake(work, configfiles=[cfg], config={"raw_dir": truth["raw_dir"]})
    again = snakemake(work, "-n", configfiles=[cfg], config={"raw_dir": truth["raw_dir"]})
    # the map is a product of the plan: nothing to redo, and no "orphaned product"
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "belong to no frame" not in again.stderr
    setup = "1x1_{1}x{0}".format(*truth["spec"]["shape"])
    return {"truth": truth, "work": work, "bpm": work / f"results/masters/bpm_{setup}.fits"}


def _truth(run):
    tb = run["truth"]["bad_pixels"]
    hot = (tb & demo.TRUTH_HOT) != 0
    dead = (tb & demo.TRUTH_DEAD) != 0
    column = (tb & demo.TRUTH_COLUMN) != 0
    return hot, dead, column


def test_the_setup_map_holds_the_injected_defects(run):
    with fits.open(run["bpm"]) as hdul:
        bpm, header = hdul[0].data, hdul[0].header
    assert bpm.dtype.kind == "u" and bpm.dtype.itemsize == 2
    hot, dead, column = _truth(run)
    assert hot.sum() > 30 and dead.sum() > 30
    assert ((bpm[hot] & bits.HOT) != 0).mean() >= 0.95
    assert ((bpm[dead] & (bits.DEAD | bits.FLAT_LOW)) != 0).mean() >= 0.95
    assert ((bpm[:, DEAD_COLUMN] & bits.BAD_COLUMN) != 0).mean() >= 0.95
    # the 0.8 column is no DEAD pixel (0.8 > low_fraction 0.7), only a bad column
    assert ((bpm[:, LOW_COLUMN] & bits.BAD_COLUMN) != 0).mean() >= 0.95
    user = np.zeros(bpm.shape, bool)
    user[tuple(np.transpose(USER_PIXELS))] = True
    assert ((bpm[user] & bits.BAD) != 0).all()
    false = (bpm != 0) & ~(hot | dead | column | user)
    assert false.sum() <= 0.0005 * bpm.size, np.argwhere(false)[:10]
    # counts per bit and the masters it was made from
    assert header["NHOT"] == np.count_nonzero(bpm & bits.HOT)
    assert header["NBADCOL"] == np.count_nonzero(bpm & bits.BAD_COLUMN)
    assert header["NUSERBAD"] == len(USER_PIXELS)
    assert header["NBADPIX"] == np.count_nonzero(bpm)
    inputs = sorted(header[f"IMCMB{i:03d}"] for i in range(1, header["NCOMBINE"] + 1))
    masters = run["bpm"].parent
    assert inputs == sorted(p.name for k in ("dark", "flat") for p in masters.glob(f"{k}_*.fits"))
    assert header["USERBPM"] == "user_bpm.fits"


def test_calibrated_frames_carry_the_bits_and_cosmics_leave_them_alone(run):
    bpm = fits.getdata(run["bpm"])
    found = (bpm & bits.DEFECT_BITS) != 0
    lights = sorted((run["work"] / "results/calibrated").glob("*.fits"))
    assert len(lights) == 8
    for path in lights:
        _, header, _, mask = read_product(path)
        defects = mask & (bits.DEFECT_BITS | bits.BAD)
        # every defect of the setup map is in the frame (one dark, both flats' bits)
        assert ((mask[found & ((bpm & bits.HOT) != 0)] & bits.HOT) != 0).all(), path.name
        assert ((mask[(bpm & bits.BAD) != 0] & bits.BAD) != 0).all(), path.name
        assert ((mask[:, DEAD_COLUMN] & bits.BAD_COLUMN) != 0).mean() >= 0.95
        # a hot pixel is never a cosmic ray (astroscrappy's inmask)
        assert not (mask[defects != 0] & bits.COSMIC).any(), path.name
        record = json.loads((run["work"] / "results/records" / f"{path.stem}.json").read_text())
        assert record["defect_pixels"]["HOT"] == np.count_nonzero(mask & bits.HOT)
        assert header["USERBPM"] == "user_bpm.fits"


def test_stack_leaves_defect_pixels_out_and_lands_on_the_truth(run):
    truth, work = run["truth"], run["work"]
    spec = truth["spec"]
    lights = {f["file"].removesuffix(".fits"): f for f in truth["frames"] if f["type"] == "light"}
    checked = 0
    for path in sorted((work / "results/stacks").glob("*.fits")):
        data, header, unc, _ = read_product(path)
        coverage = fits.getdata(path, "COVERAGE")
        names = [header[f"IMCMB{i:03d}"] for i in range(1, header["NCOMBINE"] + 1)]
        masks = [read_product(work / "results/aligned" / n)[3] for n in names]
        hit = sum(((m & (bits.DEFECT_BITS | bits.BAD)) != 0).astype(int) for m in masks)
        clean = sum((m == 0).astype(int) for m in masks)
        # masked input pixels are left out: the coverage counts only the unmasked frames
        at = (hit > 0) & (clean > 0)
        assert at.sum() > 50 and (coverage[at] == clean[at]).all(), path.name
        assert (coverage[at] < len(names)).all()
        # the noiseless sky and stars on the reference grid
        ref = lights[header["ALIGNREF"]]
        t = ref["exptime"]
        x, y = demo.transform_positions(
            np.asarray(truth["stars"]["x"]),
            np.asarray(truth["stars"]["y"]),
            dx=ref["dx"],
            dy=ref["dy"],
            rot_deg=ref["rot_deg"],
            shape=data.shape,
        )
        flux = np.asarray(truth["stars"][f"flux_{ref['filter']}"])
        model = dict(spec["sky"])[ref["filter"]] * t
        model = model + demo.render_stars(data.shape, x, y, flux * t, spec["fwhm"])
        use = (hit > 0) & (coverage > 0) & (model < 3 * dict(spec["sky"])[ref["filter"]] * t)
        z = (data - model)[use] / unc[use]
        assert use.sum() > 50
        # unbiased, noise-limited (a hot pixel left in would be tens of sigma)
        assert abs(np.median(z)) < 0.3, path.name
        assert np.percentile(np.abs(z), 99) < 5, path.name
        checked += 1
    assert checked == 4


def test_a_user_map_of_another_shape_rejects_the_frame_naming_both(run, tmp_path):
    raw = next(run["truth"]["raw_dir"].glob("light_*.fits"))
    wrong = tmp_path / "wrong.fits"
    fits.writeto(wrong, np.zeros((10, 12), np.uint8))
    from ccdflow.framejob import process_frame

    name = raw.stem
    record = process_frame(
        raw,
        0,
        frame=name,
        group="g",
        calibrated_path=tmp_path / "c.fits",
        aligned_path=tmp_path / "a.fits",
        record_path=tmp_path / "r.json",
        masters={},
        calibration={"gain": 1.5, "read_noise": 6.0},
        cosmics={"enabled": False},
        align={},
        reference=None,  # the frame is its own reference
        user_map=wrong,
    )
    assert record["status"] == "rejected" and record["reason"] == "user_map_shape"
    assert record["failed_step"] == "calibrate"
    assert "wrong.fits is 10 x 12" in record["detail"] and "96 x 128" in record["detail"]
