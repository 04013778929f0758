"""The real M51 night (QSI 532, MaxIm DL) reduced with configuration only.

The calibrated frames are compared with an independent, straightforward numpy
reduction of the same raw files written here: same combine method (3-sigma clip around
the median with a MAD spread, mean for bias/dark, median for the flat), same dark
scaling (300 s -> 200 s), same flat normalisation.
"""

import warnings

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import bits
from conftest import REPO, read_tsv, snakemake

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAMERA = REPO / "config" / "cameras" / "qsi532_maxim_m51.yaml"
SATURATION = 64000.0
GAIN = 2.4000000953674316  # EGAIN of the files


@pytest.fixture(scope="module")
def m51_run(m51_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("m51")
    snakemake(work, configfiles=[CAMERA], config={"raw_dir": m51_dir})
    return work


def _raw(path):
    with fits.open(path) as hdul:
        return hdul[0].data.astype(np.float32), hdul[0].header


def _clip(stack, bad, final):
    """Reference sigma clip: median centre, winsorized spread, 3 sigma, up to 5 passes."""
    values = np.where(bad, np.nan, stack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pixels with every value masked
        for _ in range(5):
            centre = np.nanmedian(values, axis=0)
            spread = _winsorized(values, centre)
            out = np.abs(values - centre) > np.float32(3) * spread
            if not out.any():
                break
            values = np.where(out, np.nan, values)
        combined = final(values, axis=0)
    return np.where(np.isfinite(combined), combined, np.float32(0))


def _winsorized(values, centre):
    """Spread: MAD start (sample std where it is 0), then 5 rounds of clamping to
    centre +- 1.5 sigma and 1.134 x the standard deviation of the clamped values."""
    mad = np.float32(1.482602218505602) * np.nanmedian(np.abs(values - centre), axis=0)
    sigma = np.where(mad > 0, mad, np.nanstd(values, axis=0, ddof=1))
    for _ in range(5):
        clamped = np.clip(values, centre - 1.5 * sigma, centre + 1.5 * sigma)
        new = np.float32(1.134) * np.nanstd(clamped, axis=0, ddof=1)
        sigma = np.where(new > 0, new, sigma)
    return sigma


def _reference(m51_dir):
    """Straightforward numpy reduction of the night, in float32 like the pipeline (the
    clip decisions of a 3-frame MAD clip are sensitive to the last bit)."""
    bias_raw = np.array([_raw(m51_dir / f"bias{i}.fit")[0] for i in (1, 2, 3)])
    bias = _clip(bias_raw, bias_raw >= SATURATION, np.nanmean)
    dark_raw = np.array([_raw(m51_dir / f"dark{i}.fit")[0] for i in (1, 2, 3)])
    dark = _clip(dark_raw - bias, dark_raw >= SATURATION, np.nanmean)
    t_dark = 300.0
    flats, bad = [], []
    ny, nx = bias.shape
    centre = (slice(ny // 4, ny - ny // 4), slice(nx // 4, nx - nx // 4))
    for i in (1, 2, 3):
        raw, header = _raw(m51_dir / f"twiflat_I{i}.fit")
        f = raw - bias - dark * np.float32(header["EXPTIME"] / t_dark)
        flats.append(f / np.median(f[centre]))
        bad.append(raw >= SATURATION)
    flat = _clip(np.array(flats), np.array(bad), np.nanmedian)
    flat = flat / np.median(flat[centre])
    flat[~(flat >= 0.1)] = np.float32(1)
    lights = {}
    for i in range(1, 19):
        raw, header = _raw(m51_dir / f"M51_I_{i:03d}.fit")
        assert header["EXPTIME"] == 200.0
        lights[f"M51_I_{i:03d}"] = (
            (raw - bias - dark * np.float32(200 / t_dark)) * np.float32(GAIN) / flat
        )
    return bias, dark, flat, lights


def test_inventory_classifies_the_night(m51_run):
    frames = read_tsv(m51_run / "results/index/frames.tsv")
    counts = {}
    for f in frames:
        counts[f["imagetyp"]] = counts.get(f["imagetyp"], 0) + 1
    assert counts == {"bias": 3, "dark": 3, "flat": 3, "light": 18}
    assert read_tsv(m51_run / "results/index/rejected.tsv") == []
    lights = [f for f in frames if f["imagetyp"] == "light"]
    # OBJECT is blank in the headers: the name comes from the filename rule.
    assert {f["group"] for f in lights} == {"M51_I_200"}
    # Closed-shutter frames carry FILTER = 'V' but are not tied to a filter.
    assert {f["filter"] for f in frames if f["imagetyp"] in ("bias", "dark")} == {""}


def test_masters_and_provenance(m51_run):
    masters = sorted(p.name for p in (m51_run / "results/masters").glob("*.fits"))
    assert masters == [
        "bias_2x2_1092x736.fits",
        "bpm_2x2_1092x736.fits",
        "dark_2x2_1092x736_300s.fits",
        "flat_2x2_1092x736_I.fits",
    ]
    bpm = fits.getheader(m51_run / "results/masters/bpm_2x2_1092x736.fits")
    counts = {k: bpm[k] for k in ("NHOT", "NDEAD", "NBADCOL", "NFLATLOW", "NBADPIX")}
    print(f"M51 bad pixels of {736 * 1092}: {counts}")
    # the QSI's warm pixels (300 s darks): ~2 % above 5 robust sigma of the dark; its flat
    # has no dead pixel or bad column
    assert 0.005 < counts["NHOT"] / (736 * 1092) < 0.05
    assert counts["NBADPIX"] == counts["NHOT"] + counts["NDEAD"] + counts["NBADCOL"]
    for i in range(1, 19):
        h = fits.getheader(m51_run / f"results/calibrated/M51_I_{i:03d}.fits")
        assert h["BIASCORR"] == "bias_2x2_1092x736.fits"
        assert h["DARKCORR"] == "dark_2x2_1092x736_300s.fits"
        assert h["DARKEXP"] == 300.0
        assert h["DARKSCAL"] == pytest.approx(200 / 300, abs=1e-6)
        assert h["FLATCORR"] == "flat_2x2_1092x736_I.fits"
        assert h["RAWFILE"] == f"M51_I_{i:03d}.fit"
        assert h["BUNIT"] == "electron"
        assert h["PIPEVER"]
        mask = fits.getdata(m51_run / f"results/calibrated/M51_I_{i:03d}.fits", "MASK")
        hot = fits.getdata(m51_run / "results/masters/bpm_2x2_1092x736.fits") & bits.HOT
        assert ((mask & bits.HOT) == hot).all()  # every frame carries its dark's HOT bits


def test_calibrated_frames_match_independent_reduction(m51_run, m51_dir):
    bias, dark, flat, lights = _reference(m51_dir)
    with fits.open(m51_run / "results/masters/bias_2x2_1092x736.fits") as h:
        np.testing.assert_allclose(h[0].data, bias, rtol=0, atol=1e-3)
    with fits.open(m51_run / "results/masters/dark_2x2_1092x736_300s.fits") as h:
        np.testing.assert_allclose(h[0].data, dark, rtol=1e-6, atol=2e-3)
    with fits.open(m51_run / "results/masters/flat_2x2_1092x736_I.fits") as h:
        np.testing.assert_allclose(h[0].data, flat, rtol=1e-5, atol=1e-6)
    for name, ref in lights.items():
        with fits.open(m51_run / f"results/calibrated/{name}.fits") as h:
            data = h[0].data
            assert h[0].header["BITPIX"] == -32  # float32 on disk
            assert h["UNCERT"].data.shape == data.shape
            assert h["MASK"].data.shape == data.shape
            # The calibrated product is also cleaned of cosmic rays: those pixels (COSMIC
            # bit) hold astroscrappy's clean values; every other pixel is the reduction's,
            # to float32 precision (values up to ~1.5e5 e-).
            cosmic = (h["MASK"].data & bits.COSMIC) != 0
            assert 0 < cosmic.mean() < 0.01
            np.testing.assert_allclose(data[~cosmic], ref[~cosmic], rtol=2e-6, atol=5e-3)
            assert np.mean(data[cosmic] < ref[cosmic]) > 0.9  # cleaned hits are lower


def test_detector_measured_from_pairs_beside_the_header(m51_run):
    # The lecture's photon transfer on this night gives about 1.3 e-/ADU against the
    # header's EGAIN = 2.4: detector.json reports both and warns.
    import json

    setups = json.loads((m51_run / "results/qc/detector.json").read_text())["setups"]
    (entry,) = setups.values()
    assert entry["header"]["gain"] == pytest.approx(2.4)
    assert 1.2 < entry["gain"] < 1.45 and 0 < entry["gain_err"] < 0.05
    assert entry["n_bias_pairs"] == 1 and entry["n_flat_pairs"] == 1
    assert 10 < entry["read_noise_adu"] < 15  # ADU, from the bias pair
    assert entry["read_noise_e"] == pytest.approx(entry["read_noise_adu"] * entry["gain"])
    assert any("gain" in w and "2.4" in w for w in entry["warnings"])


def test_every_calibration_frame_passes_its_gates_with_few_outliers(m51_run):
    # Real frames: three biases, darks and twilight flats, all combined. Their outlier
    # fractions against the rest of their group (0 for the biases and flats, 0.1 % for
    # the 300 s darks: cosmic rays and hot pixels) are far below the 2 % gate.
    rows = read_tsv(m51_run / "results/qc/calibration.tsv")
    assert len(rows) == 9
    assert {r["status"] for r in rows} == {"ok"}, [r for r in rows if r["status"] != "ok"]
    fractions = {r["frame"]: float(r["outlier_fraction"]) for r in rows}
    assert max(fractions.values()) < 0.005, fractions
