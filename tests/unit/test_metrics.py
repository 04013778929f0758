"""Frame metrics and quality gates on synthetic star fields with known truth: FWHM and star
count within 10 %; in a group of good frames, a cloudy one, one with doubled seeing and a
trailed one are rejected with the right reason and no good frame is."""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import special

from ccdflow import align, bits
from ccdflow.metrics import GATES, Gate, flux_ratio, frame_metrics, gate_group, transparency

SHAPE = (256, 256)
N_STARS = 60
FWHM = 3.0  # px
SKY = 200.0  # e-
READ_NOISE = 5.0  # e-


@pytest.fixture(scope="module")
def field():
    """Known star positions (at least 20 px apart, 16 px from the edges) and fluxes (e-)."""
    rng = np.random.default_rng(42)
    xy = []
    while len(xy) < N_STARS:
        p = rng.uniform(16, SHAPE[0] - 17, 2)
        if all(np.hypot(*(p - q)) > 20 for q in xy):
            xy.append(p)
    return np.array(xy), 10 ** rng.uniform(3.5, 4.7, N_STARS)


def _frame(field, seed, *, fwhm=FWHM, trail=1.0, throughput=1.0, shift=(0.0, 0.0)):
    """One frame (e-): pixel-integrated Gaussian stars, elongated ``trail`` times along x,
    on a flat sky with photon and read noise; stars shifted by ``shift`` px."""
    rng = np.random.default_rng(seed)
    xy, flux = field
    sx, sy = fwhm / 2.3548 * trail, fwhm / 2.3548
    pad = 20  # stamps may reach beyond the frame
    image = np.full((SHAPE[0] + 2 * pad, SHAPE[1] + 2 * pad), SKY)
    edges = np.arange(-15, 17) - 0.5  # pixel edges of a 31 x 31 stamp around the star
    for (x, y), f in zip(xy + shift, flux * throughput, strict=True):
        ix, iy = round(x), round(y)
        px = np.diff(special.erf((ix + edges - x) / (math.sqrt(2) * sx))) / 2
        py = np.diff(special.erf((iy + edges - y) / (math.sqrt(2) * sy))) / 2
        image[pad + iy - 15 : pad + iy + 16, pad + ix - 15 : pad + ix + 16] += f * np.outer(py, px)
    image = image[pad:-pad, pad:-pad]
    return rng.poisson(image) + rng.normal(0, READ_NOISE, SHAPE)


def test_fwhm_and_star_count(field):
    data = _frame(field, 1)
    m = frame_metrics(data, pixel_scale=0.8)
    assert abs(m["n_stars"] - N_STARS) <= 0.1 * N_STARS
    assert m["fwhm_px"] == pytest.approx(FWHM, rel=0.1)
    assert m["fwhm_arcsec"] == pytest.approx(0.8 * m["fwhm_px"])
    assert m["ellipticity"] < 0.1
    assert m["sky_e"] == pytest.approx(SKY, rel=0.02)
    assert m["sky_noise_e"] == pytest.approx(math.sqrt(SKY + READ_NOISE**2), rel=0.1)
    assert m["n_psf_stars"] >= 0.8 * N_STARS and len(m["stars"]["flux_e"]) >= 40
    json.dumps(m, allow_nan=False)  # a record is plain JSON


def test_close_pairs_are_not_psf_stars(field):
    """Half of the stars get an equal companion 7 px away: still counted, not measured."""
    xy, flux = field
    crowded = (np.vstack([xy, xy[:30] + np.array([7.0, 0.0])]), np.concatenate([flux, flux[:30]]))
    m = frame_metrics(_frame(crowded, 7))
    assert abs(m["n_stars"] - 90) <= 9
    assert m["n_psf_stars"] <= 30
    assert m["fwhm_px"] == pytest.approx(FWHM, rel=0.1)


def test_trailed_and_blurred_frames_measured(field):
    wide = frame_metrics(_frame(field, 2, fwhm=2 * FWHM))
    assert wide["fwhm_px"] == pytest.approx(2 * FWHM, rel=0.1)
    assert wide["ellipticity"] < 0.1
    trailed = frame_metrics(_frame(field, 3, trail=2.5))
    assert trailed["ellipticity"] == pytest.approx(0.6, abs=0.1)


