"""Cosmic rays: the injected ones of a calibrated demo frame are found and cleaned, bright
star cores are spared, units follow astroscrappy's convention, absurd frames are refused."""

import numpy as np
import pytest
from scipy import ndimage

from ccdflow import bits, demo
from ccdflow.cosmics import clean_cosmics
from ccdflow.io import read_product
from ccdflow.tasks import make_master_file
from conftest import COMBINE, calibrate_light

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


def test_hot_pixels_of_the_mask_are_not_cosmic_rays(frame):
    """A hot pixel left in a frame (a spike) carries bits.HOT from the master dark: it
    goes to astroscrappy's inmask, so it is neither flagged, nor "cleaned", nor counted
    in the cosmic-ray fraction. Without the bit the same spikes are flagged."""
    data, mask = frame["data"].copy(), frame["mask"].copy()
    rng = np.random.default_rng(4)
    free = (mask == 0) & ~ndimage.binary_dilation(frame["cosmic"] | frame["core"], iterations=3)
    ys, xs = np.nonzero(free[8:-8, 8:-8])
    pick = rng.choice(ys.size, 20, replace=False)
    ys, xs = ys[pick] + 8, xs[pick] + 8
    data[ys, xs] += 3000.0
    plain = clean_cosmics(data, mask, read_noise=frame["read_noise"])
    assert _cosmic(plain)[ys, xs].mean() >= 0.9
    mask[ys, xs] |= bits.HOT
    result = clean_cosmics(data, mask, read_noise=frame["read_noise"])
    assert not _cosmic(result)[ys, xs].any()
    np.testing.assert_array_equal(result.data[ys, xs], data[ys, xs])  # not "cleaned"
    assert (result.mask[ys, xs] == bits.HOT).all()
    # the fraction counts the pixels it could flag: the hot ones are neither
    n_valid = np.count_nonzero(mask == 0)
    assert result.fraction == pytest.approx(result.n_flagged / n_valid)
    assert result.n_flagged <= plain.n_flagged - 18


def test_defect_pixels_do_not_hide_the_cosmic_rays_next_to_them(frame):
    """A hot pixel next to a cosmic ray does not hide it: defect pixels are not in
    astroscrappy's inmask (which it grows by a pixel), they take their nearest valid
    neighbour's value; other bits (BAD) still hide their neighbours, as astroscrappy does."""
    data, mask, cosmic = frame["data"], frame["mask"], frame["cosmic"]
    ring = ndimage.binary_dilation(cosmic, np.ones((3, 3), bool)) & ~cosmic & (mask == 0)
    next_to = ring & (np.random.default_rng(8).random(mask.shape) < 0.2)
    hot = mask | np.where(next_to, bits.HOT, 0).astype(bits.MASK_DTYPE)
    bad = mask | np.where(next_to, bits.BAD, 0).astype(bits.MASK_DTYPE)
    rn = frame["read_noise"]
    with_hot = _cosmic(clean_cosmics(data, hot, read_noise=rn))
    with_bad = _cosmic(clean_cosmics(data, bad, read_noise=rn))
    hits = cosmic & ~next_to
    assert (with_hot & hits).sum() >= 0.95 * (frame["result"].mask & bits.COSMIC != 0)[hits].sum()
    assert (with_bad & hits).sum() < (with_hot & hits).sum()
    assert not (with_hot & next_to).any()


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


# --- tiled search (clean_cosmics(tiled=True), the default) ---------------------------------


