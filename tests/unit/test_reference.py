"""The alignment reference: reference sets, stable candidates, the choice for quality."""

import json

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import demo, plan, reference


def _lights(*rows):
    """Plan.lights of (frame, group, object, date, setup) rows."""
    return {
        f: {"record": {"group": g, "object": o, "date": d, "setup": s, "path": f"{f}.fits"}}
        for f, g, o, d, s in rows
    }


LIGHTS = _lights(
    ("a_V_1", "a_V", "a", "2024-01-01T02:00:00", "1x1"),
    ("a_V_2", "a_V", "a", "2024-01-01T01:00:00", "1x1"),
    ("a_R_1", "a_R", "a", "2024-01-01T03:00:00", "1x1"),
    ("a_R_2", "a_R", "a", "2024-01-01T04:00:00", "2x2"),
)


def test_reference_sets_by_group_are_earliest_first():
    of, members, overrides = plan.reference_sets(LIGHTS, "group")
    assert members == {"a_V": ["a_V_2", "a_V_1"], "a_R+1x1": ["a_R_1"], "a_R+2x2": ["a_R_2"]}
    assert of["a_V_1"] == "a_V" and overrides == {}


def test_reference_sets_by_object_span_filters_but_not_setups():
    _, members, _ = plan.reference_sets(LIGHTS, "object")
    assert members == {"a+1x1": ["a_V_2", "a_V_1", "a_R_1"], "a+2x2": ["a_R_2"]}


def test_reference_frames_names_the_reference_by_id_or_file_and_checks_it():
    _, _, overrides = plan.reference_sets(LIGHTS, "group", ["a_V_1.fits"])
    assert overrides == {"a_V": "a_V_1"}
    with pytest.raises(plan.PlanError, match="'nope' is no light frame"):
        plan.reference_sets(LIGHTS, "group", ["nope"])
    with pytest.raises(plan.PlanError, match="both in reference set 'a_V'"):
        plan.reference_sets(LIGHTS, "group", ["a_V_1", "a_V_2"])


def test_candidates_stay_those_of_the_existing_file_while_they_are_members():
    members = [f"f{i}" for i in range(20)]
    assert reference.candidates(members, None, 3) == ["f0", "f1", "f2"]
    # a set first reduced with two frames keeps them as more arrive
    assert reference.candidates(members, ["f0", "f1"], 3) == ["f0", "f1"]
    # a candidate gone: chosen anew among the earliest present
    assert reference.candidates(members[1:], ["f0", "f1"], 3) == ["f1", "f2", "f3"]
    assert reference.candidates(members, ["f0"], 3, override="f7") == ["f7"]


def test_read_candidates_ignores_missing_and_foreign_files(tmp_path):
    assert reference.read_candidates(tmp_path / "none.json") is None
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"reference_version": 0, "candidates": [{"frame": "x"}]}))
    assert reference.read_candidates(path) is None
    path.write_text(
        json.dumps(
            {"reference_version": reference.REFERENCE_VERSION, "candidates": [{"frame": "x"}]}
        )
    )
    assert reference.read_candidates(path) == ["x"]


def test_rank_most_stars_then_fwhm_then_earliest():
    m = [
        {"n_stars": 30, "fwhm_px": 2.0},  # cloudy: few stars, "sharp" (cosmic rays)
        {"n_stars": 100, "fwhm_px": 3.3},
        {"n_stars": 95, "fwhm_px": 3.0},  # a tie on stars (within 10 %), sharper
        {"n_stars": 80, "fwhm_px": 2.5},  # not a tie
        {"n_stars": 95, "fwhm_px": 3.0},  # equal to 2, later
        {"n_stars": 100, "fwhm_px": None},  # no FWHM: last of the tied
    ]
    assert reference.rank(m) == [2, 4, 1, 5, 3, 0]
    assert reference.rank([{"n_stars": 0, "fwhm_px": None}] * 2) == [0, 1]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("refnight")
    return demo.make_night(
        base,
        preset="test",
        seed=2,
        shape=(128, 128),
        n_stars=60,
        n_lights=2,
        filters=("V",),
        light_exptimes=(60.0,),
        bad_lights=(("cloudy", 0.1),),
        bad_lights_first=True,
    )


def test_choose_reference_passes_over_the_cloudy_first_frame(night, tmp_path):
    lights = sorted(
        (f for f in night["frames"] if f["type"] == "light"), key=lambda f: f["date_obs"]
    )
    assert lights[0].get("defect") == "cloudy"
    frames = [
        {"frame": f["file"][:-5], "raw": night["raw_dir"] / f["file"], "gain": 1.5} for f in lights
    ]
    out = tmp_path / "ref.json"
    doc = reference.choose_reference("set", frames, out, align={"detection_sigma": 5.0})
    assert doc["reference"] == frames[reference.rank(doc["candidates"])[0]]["frame"]
    assert doc["reference"] != frames[0]["frame"]
    assert json.loads(out.read_text())["reference"] == doc["reference"]
    assert doc["shape"] == [128, 128] and len(doc["stars"]["stars"]) >= 20
    # the photometric catalogue of the transparencies, in electrons (raw x gain)
    assert doc["unit"] == "electron" and len(doc["metrics"]["stars"]["flux_e"]) >= 5
    assert reference.read_candidates(out) == [f["frame"] for f in frames]


