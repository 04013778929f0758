"""Cosmic rays: the injected ones of a calibrated demo frame are found and cleaned, bright
star cores are spared, units follow astroscrappy's convention, absurd frames are refused."""

import numpy as np
import pytest
from scipy import ndimage

from ccdflow import bits, demo
from ccdflow.cosmics import clean_cosmics
from ccdflow.io import read_product
from ccdflow.tasks import make_master_file
from conftest import calibrate_light

COMBINE = {"method": "sigma_clip", "sigma_low": 3.0, "sigma_high": 3.0, "maxiters": 5}
#: One 120 s V light with 40 bright, mostly unsaturated stars (peaks 1e4 to 9e4 e-) and
#: about 300 cosmic-ray pixels on a 256 x 256 chip.
NIGHT = dict(
    shape=(256, 256),
    filters=("V",),
    light_exptimes=(120.0,),
    n_lights=1,
    n_stars=40,
    star_flux=(1000.0, 8000.0),
    cosmic_rate=0.1,
)
#: Noiseless peak (e-) above which a star counts as bright (~300 sigma of the sky).
BRIGHT_PEAK = 5000.0


def _cosmic(result):
    return (result.mask & bits.COSMIC) != 0


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """A calibrated light (electrons) with its truth: signal, cosmic rays, bright star cores."""
    out = tmp_path_factory.mktemp("night")
    truth = demo.make_night(out, preset="test", seed=2, **NIGHT)
    spec, raw = truth["spec"], truth["raw_dir"]
    by_type = {}
    for f in truth["frames"]:
        by_type.setdefault(f["type"], []).append(f)
    masters = out / "masters"
    bias, dark, flat = (masters / f"{k}.fits" for k in ("bias", "dark", "flat"))
    make_master_file("bias", [(raw / f["file"], 0) for f in by_type["bias"]], bias, COMBINE)
    make_master_file(
        "dark", [(raw / f["file"], 0) for f in by_type["dark"]], dark, COMBINE, bias=bias
    )
    t_dark = by_type["dark"][0]["exptime"]
    make_master_file(
        "flat",
        [(raw / f["file"], 0) for f in by_type["flat"]],
        flat,
        {**COMBINE, "method": "sigma_clip_median"},
        bias=bias,
        dark=dark,
        dark_scales=[f["exptime"] / t_dark for f in by_type["flat"]],
    )
    (light,) = by_type["light"]
    t = light["exptime"]
    path = calibrate_light(
        raw / light["file"],
        out,
        bias=bias,
        dark=dark,
        dark_scale=t / t_dark,
        flat=flat,
        gain=spec["gain"],
        read_noise=spec["read_noise"],
        saturation=spec["saturation"],
    )
    data, header, _, mask = read_product(path)
    assert header["BUNIT"] == "electron"
    signal = (demo.expected_electrons(truth, light) - truth["dark_rate"] * t) / truth["flat"]["V"]
    cosmic = truth["cosmics"][light["file"].rsplit(".", 1)[0]]

    # Bright-star cores: within 1 FWHM of stars whose noiseless peak is high, not saturated,
    # not touching a cosmic ray (L.A.Cosmic grows its flags by a pixel on purpose).
    stars, fwhm = truth["stars"], spec["fwhm"]
    dither = {k: light[k] for k in ("dx", "dy", "rot_deg")}
    x, y = demo.transform_positions(stars["x"], stars["y"], shape=data.shape, **dither)
    unit_peak = demo.render_stars((33, 33), [16.0], [16.0], [1.0], fwhm).max()
    peak = np.asarray(stars["flux_V"]) * t * unit_peak
    bright = (peak > BRIGHT_PEAK) & ~np.isin(stars["id"], light["saturated_star_ids"])
    yy, xx = np.indices(data.shape)
    core = np.zeros(data.shape, bool)
    for xi, yi in zip(x[bright], y[bright], strict=True):
        core |= (xx - xi) ** 2 + (yy - yi) ** 2 <= fwhm**2
    core &= (mask == 0) & ~ndimage.binary_dilation(cosmic, np.ones((3, 3), bool))

    result = clean_cosmics(data, mask, gain=1.0, read_noise=spec["read_noise"])
    return dict(
        data=data,
        mask=mask,
        signal=signal,
        cosmic=cosmic & (mask == 0),
        core=core,
        n_bright=int(bright.sum()),
        gain=spec["gain"],
        read_noise=spec["read_noise"],
        result=result,
    )