def _synthetic(seed, shape=(384, 384), n_stars=30, n_events=40, n_faint=20, sky=150.0, rn=6.0):
    """A seeded frame in e- (sky, Gaussian stars of FWHM 3 px, Poisson and read noise) with
    cosmic-ray tracks like the demo's (1-6 px, 300-5000 e- a pixel; none within 6 px of a
    bright star) and ``n_faint`` faint ones (40-200 e- a pixel, about 3 to 15 times the sky
    noise: around L.A.Cosmic's threshold); returns (data, mask, pixels of the demo-like
    tracks, pixels of the faint ones, bright-star cores)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.indices(shape)
    ys, xs = rng.uniform(4, ny - 4, n_stars), rng.uniform(4, nx - 4, n_stars)
    peaks = 10 ** rng.uniform(2.5, 4.7, n_stars)  # e-: up to 5e4, well above the sky
    sigma = 3.0 / 2.3548
    signal = np.full(shape, sky)
    for y, x, p in zip(ys, xs, peaks, strict=True):
        signal += p * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    data = rng.poisson(signal) + rng.normal(0, rn, shape)
    bright = peaks > BRIGHT_PEAK
    near_star = np.zeros(shape, bool)
    core = np.zeros(shape, bool)
    for y, x in zip(ys[bright], xs[bright], strict=True):
        r2 = (yy - y) ** 2 + (xx - x) ** 2
        near_star |= r2 <= 6**2
        core |= r2 <= 3**2
    cosmic, faint = np.zeros(shape, bool), np.zeros(shape, bool)
    for i in range(n_events + n_faint):
        y0, x0 = rng.integers(0, ny), rng.integers(0, nx)
        angle, length = rng.uniform(0, 2 * np.pi), rng.integers(1, 7)
        step = max(abs(np.cos(angle)), abs(np.sin(angle)))
        k = np.arange(length)
        ty = y0 + np.rint(k * np.sin(angle) / step).astype(int)
        tx = x0 + np.rint(k * np.cos(angle) / step).astype(int)
        ok = (ty >= 0) & (ty < ny) & (tx >= 0) & (tx < nx)
        ty, tx = ty[ok], tx[ok]
        if near_star[ty, tx].any() or (cosmic | faint)[ty, tx].any():
            continue
        hit = cosmic if i < n_events else faint
        data[ty, tx] += rng.uniform(*((300, 5000) if i < n_events else (40, 200)), ty.size)
        hit[ty, tx] = True
    core &= ~ndimage.binary_dilation(cosmic | faint, np.ones((3, 3), bool))
    return data.astype(np.float32), np.zeros(shape, bits.MASK_DTYPE), cosmic, faint, core


def _agreement(a, b):
    """|A & B| / |A | B| of two flag images (1 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_tiled_flags_agree_with_the_whole_frame_and_find_the_cosmic_rays(seed):
    data, mask, cosmic, faint, core = _synthetic(seed)
    whole = clean_cosmics(data, mask, read_noise=6.0, tiled=False)
    tiled = clean_cosmics(data, mask, read_noise=6.0)
    assert whole.ok and tiled.ok, tiled.detail
    assert "whole frame" in whole.detail and " tiles (" in tiled.detail, tiled.detail
    a, b = _cosmic(whole), _cosmic(tiled)
    agreement = _agreement(a, b)
    recall = (b & cosmic).sum() / cosmic.sum()
    print(
        f"seed {seed}: {tiled.detail}\n  {b.sum()} tiled / {a.sum()} whole-frame flags, agreement "
        f"{agreement:.4f}; recall {recall:.4f} of {cosmic.sum()}; "
        f"{(b & core).sum()} of {core.sum()} bright-core pixels flagged; "
        f"{(b & faint).sum()} of {faint.sum()} faint-track pixels flagged"
    )
    assert cosmic.sum() > 100 and faint.sum() > 40 and core.sum() > 100
    assert agreement >= 0.995
    assert recall >= 0.98
    assert not (b & core).any()
    both = a & b
    np.testing.assert_array_equal(tiled.data[both], whole.data[both])
    np.testing.assert_array_equal(tiled.data[~b], data[~b])


def test_tiled_flags_agree_on_the_calibrated_demo_frame(frame):
    whole = clean_cosmics(
        frame["data"], frame["mask"], read_noise=frame["read_noise"], tiled=False
    )
    tiled = frame["result"]  # the default
    a, b = _cosmic(whole), _cosmic(tiled)
    print(f"demo frame: {b.sum()} tiled / {a.sum()} whole-frame flags")
    assert _agreement(a, b) >= 0.995
    assert (b & frame["cosmic"]).sum() >= 0.98 * frame["cosmic"].sum()
    assert (b & frame["core"]).sum() <= 0.001 * frame["core"].sum()


def test_candidates_hold_every_pixel_lacosmic_can_flag(monkeypatch):
    """The necessary condition of the tiled search, against astroscrappy's own statistic."""
    from astroscrappy import utils

    from ccdflow import cosmics

    data = _synthetic(21)[0]
    rng = np.random.default_rng(5)
    var = np.maximum(data, 0) + 36.0 + rng.uniform(0, 300, data.shape).astype(np.float32)
    var = var.astype(np.float32)
    lplus = utils.rebin(np.clip(utils.laplaceconvolve(utils.subsample(data)), 0, None))
    s = lplus / (2 * np.sqrt(np.maximum(utils.sepmedfilt7(var), 1e-5)))
    inner = np.zeros(data.shape, bool)
    inner[3:-3, 3:-3] = True
    np.testing.assert_allclose(cosmics._lplus(data)[inner], lplus[inner], rtol=1e-5, atol=1e-2)
    candidates = cosmics._candidates(data, var, cosmics._TILE_SAFETY * 4.5)
    must = inner & (s > 4.5)
    assert must.sum() > 100
    assert not (must & ~candidates).any()
    assert candidates.sum() < 1.2 * (inner & (s > cosmics._TILE_SAFETY * 4.5)).sum() + 5
    monkeypatch.setattr(cosmics, "_CHUNK", 7)  # the exact test in chunks: the same pixels
    np.testing.assert_array_equal(
        cosmics._candidates(data, var, cosmics._TILE_SAFETY * 4.5), candidates
    )


def test_small_frames_and_frames_without_candidates():
    rng = np.random.default_rng(8)
    mask = np.zeros((20, 40), bits.MASK_DTYPE)
    data = (100.0 + rng.normal(0, 10.0, mask.shape)).astype(np.float32)
    data[10, 20] += 1500.0
    small = clean_cosmics(data, mask, read_noise=5.0)  # too small for tiles
    assert small.ok and "whole frame" in small.detail and _cosmic(small)[10, 20]
    flat = np.full((96, 96), 100.0, np.float32)  # nothing to search
    mask = np.zeros(flat.shape, bits.MASK_DTYPE)
    result = clean_cosmics(flat, mask, read_noise=5.0)
    assert result.ok and result.n_flagged == 0 and "on 0 tiles" in result.detail
    np.testing.assert_array_equal(result.data, flat)


def test_reflect_pad_and_saturated_margin_match_numpy_and_scipy():
    from ccdflow import cosmics

    rng = np.random.default_rng(0)
    for shape in [(7, 9), (16, 5), (40, 33)]:
        a = rng.normal(size=shape).astype(np.float32)
        for width in (1, 2, 4):
            np.testing.assert_array_equal(
                cosmics._reflect_pad(a, width), np.pad(a, width, mode="reflect")
            )
    for n_saturated in (12, 2):  # many rows and columns (whole-array filters), or a few
        mask = np.zeros((50, 60), bits.MASK_DTYPE)
        mask[rng.integers(0, 50, n_saturated), rng.integers(0, 60, n_saturated)] = bits.SATURATED
        mask[0, 0] = mask[49, 59] = bits.SATURATED | bits.BAD
        mask[20, 20] = bits.BAD
        mask_in = mask.copy()
        expected = ndimage.binary_dilation(
            (mask & bits.SATURATED) != 0, np.ones((5, 5), bool), iterations=2
        )
        np.testing.assert_array_equal(cosmics._saturated_margin(mask), expected)
        np.testing.assert_array_equal(mask, mask_in)
