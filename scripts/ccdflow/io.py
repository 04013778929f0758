"""Reading raw frames and writing products.

Raw frames: any 2-D integer or float FITS image (BZERO/BSCALE, gzip, tile-compressed
``.fz``, the first HDU that holds a 2-D image), returned as float32 with a mask of
non-finite pixels. Products: the ``CCDData`` layout (primary = data, ``UNCERT`` =
standard deviation, ``MASK`` = data-quality bits), written atomically so a product is
never half-written at its final path.
"""

__all__ = [
    "FrameError",
    "ccd_hdulist",
    "quick_header",
    "read_frame",
    "read_product",
    "write_hdulist",
    "write_product",
]

import os
import tempfile
from pathlib import Path

import numpy as np

from ccdflow import bits

_BLOCK = 2880
_CARD = 80


class FrameError(Exception):
    """A raw frame that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason, detail=""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


def _parse_value(text):
    """Value of a FITS card's value field (the part after ``= ``), or None."""
    text = text.strip()
    if text.startswith("'"):
        # A string: '' inside it is a literal quote; the closing quote ends it.
        out, i = [], 1
        while i < len(text):
            if text[i] == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(text[i])
            i += 1
        return "".join(out).rstrip()
    value = text.split("/", 1)[0].strip()
    if value in ("T", "F"):
        return value == "T"
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value.replace("D", "E").replace("d", "e"))
    except ValueError:
        return value


def _fast_primary_header(path):
    """Parse the primary header of an uncompressed FITS file without astropy.

    Returns ``(header_dict, header_bytes)`` or None if the file does not look like FITS;
    raises :class:`FrameError` (``truncated``) for a FITS file cut inside its header.
    Only the cards needed for classification are kept (all keyword = value cards).
    """
    cards = {}
    nbytes = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            if nbytes == 0 and not block.startswith(b"SIMPLE  ="):
                return None
            if len(block) < _BLOCK:  # FITS, but cut inside the header: half-copied
                raise FrameError(
                    path, "truncated", f"header ends after {nbytes + len(block)} bytes"
                )
            nbytes += _BLOCK
            for i in range(0, _BLOCK, _CARD):
                card = block[i : i + _CARD].decode("ascii", "replace")
                key = card[:8].rstrip()
                if key == "END":
                    return cards, nbytes
                if card[8:10] == "= " and key not in cards:
                    cards[key] = _parse_value(card[10:])
            if nbytes > 1000 * _BLOCK:  # no END in 2.8 MB: not a sane header
                return None


def _data_bytes(header):
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 0:
        return 0
    n = abs(int(header["BITPIX"])) // 8
    for i in range(1, naxis + 1):
        n *= int(header[f"NAXIS{i}"])
    return n


def quick_header(path):
    """Header of the image a raw frame holds, as a dict, cheaply, with integrity checks.

    Plain FITS files are parsed directly (a few microseconds per card, no astropy);
    compressed or multi-extension files go through ``astropy.io.fits``.

    Returns
    -------
    dict
        Header keywords of the first HDU holding a 2-D image, plus ``'_SHAPE'`` =
        ``(ny, nx)`` and ``'_HDU'`` = index of that HDU.

    Raises
    ------
    FrameError
        With reason ``unreadable`` (not FITS), ``truncated`` (fewer bytes than the
        header promises), or ``no_image`` (no 2-D image HDU).
    """
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith((".gz", ".fz", ".bz2"))):
        parsed = _fast_primary_header(path)
        if parsed is None:
            raise FrameError(path, "unreadable", "not a FITS file (no SIMPLE card / no END)")
        header, hbytes = parsed
        if int(header.get("NAXIS", 0) or 0) == 2:
            need = hbytes + _data_bytes(header)
            size = path.stat().st_size
            if size < need:
                raise FrameError(path, "truncated", f"{size} of {need} bytes present")
            header["_SHAPE"] = (int(header["NAXIS2"]), int(header["NAXIS1"]))
            header["_HDU"] = 0
            return header
    return _astropy_header(path)