def test_saturated_and_masked_pixels(field):
    data = _frame(field, 4)
    mask = np.zeros(SHAPE, np.uint16)
    mask[:, :32] = bits.SATURATED  # an eighth of the frame
    xy = field[0]
    hit = xy[xy[:, 0] > 40][:10]  # ten stars with a bad pixel in their core
    mask[np.round(hit[:, 1]).astype(int), np.round(hit[:, 0]).astype(int)] = bits.BAD
    m = frame_metrics(data, mask)
    assert m["saturated_fraction"] == pytest.approx(1 / 8)
    stars = np.column_stack([m["stars"]["x_px"], m["stars"]["y_px"]])
    assert (stars[:, 0] > 32).all()
    near = np.hypot(*(stars[:, None, :] - hit[None, :, :]).transpose(2, 0, 1)) < 3
    assert not near.any()  # no PSF star touches a masked pixel
    assert len(stars) >= 30
    assert frame_metrics(data, saturation=data.max())["saturated_fraction"] == 1 / data.size
    empty = frame_metrics(np.random.default_rng(0).normal(SKY, 10, SHAPE))
    assert empty["n_stars"] == 0 and empty["fwhm_px"] is None


def test_a_shared_detection_changes_nothing_and_is_used_only_where_it_is_the_same(field):
    """The frame job extracts sources once for the metrics and the star list. Given that
    detection each gives exactly what it gives alone; one that left out other pixels (the
    metrics' saturation level) or used another threshold is not used."""
    data = _frame(field, 5).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint16)
    mask[100:110, 50:60] = bits.HOT
    det = align.detect(data, align.bad_pixels(data, mask))
    assert frame_metrics(data, mask, detection=det) == frame_metrics(data, mask)
    assert align.star_list(data, mask, detection=det) == align.star_list(data, mask)
    # it is used: a detection cut to its first five sources gives five stars
    cut = dataclasses.replace(det, objects=det.objects[:5])
    assert frame_metrics(data, mask, detection=cut)["n_stars"] == 5
    assert len(align.star_list(data, mask, detection=cut)["stars"]) <= 5
    # not the same extraction: ignored
    level = float(np.percentile(data, 99.9))  # star cores above it
    alone = frame_metrics(data, mask, saturation=level)
    assert alone != frame_metrics(data, mask)  # the level changes the result here
    assert frame_metrics(data, mask, saturation=level, detection=cut) == alone
    deep = align.star_list(data, mask, detection_sigma=10.0)
    assert deep != align.star_list(data, mask)
    assert align.star_list(data, mask, detection_sigma=10.0, detection=cut) == deep
    assert frame_metrics(data, np.zeros(SHAPE, np.uint16), detection=cut)["n_stars"] > 5


def test_too_few_psf_stars_measure_no_psf(field):
    """Four isolated stars: counted, but no FWHM or ellipticity a gate could act on."""
    xy, flux = field
    m = frame_metrics(_frame((xy[:4], flux[:4]), 8))
    assert m["n_stars"] == 4 and m["n_psf_stars"] == 4
    assert m["fwhm_px"] is None and m["ellipticity"] is None and m["stars"]["flux_e"] == []
    assert frame_metrics(_frame((xy[:4], flux[:4]), 8), min_psf_stars=4)["fwhm_px"] > 0


def test_transparency_matches_stars_through_the_transform(field):
    ref = frame_metrics(_frame(field, 5))["stars"]
    shifted = frame_metrics(_frame(field, 6, throughput=0.3, shift=(7.0, -4.0)))["stars"]
    matrix = np.array([[1, 0, -7.0], [0, 1, 4.0], [0, 0, 1]])  # frame -> reference
    t = transparency(shifted, ref, matrix)
    assert t["transparency"] == pytest.approx(0.3, rel=0.05) and t["n_matched"] >= 40
    assert transparency(shifted, ref)["n_matched"] < 5  # without the transform: no match
    assert transparency(ref, ref)["transparency"] == 1.0
    assert flux_ratio([2, 4, 6, 8, 10], [1, 2, 3, 4, 5]) == (2.0, 5)
    # A reference star claimed by two frame stars is matched to neither.
    ref = {"x_px": [10, 50, 90, 130, 170, 210], "y_px": [10] * 6, "flux_e": [100.0] * 6}
    two = {k: [*v, v[0]] for k, v in ref.items()}
    two["x_px"][-1] += 1.0
    two["flux_e"] = [50.0] * 6 + [1e4]
    t = transparency(two, ref, min_stars=3)
    assert t == {"transparency": 0.5, "n_matched": 5}
    assert math.isnan(flux_ratio([1, 2], [1, 2])[0])