def test_true_cosmic_rays_are_flagged_and_bright_star_cores_spared(frame):
    result, cosmic, core = frame["result"], frame["cosmic"], frame["core"]
    assert result.ok and result.reason == "", result.detail
    flagged = _cosmic(result)
    completeness = (flagged & cosmic).sum() / cosmic.sum()
    false_core = (flagged & core).sum() / core.sum()
    assert cosmic.sum() > 200 and frame["n_bright"] >= 30 and core.sum() > 1000
    print(  # measured numbers, shown by pytest -rP
        f"cosmic rays: {(flagged & cosmic).sum()}/{cosmic.sum()} flagged ({completeness:.2%}); "
        f"bright-star cores: {(flagged & core).sum()}/{core.sum()} flagged ({false_core:.3%}) "
        f"around {frame['n_bright']} stars"
    )
    assert completeness >= 0.95, f"{completeness:.3f} of {cosmic.sum()} cosmic-ray pixels"
    assert false_core <= 0.001, f"{(flagged & core).sum()} of {core.sum()} core pixels"
    assert result.n_flagged == flagged.sum()
    assert result.fraction == pytest.approx(flagged.sum() / (frame["mask"] == 0).sum())


def test_plain_astroscrappy_noise_model_flags_bright_star_cores(frame):
    """Why ``star_noise`` exists: without it, bright unsaturated cores get flagged."""
    plain = clean_cosmics(
        frame["data"], frame["mask"], read_noise=frame["read_noise"], star_noise=0
    )
    assert plain.ok
    false_core = (_cosmic(plain) & frame["core"]).sum() / frame["core"].sum()
    print(f"plain noise model: {false_core:.2%} of {frame['core'].sum()} core pixels flagged")
    assert false_core > 0.005


def test_cleaned_values_are_close_to_the_truth(frame):
    result, signal = frame["result"], frame["signal"]
    hit = _cosmic(result) & frame["cosmic"]
    sigma = np.sqrt(signal[hit] + frame["read_noise"] ** 2)  # e-, noise of the true value
    before = np.abs(frame["data"][hit] - signal[hit]) / sigma
    after = np.abs(result.data[hit] - signal[hit]) / sigma
    print(
        f"|cleaned - truth| / sigma at {hit.sum()} hits: median {np.median(after):.2f}, "
        f"90th percentile {np.percentile(after, 90):.2f} (before: {np.median(before):.0f})"
    )
    assert np.median(before) > 20  # the cosmic rays were far off
    assert np.median(after) < 1.0
    assert np.percentile(after, 90) < 3.0  # the rest: hits on star cores (5x5 mean)
    # every other pixel is untouched
    rest = ~_cosmic(result)
    np.testing.assert_array_equal(result.data[rest], frame["data"][rest])
    assert result.data.dtype == np.float32


def test_adu_with_gain_gives_the_flags_of_electrons_with_gain_one(frame):
    """astroscrappy's units: data * gain is in electrons, read noise in electrons."""
    g, rn = frame["gain"], frame["read_noise"]
    electrons = frame["result"]
    adu_data = (frame["data"] / g).astype(np.float32)
    adu = clean_cosmics(adu_data, frame["mask"], gain=g, read_noise=rn)
    assert adu.ok
    assert (_cosmic(adu) ^ _cosmic(electrons)).sum() <= 0.01 * electrons.n_flagged
    np.testing.assert_allclose(adu.data * g, electrons.data, rtol=1e-5, atol=1e-3)
    # Ignoring the gain (ADU data with gain=1) changes the flags by far more than that, so
    # an implementation or caller mixing the units fails this test. (Electrons passed with
    # the ADU gain are absorbed: the measured noise then scales the noise model up.)
    wrong = clean_cosmics(adu_data, frame["mask"], gain=1.0, read_noise=rn)
    assert (_cosmic(wrong) ^ _cosmic(electrons)).sum() > 0.03 * electrons.n_flagged


def test_negative_sky_is_refused_not_cleaned(frame):
    import astroscrappy

    data, mask, rn = frame["data"], frame["mask"], frame["read_noise"]
    negative = data - 2 * np.median(data)
    # astroscrappy itself: the noise model sky + RN^2 < 0 is clipped, most pixels flagged
    flags, _ = astroscrappy.detect_cosmics(
        negative, inmask=mask != 0, gain=1.0, readnoise=rn, satlevel=np.inf
    )
    assert flags.mean() > 0.3
    result = clean_cosmics(negative, mask, read_noise=rn)
    assert not result.ok and result.reason == "negative_sky"
    assert "-2" in result.detail and "e-" in result.detail  # the sky level, in electrons
    assert result.n_flagged == 0 and not (result.mask & bits.COSMIC).any()
    np.testing.assert_array_equal(result.data, negative)