def _astropy_header(path):
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdul.verify("silentfix+ignore")
            for index, hdu in enumerate(hdul):
                if hdu.is_image and hdu.header.get("NAXIS", 0) == 2 and hdu.data is not None:
                    header = {k: v for k, v in hdu.header.items() if k not in ("COMMENT", "")}
                    if index > 0:  # keep primary cards the extension does not repeat
                        for k, v in hdul[0].header.items():
                            header.setdefault(k, v)
                    header["_SHAPE"] = tuple(int(s) for s in hdu.data.shape)
                    header["_HDU"] = index
                    return header
    except FrameError:
        raise
    except Exception as exc:  # astropy raises many types for broken files
        reason = "truncated" if "truncat" in str(exc).lower() else "unreadable"
        raise FrameError(path, reason, f"{type(exc).__name__}: {exc}") from exc
    raise FrameError(path, "no_image", "no HDU with a 2-D image")


def read_frame(path, hdu=None):
    """Read a raw frame as float32.

    Parameters
    ----------
    path : path-like
        FITS file (plain, ``.gz`` or tile-compressed).
    hdu : int, optional
        Index of the image HDU; by default the first HDU with a 2-D image.

    Returns
    -------
    data : numpy.ndarray
        float32 image in the file's units (ADU for raw frames), BZERO/BSCALE applied.
    header : astropy.io.fits.Header
        Header of that HDU (a copy; never written back to the raw file).
    mask : numpy.ndarray
        ``bits.MASK_DTYPE`` plane with ``bits.BAD`` where the raw value is not finite;
        those pixels are set to 0 in ``data``.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False, do_not_scale_image_data=False) as hdul:
            if hdu is None:
                hdu = next(
                    (
                        i
                        for i, h in enumerate(hdul)
                        if h.is_image and h.header.get("NAXIS", 0) == 2
                    ),
                    None,
                )
                if hdu is None:
                    raise FrameError(path, "no_image", "no HDU with a 2-D image")
            header = hdul[hdu].header.copy()
            data = np.asarray(hdul[hdu].data, dtype=np.float32)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(path, "unreadable", f"{type(exc).__name__}: {exc}") from exc
    if data.ndim != 2:
        raise FrameError(path, "no_image", f"HDU {hdu} has shape {data.shape}")
    mask = np.zeros(data.shape, dtype=bits.MASK_DTYPE)
    bad = ~np.isfinite(data)
    if bad.any():
        mask[bad] |= bits.BAD
        data = np.where(bad, np.float32(0), data)
    return data, header, mask


def ccd_hdulist(data, header, uncertainty=None, mask=None, unit=None):
    """Build the ``CCDData``-layout HDU list of a product (does not write)."""
    from astropy.io import fits

    header = header.copy()
    if unit is not None:
        header["BUNIT"] = (unit, "unit of the data and uncertainty")
    primary = fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header)
    hdus = [primary]
    if uncertainty is not None:
        uh = fits.Header()
        uh["UTYPE"] = ("StdDevUncertainty", "uncertainty type (astropy CCDData)")
        if unit is not None:
            uh["BUNIT"] = unit
        hdus.append(
            fits.ImageHDU(np.asarray(uncertainty, dtype=np.float32), header=uh, name="UNCERT")
        )
    if mask is not None:
        mh = fits.Header()
        for key, value, comment in bits.header_cards():
            mh[key] = (value, comment)
        hdus.append(fits.ImageHDU(np.asarray(mask, dtype=bits.MASK_DTYPE), header=mh, name="MASK"))
    return fits.HDUList(hdus)


def write_product(path, data, header, uncertainty=None, mask=None, unit=None):
    """Write a product atomically: a temporary file in the same folder, then rename.

    A crash or kill never leaves a half-written file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_hdulist(path, ccd_hdulist(data, header, uncertainty, mask, unit))


def write_hdulist(path, hdul):
    """Write an HDU list atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_product(path):
    """Read a product written by :func:`write_product`.

    Returns
    -------
    data, header, uncertainty, mask
        float32 data, its header, float32 standard deviation (or None), mask bits
        (``bits.MASK_DTYPE``, zeros if the file has no ``MASK``).
    """
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        header = hdul[0].header.copy()
        names = [h.name for h in hdul]
        unc = np.asarray(hdul["UNCERT"].data, dtype=np.float32) if "UNCERT" in names else None
        if "MASK" in names:
            mask = np.asarray(hdul["MASK"].data, dtype=bits.MASK_DTYPE)
        else:
            mask = np.zeros(data.shape, dtype=bits.MASK_DTYPE)
    return data, header, unc, mask
