"""Illumination model: a flat with a known low-order shape is recovered within its noise,
defects do not pull the fit, the residual says when the degree is too low, and the
sky/dome combination has the sky's shape with the dome's pixel structure."""

import numpy as np
import pytest

from ccdflow.illumination import combine_sky_dome, fit_illumination

SHAPE = (256, 320)
NOISE = 0.01  # pixel-to-pixel rms of the flats (response and photon noise)


def _coords():
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(float)
    return (x - (SHAPE[1] - 1) / 2) / ((SHAPE[1] - 1) / 2), (y - (SHAPE[0] - 1) / 2) / (
        (SHAPE[0] - 1) / 2
    )


def _vignetting(u, v):
    """A known cubic: centred fall-off of 15 % to the corners, a tilt and a cubic term."""
    return 1 - 0.08 * (u**2 + v**2) + 0.03 * u - 0.02 * v + 0.01 * u**3


def test_known_shape_recovered_within_noise():
    rng = np.random.default_rng(1)
    u, v = _coords()
    truth = _vignetting(u, v)
    flat = truth * rng.normal(1, NOISE, SHAPE)
    flat[:, 40] = 0.05  # a dead column and a dead corner, masked
    flat[:48, -48:] = 0.05
    mask = np.zeros(SHAPE, np.uint16)
    mask[:, 40] = mask[:48, -48:] = 1
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    flat[np.hypot(x - 200, y - 100) < 24] *= 0.92  # a dust shadow, not masked: clipped
    flat.flat[rng.choice(flat.size, 100, replace=False)] = 5.0  # hot pixels, not masked
    fit = fit_illumination(flat, mask, degree=3)
    assert fit.model.shape == SHAPE and fit.model.dtype == np.float32
    assert np.abs(fit.model - truth).max() < 0.2 * NOISE  # within its noise, everywhere
    assert fit.residual_rms == pytest.approx(NOISE, rel=0.05)
    assert fit.binned_residual_rms < 0.2 * NOISE
    assert fit.degree == 3 and len(fit.coefficients) == 10
    assert fit.summary()["n_blocks"] == 16 * 20 - 9  # the masked corner has no data
    assert 0 < fit.n_rejected < 20  # the blocks of the dust shadow


def test_too_low_degree_shows_in_the_residual():
    u, v = _coords()
    flat = _vignetting(u, v).astype(np.float32)
    assert fit_illumination(flat, degree=3).binned_residual_rms < 1e-4
    assert fit_illumination(flat, degree=1).binned_residual_rms > 0.01


def test_sky_shape_with_dome_pixels():
    rng = np.random.default_rng(2)
    u, v = _coords()
    pixels = rng.normal(1, NOISE, SHAPE)  # the detector's pixel-to-pixel response
    sky_shape = _vignetting(u, v)
    dome = (1.2 + 0.1 * u + 0.05 * u * v) * pixels  # lamp: other shape, same pixels
    sky = 0.8 * sky_shape * pixels * rng.normal(1, 0.02, SHAPE)  # fewer counts: noisier
    flat, info = combine_sky_dome(dome, sky)
    truth = sky_shape * pixels
    truth /= np.median(truth[64:192, 80:240])
    np.testing.assert_allclose(flat, truth, rtol=0.2 * NOISE)
    # Neither flat alone would do: the dome has the wrong shape, the sky the extra noise.
    assert np.abs(dome / np.median(dome) - truth).max() > 10 * NOISE
    assert np.std(sky / np.median(sky) - truth) > NOISE
    assert set(info) == {"dome", "sky"} and info["sky"]["degree"] == 3


def test_refuses_a_fit_it_cannot_make():
    with pytest.raises(ValueError, match="degree"):
        fit_illumination(np.ones(SHAPE), degree=9)
    with pytest.raises(ValueError, match="too few"):
        fit_illumination(np.ones((32, 32)), degree=3, bin=16)