def test_measure_reports_an_unreadable_candidate(tmp_path):
    bad = tmp_path / "bad.fits"
    fits.PrimaryHDU(np.zeros((4, 4, 4), np.float32)).writeto(bad)
    bad.write_bytes(bad.read_bytes()[:100])
    m = reference.measure(bad)
    assert m["error"] and m["n_stars"] == 0


def test_a_failed_match_is_blamed_on_a_starless_or_much_poorer_reference():
    from ccdflow import align
    from ccdflow.framejob import _reference_unusable

    def stars(n):
        return {"stars": [[i, i] for i in range(min(n, 200))], "n_starlike": n}

    failed = align.AlignResult(False, "no_match", "astroalign: MaxIterError")
    poor = {"reference": "r", "stars": stars(10)}
    blamed = _reference_unusable(failed, stars(100), poor, "ref.json")
    assert blamed.reason == "reference_unusable" and "10 in reference r" in blamed.detail
    # a frame no richer than the reference keeps its own failure
    assert _reference_unusable(failed, stars(15), poor, "ref.json").reason == "no_match"
    starless = {"reference": "r", "stars": stars(2)}
    assert _reference_unusable(failed, stars(1), starless, "x").reason == "reference_unusable"
    ok = align.AlignResult.identity()
    assert _reference_unusable(ok, stars(100), poor, "x") is ok


@pytest.mark.parametrize("shape", [(300, 257), (40, 3), (1, 64)])
def test_hot_pixels_are_masked_as_the_whole_frame_box_median_finds_them(shape):
    """`reference._spikes` takes the 3 x 3 box median only where a spike can be; it must
    flag exactly the pixels the whole-frame median filter flags (edges included), so
    hot pixels are masked and stars are not."""
    from scipy import ndimage

    from ccdflow import bits

    rng = np.random.default_rng(shape[0])
    data = rng.normal(300, 8, shape).astype(np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for y, x in rng.uniform(0, 1, (15, 2)) * shape:  # stars of FWHM 3 px
        data += 4000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.27**2))
    hot = rng.random(shape) < 0.003
    hot[0, 0] = hot[-1, -1] = True  # at the corners too
    data[hot] += rng.uniform(500, 20000, hot.sum())
    mask = np.zeros(shape, bits.MASK_DTYPE)

    box = ndimage.median_filter(data, 3)
    sample = (data - box)[::4, ::4]
    rms = 1.4826 * np.median(np.abs(sample - np.median(sample)))
    level = np.median(data[::4, ::4])
    expected = (data - box > 5 * rms) & ((data - level) > 5 * (box - level))

    flagged = (reference._spikes(data, mask) & bits.BAD) != 0
    np.testing.assert_array_equal(flagged, expected)
    if min(shape) > 3:  # (in a row or two the mirrored edges repeat the pixel in its box)
        assert flagged[hot].mean() > 0.9  # the hot pixels are found
    assert not mask.any()  # the input is not modified


def test_the_median_of_nine_network_is_the_median_of_every_input():
    """`reference._median9` (a comparator network) against ``np.median``: on all 512
    inputs of zeros and ones, which by the 0-1 principle proves it for any values, and on
    random values with ties and negative numbers, in float32 and float64."""
    ones = (np.arange(512)[:, None] >> np.arange(9)) & 1  # row k: the bits of k
    np.testing.assert_array_equal(reference._median9(list(ones.T)), np.median(ones, axis=1))
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        values = rng.normal(0.0, 100.0, (9, 20_000)).astype(dtype)
        values[:, ::3] = np.round(values[:, ::3] / 50.0)  # many ties
        got = reference._median9(list(values))
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, np.median(values, axis=0))


def test_hot_pixels_are_masked_in_a_frame_with_blank_pixels():
    """A raw frame's BLANK pixels read as NaN; the hot pixels elsewhere are still found
    (a NaN in the noise estimate once flagged none) and no blank pixel is flagged."""
    from ccdflow import bits

    rng = np.random.default_rng(4)
    shape = (256, 300)
    data = rng.normal(300, 8, shape).astype(np.float32)
    hot = rng.random(shape) < 0.003
    data[hot] += rng.uniform(500, 20000, hot.sum())
    blank = rng.random(shape) < 0.01
    blank[:, 77] = True  # a blank column
    blank &= ~hot
    data[blank] = np.nan
    near_blank = np.zeros(shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near_blank |= np.roll(np.roll(blank, dy, 0), dx, 1)
    flagged = (reference._spikes(data, np.zeros(shape, bits.MASK_DTYPE)) & bits.BAD) != 0
    assert flagged[hot & ~near_blank].mean() > 0.95
    assert not flagged[blank].any()
    assert np.count_nonzero(flagged & ~hot) <= 2