def test_sky_subtracted_frame_is_refused(frame):
    """A zero sky passes the sign check, but the noise is then 3x the model's read noise."""
    data, mask = frame["data"], frame["mask"]
    result = clean_cosmics(data - np.median(data), mask, read_noise=frame["read_noise"])
    assert not result.ok and result.reason == "noise_model", result.detail
    assert not (result.mask & bits.COSMIC).any()


def test_flagged_fraction_above_the_limit_is_refused(frame):
    data, mask = frame["data"], frame["mask"]
    n_flagged = frame["result"].n_flagged
    limit = 0.5 * n_flagged / (mask == 0).sum()
    result = clean_cosmics(data, mask, read_noise=frame["read_noise"], max_fraction=limit)
    assert not result.ok and result.reason == "cosmic_fraction"
    assert result.n_flagged == n_flagged and str(n_flagged) in result.detail
    np.testing.assert_array_equal(result.data, data)  # not cleaned
    np.testing.assert_array_equal(result.mask, mask)


def test_inputs_untouched_and_premasked_pixels_not_flagged(frame):
    data, mask, cosmic = frame["data"].copy(), frame["mask"].copy(), frame["cosmic"]
    events, n_events = ndimage.label(cosmic, np.ones((3, 3), bool))
    pre = np.isin(events, np.arange(1, n_events + 1, 3))  # every third hit is known bad
    mask[pre] |= bits.BAD
    ys, xs = np.nonzero(pre)
    data[ys[0], xs[0]] = np.nan
    mask[10, 20] |= bits.SATURATED
    data_in, mask_in = data.copy(), mask.copy()
    result = clean_cosmics(data, mask, read_noise=frame["read_noise"], saturation=9e4)
    assert result.ok
    np.testing.assert_array_equal(data, data_in)  # inputs not mutated
    np.testing.assert_array_equal(mask, mask_in)
    assert result.data is not data and result.mask is not mask
    flagged = _cosmic(result)
    assert not (flagged & pre).any()
    assert not flagged[6:15, 16:25].any()  # 4-pixel margin around a saturated pixel
    np.testing.assert_array_equal(result.mask & ~bits.COSMIC, mask_in)  # bits kept
    np.testing.assert_array_equal(result.data[pre], data_in[pre])  # NaN stays NaN
    # the other hits are still found (astroscrappy does not flag next to a masked pixel)
    others = cosmic & ~ndimage.binary_dilation(pre, np.ones((3, 3), bool))
    assert (flagged & others).sum() >= 0.95 * others.sum()
    assert result.mask.dtype == bits.MASK_DTYPE


def test_cosmic_rays_on_the_edge_are_flagged_and_cleaned():
    """astroscrappy leaves the outer 2 rows/columns alone; the padding covers them."""
    import astroscrappy

    rng = np.random.default_rng(3)
    sky, rn = 200.0, 5.0
    data = (sky + rng.normal(0, np.sqrt(sky + rn**2), (64, 64))).astype(np.float32)
    hits = [(0, 10), (1, 30), (63, 5), (20, 0), (40, 63), (0, 0), (62, 62), (63, 63), (30, 30)]
    for y, x in hits:
        data[y, x] += 2000.0
    truth = np.zeros(data.shape, bool)
    truth[tuple(np.transpose(hits))] = True
    mask = np.zeros(data.shape, bits.MASK_DTYPE)
    plain, _ = astroscrappy.detect_cosmics(data, gain=1.0, readnoise=rn, satlevel=np.inf)
    border = np.ones(data.shape, bool)
    border[2:-2, 2:-2] = False
    assert plain[30, 30] and not plain[truth & border].any()
    result = clean_cosmics(data, mask, read_noise=rn)
    flagged = _cosmic(result)
    assert flagged[truth].all()
    assert (flagged & ~truth).sum() <= 2
    assert np.all(np.abs(result.data[truth] - sky) < 5 * np.sqrt(sky + rn**2))


def test_bad_arguments():
    data = np.full((16, 16), 100.0, np.float32)
    mask = np.zeros(data.shape, bits.MASK_DTYPE)
    with pytest.raises(ValueError, match="shape"):
        clean_cosmics(data, mask[:8], read_noise=5.0)
    with pytest.raises(ValueError, match="gain"):
        clean_cosmics(data, mask, gain=0.0, read_noise=5.0)
    with pytest.raises(ValueError, match="read_noise"):
        clean_cosmics(data, mask, read_noise=float("nan"))
    result = clean_cosmics(data, mask | bits.NODATA, read_noise=5.0)
    assert not result.ok and result.reason == "no_valid_pixels"
