"""The astropy-free FITS path: same files, same values, or a fallback to astropy."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

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
    for key in ("BZERO", "BSCALE", "BLANK"):  # as calibration does: not the product's
        h.remove(key, ignore_missing=True)
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
    io._fast_product_parts(data, h_fast, unc, mask, "electron")  # the fast path was taken
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


def test_the_row_reader_scales_like_astropy_and_reads_blank_as_nan(tmp_path):
    # One banded reader for raw frames (BZERO/BSCALE, BLANK) and mask planes (integers).
    rng = np.random.default_rng(4)
    raw = rng.integers(-30000, 30000, (40, 25)).astype(np.int16)
    raw[5, 7] = raw[30, 2] = -32768
    header = fits.Header()
    header["BSCALE"], header["BZERO"], header["BLANK"] = 2.0, 1000.0, -32768
    mask = np.zeros(raw.shape, bits.MASK_DTYPE)
    mask[1, 1] = bits.COSMIC | bits.NODATA
    path = tmp_path / "scaled.fits"
    image = fits.PrimaryHDU(raw, header=header, do_not_scale_image_data=True)
    fits.HDUList([image, fits.ImageHDU(mask, name="MASK")]).writeto(path)
    with fits.open(path) as hdul:
        expected = hdul[0].data.astype(np.float32)  # astropy: scaled, BLANK -> NaN
    with fits.open(path, lazy_load_hdus=True) as hdul:
        rows = io.ImageRows(path, hdul, 0, integers=False)
        bits_rows = io.ImageRows(path, hdul, 1)
    got = np.concatenate([rows.rows(y, min(y + 7, 40)) for y in range(0, 40, 7)])
    assert np.isnan(got[5, 7]) and np.isnan(got[30, 2]) and np.isnan(got).sum() == 2
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(rows.rows(10, 12, slice(3, 9)), expected[10:12, 3:9])
    np.testing.assert_array_equal(rows.sample(4, 3), expected[::4, ::3])
    marks = bits_rows.rows(0, 40)
    assert marks.dtype.kind == "i" and marks[1, 1] == bits.COSMIC | bits.NODATA


def test_the_row_reader_reads_a_compressed_frame_once_scaled(tmp_path):
    raw = np.random.default_rng(5).integers(0, 65535, (30, 20)).astype(np.uint16)
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(raw)]).writeto(path)
    with fits.open(path, lazy_load_hdus=True) as hdul:
        rows = io.ImageRows(path, hdul, 1, integers=False)
    np.testing.assert_array_equal(rows.rows(0, 30), raw.astype(np.float32))


def test_the_row_reader_names_a_truncated_file(tmp_path):
    path = tmp_path / "short.fits"
    fits.PrimaryHDU(np.zeros((100, 100), np.float32)).writeto(path)
    with open(path, "r+b") as fh:
        fh.truncate(2880 + 100 * 100 * 2)  # half the data
    with (
        pytest.warns(AstropyUserWarning, match="truncated"),
        fits.open(path, lazy_load_hdus=True) as hdul,
    ):
        rows = io.ImageRows(path, hdul, 0)
    assert rows.rows(0, 10).shape == (10, 100)
    with pytest.raises(io.FrameError, match=r"short\.fits") as err:
        rows.rows(40, 60)
    assert err.value.reason == "truncated"


def _scaled_frame(path, table=False):
    """An int16 frame with BSCALE, BZERO and BLANK, a MASK extension (and a table
    extension); astropy's values of both."""
    rng = np.random.default_rng(6)
    raw = rng.integers(-30000, 30000, (40, 25)).astype(np.int16)
    raw[5, 7] = -32768
    header = fits.Header()
    header["BSCALE"], header["BZERO"], header["BLANK"] = 2.0, 1000.0, -32768
    header["EXPTIME"] = (30.0, "[s]")
    mask = np.zeros(raw.shape, bits.MASK_DTYPE)
    mask[1, 1] = bits.COSMIC
    image = fits.PrimaryHDU(raw, header=header, do_not_scale_image_data=True)
    hdus = [image, fits.ImageHDU(mask, name="MASK")]
    if table:
        hdus.append(fits.BinTableHDU.from_columns([fits.Column("x", "E", array=[1.0])]))
    fits.HDUList(hdus).writeto(path)
    with fits.open(path) as hdul:
        return hdul[0].data.astype(np.float32), mask


@pytest.mark.parametrize("layout", ["plain", "compressed", "with_table"])
def test_image_hdus_reads_the_values_astropy_reads_with_or_without_astropy(tmp_path, layout):
    # The master combine and the stack open their inputs through `image_hdus`: a plain
    # file is parsed without astropy, anything else by astropy; the values are the same.
    path = tmp_path / ("frame.fits.fz" if layout == "compressed" else "frame.fits")
    image_name = "PRIMARY"
    if layout == "compressed":
        raw = np.random.default_rng(7).integers(0, 65535, (40, 25)).astype(np.uint16)
        expected, mask = raw.astype(np.float32), np.zeros(raw.shape, bits.MASK_DTYPE)
        mask[1, 1] = bits.COSMIC
        image = fits.CompImageHDU(raw, header=fits.Header([("EXPTIME", 30.0, "[s]")]))
        fits.HDUList([fits.PrimaryHDU(), image, fits.ImageHDU(mask, name="MASK")]).writeto(path)
        image_name = "COMPRESSED_IMAGE"
    else:
        expected, mask = _scaled_frame(path, table=layout == "with_table")
    with io.image_hdus(path) as hdus:
        names = [h.name for h in hdus]
        image = hdus[names.index(image_name)]
        rows = image.rows(integers=False)
        marks = hdus[names.index("MASK")].rows()
        fast = isinstance(image.header, io.Header)
    assert fast == (layout == "plain")  # astropy only where the fast parser declines
    got = rows.rows(0, 40)
    assert np.isnan(got).sum() == (1 if layout != "compressed" else 0)  # BLANK -> NaN
    np.testing.assert_array_equal(got, expected)
    assert rows.header["EXPTIME"] == 30.0
    np.testing.assert_array_equal(marks.rows(0, 40), mask)


def test_a_product_with_a_coverage_plane_is_written_as_astropy_writes_it(tmp_path):
    # The stack's file (data, UNCERT, MASK, COVERAGE) is written without astropy when its
    # header is a `Header`: the same bytes as astropy's, int16 coverage included.
    data, unc, mask, h_fast = _product(tmp_path, fast_header=True)
    _, _, _, h_astropy = _product(tmp_path, fast_header=False)
    h_fast["DATE-RED"] = h_astropy["DATE-RED"] = "2026-01-01T00:00:00"
    coverage = np.arange(data.size, dtype=np.int16).reshape(data.shape) - 300
    extra = [("COVERAGE", coverage)]
    a, b = tmp_path / "fast.fits", tmp_path / "astropy.fits"
    io.write_product(a, data, h_fast, unc, mask, "electron", extra=extra)
    io.write_product(b, data, h_astropy, unc, mask, "electron", extra=extra)
    parts = io._fast_product_parts(data, h_fast, unc, mask, "electron", extra)
    assert b"".join(bytes(p) for p in parts) == a.read_bytes()  # written without astropy
    assert a.read_bytes() == b.read_bytes()
    with fits.open(a) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "UNCERT", "MASK", "COVERAGE"]
        assert hdul["COVERAGE"].data.dtype == np.dtype(">i2")
        np.testing.assert_array_equal(hdul["COVERAGE"].data, coverage)
