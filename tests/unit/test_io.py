"""The astropy-free FITS path: same files, same values, or a fallback to astropy."""

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import bits, io, provenance


def _product(tmp_path, fast_header):
    rng = np.random.default_rng(2)
    data = rng.normal(100, 5, (20, 30)).astype(np.float32)
    unc = np.full(data.shape, 5, np.float32)
    mask = np.zeros(data.shape, bits.MASK_DTYPE)
    mask[3, 4] = bits.COSMIC | bits.SATURATED
    raw = tmp_path / "raw.fits"
    header = fits.Header()
    header["OBJECT"] = ("M51 with a long name", "target")
    header["FILTER"] = "g'"
    header["EXPTIME"] = 200.0
    header["NOTE"] = "x" * 100  # continued over several cards
    fits.PrimaryHDU((data * 10).astype(np.uint16), header=header).writeto(raw, overwrite=True)
    _, h, _ = io.read_frame(raw, fast=fast_header)
    provenance.stamp(h, "CALIBRATED")
    provenance.add_step(h, "BIASCORR", "bias_1x1_30x20.fits")
    return data, unc, mask, h


def test_fast_and_astropy_paths_write_the_same_file(tmp_path):
    data, unc, mask, h_fast = _product(tmp_path, fast_header=True)
    _, _, _, h_astropy = _product(tmp_path, fast_header=False)
    h_fast["DATE-RED"] = h_astropy["DATE-RED"] = "2026-01-01T00:00:00"
    a, b = tmp_path / "fast.fits", tmp_path / "astropy.fits"
    io.write_product(a, data, h_fast, unc, mask, "electron")
    io.write_hdulist(b, io.ccd_hdulist(data, h_astropy, unc, mask, "electron"))
    assert fits.FITSDiff(str(a), str(b)).identical
    with fits.open(a) as hdul:
        hdul.verify("exception")  # valid FITS for astropy
        assert hdul[0].header["NOTE"] == "x" * 100
        assert hdul[0].header["FILTER"] == "g'"


@pytest.mark.parametrize("fast", [True, False])
def test_read_product_round_trip(tmp_path, fast):
    data, unc, mask, header = _product(tmp_path, fast_header=True)
    path = tmp_path / "p.fits"
    io.write_product(path, data, header, unc, mask, "electron")
    d, h, u, m = io.read_product(path, fast=fast)
    np.testing.assert_array_equal(d, data)
    np.testing.assert_array_equal(u, unc)
    np.testing.assert_array_equal(m, mask)
    assert h["BIASCORR"] == "bias_1x1_30x20.fits" and h["BUNIT"] == "electron"


def test_compressed_raw_falls_back_to_astropy(tmp_path):
    data = np.arange(200, dtype=np.uint16).reshape(10, 20)
    path = tmp_path / "c.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(path)
    d, _, mask = io.read_frame(path, fast=True)
    np.testing.assert_array_equal(d, data)
    assert not mask.any()