def _master(path, data, kind_card=None):
    """A master flat file as make_master_file writes it (data, UNCERT, MASK)."""
    from ccdflow import io, provenance

    header = io.Header()
    provenance.stamp(header, "MASTER_FLAT")
    header["CCDSETUP"] = ("1x1_320x256", "setup")
    if kind_card:
        header["CALFKIND"] = (kind_card, "part")
    unc = np.full(data.shape, 0.001, np.float32)
    io.write_product(path, data.astype(np.float32), header, unc, np.zeros(data.shape, np.uint16))
    return path


def test_combined_flat_file_has_the_sky_shape_and_the_dome_pixels(tmp_path):
    """Sky flat: a known smooth shape, few counts (2000 e-: 2.2 % noise per pixel); dome
    flat: another smooth shape (the lamp's tilt), 1e6 e- (0.1 %); both see the same
    pixel pattern. The combination equals shape x pattern within 0.3 % rms (dome noise plus
    the fits), several times better than either flat alone."""
    from astropy.io import fits

    from ccdflow import tasks

    rng = np.random.default_rng(5)
    u, v = _coords()
    pixels = rng.normal(1, NOISE, SHAPE)
    shape = 1 - 0.08 * (u**2 + v**2) + 0.03 * u - 0.02 * v  # vignetting, quadratic
    lamp = 1 + 0.10 * u - 0.06 * v  # the dome lamp's tilt: shape x lamp is cubic
    sky = rng.poisson(2000 * shape * pixels) / 2000
    dome = rng.normal(1, 1e-3, SHAPE) * shape * lamp * pixels
    truth = shape * pixels
    truth /= np.median(truth[64:192, 80:240])
    sky_path = _master(tmp_path / "flat_s_V_sky.fits", sky, "sky")
    dome_path = _master(tmp_path / "flat_s_V_dome.fits", 1.3 * dome, "dome")
    out, record = tmp_path / "flat_s_V.fits", tmp_path / "flat_s_V.json"
    cfg = {"enabled": True, "degree": 3, "bin": 16}
    tasks.combine_flat_file(
        sky_path, dome_path, out, record, illumination=cfg, identity={"CALFILT": "V"}
    )
    with fits.open(out) as hdul:
        flat, header = hdul[0].data.astype(float), hdul[0].header
        assert [h.name for h in hdul] == ["PRIMARY", "UNCERT", "MASK", "ILLUM"]
        model = hdul["ILLUM"].data

    def rms(a):
        a = a / np.median(a[64:192, 80:240])
        return float(np.std(a / truth - 1))

    assert rms(flat) < 0.003
    assert rms(sky) > 5 * rms(flat) and rms(dome) > 10 * rms(flat)  # neither alone does
    assert np.median(flat[64:192, 80:240]) == pytest.approx(1, abs=1e-6)  # as master flats
    centre = (slice(64, 192), slice(80, 240))
    # its model is the sky's shape within a fifth of the sky flat's pixel noise (2.4 %)
    np.testing.assert_allclose(
        model / np.median(model[centre]), shape / np.median(shape[centre]), rtol=5e-3
    )
    assert (header["ILLSKY"], header["ILLDOME"]) == (sky_path.name, dome_path.name)
    assert header["CALFILT"] == "V" and "CALFKIND" not in header
    assert header["ILLDEG"] == 3 and header["ILLRMS"] == pytest.approx(NOISE, rel=0.2)
    import json

    rec = json.loads(record.read_text())
    assert rec["combination"]["sky"] == "flat_s_V_sky" and rec["frames"] == []
    assert rec["illumination"]["residual_rms"] == pytest.approx(NOISE, rel=0.2)
    assert len(rec["illumination"]["coefficients"]) == 10
    table = tmp_path / "calibration.tsv"
    tasks.calibration_table([record], table)
    lines = [line.split("\t") for line in table.read_text().splitlines()]
    row = dict(zip(lines[0], lines[1], strict=True))
    assert (row["master"], row["status"], row["illum_degree"]) == ("flat_s_V", "combined", "3")
    assert float(row["illum_residual_rms"]) == pytest.approx(NOISE, rel=0.2)