def _group(field):
    """8 good frames (seeing and throughput varying a little) and three bad ones."""
    rng = np.random.default_rng(9)
    frames = {
        f"good{i}": dict(fwhm=FWHM * rng.uniform(0.9, 1.15), throughput=rng.uniform(0.85, 1.0))
        for i in range(8)
    }
    frames |= {
        "cloudy": dict(throughput=0.3),
        "seeing": dict(fwhm=2 * FWHM),
        "trailed": dict(trail=2.5),
    }
    records, ref = {}, None
    for seed, (name, kw) in enumerate(frames.items()):
        shift = rng.uniform(-5, 5, 2)
        m = frame_metrics(_frame(field, 100 + seed, shift=shift, **kw))
        ref = ref or m["stars"]  # good0 is the reference
        matrix = np.array([[1, 0, -shift[0]], [0, 1, -shift[1]], [0, 0, 1]])
        records[name] = m | transparency(m["stars"], ref, matrix)
    throughput = {k: kw.get("throughput", 1.0) for k, kw in frames.items()}
    return records, throughput


def test_group_gates_reject_exactly_the_bad_frames(field):
    records, throughput = _group(field)
    decisions = dict(zip(records, gate_group(list(records.values())), strict=True))
    rejected = {k: d["reason"] for k, d in decisions.items() if d["status"] == "rejected"}
    assert rejected == {"cloudy": "cloudy", "seeing": "bad_seeing", "trailed": "trailed"}
    cloudy = decisions["cloudy"]
    relative = {k: t / throughput["good0"] for k, t in throughput.items()}  # to the reference
    assert cloudy["value"] == pytest.approx(relative["cloudy"], rel=0.05)
    median = np.median([t for k, t in relative.items() if k != "cloudy"])
    assert cloudy["threshold"] == pytest.approx(0.5 * median, rel=0.05)
    assert "transparency" in cloudy["detail"] and "group median" in cloudy["detail"]
    assert decisions["seeing"]["value"] > decisions["seeing"]["threshold"]
    assert decisions["good0"] == {
        "status": "ok",
        "reason": "",
        "value": None,
        "threshold": None,
        "detail": "",
        "failed": [],
    }


def test_gates_are_data():
    records = [{"fwhm_px": 3.0, "saturated_fraction": 0.0, "sky_e": 200.0} for _ in range(4)]
    records.append({"fwhm_px": 3.0, "saturated_fraction": 0.2, "sky_e": 900.0})
    assert [d["reason"] for d in gate_group(records)] == [""] * 4 + ["saturated"]
    assert gate_group(records, {"saturated": None})[4]["status"] == "ok"  # disabled
    assert gate_group(records, {"saturated": 0.5})[4]["status"] == "ok"  # looser
    bright_sky = Gate("bright_sky", "sky_e", "above_median", 2.0)  # a new gate: one row
    d = gate_group(records, gates=(*GATES, bright_sky))[4]
    assert d["failed"] == ["saturated", "bright_sky"]
    with pytest.raises(ValueError, match="unknown quality gate"):
        gate_group(records, {"clouds": 0.5})
    assert gate_group([records[0]])[0]["status"] == "ok"  # alone: nothing to compare with
    # Two frames are enough to tell the bad one: each is compared with the other.
    pair = gate_group([{"fwhm_px": 3.0}, {"fwhm_px": 6.0}])
    assert [d["reason"] for d in pair] == ["", "bad_seeing"] and pair[1]["threshold"] == 4.5
