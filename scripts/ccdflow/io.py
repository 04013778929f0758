"""Reading raw frames and writing products.

Raw frames: any 2-D integer or float FITS image (BZERO/BSCALE, gzip, tile-compressed
``.fz``, the first HDU that holds a 2-D image), returned as float32 with a mask of
non-finite pixels. Products: the ``CCDData`` layout (primary = data, ``UNCERT`` =
standard deviation, ``MASK`` = data-quality bits), written atomically so a product is
never half-written at its final path.

Per-frame jobs are dominated by start-up, not arithmetic, and importing
``astropy.io.fits`` costs more than a small frame's whole calibration. So
:func:`read_frame` and :func:`read_product` take ``fast=True``: plain, uncompressed
files with standard cards are then read with numpy alone and the header comes back as a
:class:`Header` (the small subset of ``astropy.io.fits.Header`` that ccdflow uses), and
:func:`write_product` writes such a header without astropy, card for card as astropy
would; :func:`image_hdus` opens a plain file for banded reads (`ImageRows`, the master
combine and the stack) the same way. Anything else (compression, BLANK, scaled data,
odd cards, long strings) falls back to astropy, so the fast path only ever changes
speed, never results. (One difference of layout, not of value: a card a step changes,
e.g. a master's ``EXPTIME``, is written in the fixed format, its value ending in column
30; astropy, changing a card it read from a file, can end it in column 29.)
"""

__all__ = [
    "FITS_DTYPES",
    "FrameError",
    "Header",
    "ImageRows",
    "ccd_hdulist",
    "empty_product",
    "image_hdus",
    "quick_header",
    "read_frame",
    "read_product",
    "write_atomic",
    "write_hdulist",
    "write_product",
]

import contextlib
import os
import re
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


def empty_product(path):
    """The primary header cards (a dict) of a header-only product (``NAXIS = 0``: a
    rejected frame's file, an empty group's stack, an empty master), else None."""
    parsed = _fast_primary_header(path)
    if parsed is None:
        from astropy.io import fits

        header = dict(fits.getheader(path, 0))
    else:
        header = parsed[0]
    return header if int(header.get("NAXIS", 0) or 0) == 0 else None


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
        try:
            naxis = int(header.get("NAXIS", 0) or 0)
            if naxis == 2:
                need = hbytes + _data_bytes(header)
                shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        except (KeyError, ValueError, TypeError) as exc:  # a broken structural card
            raise FrameError(
                path, "unreadable", f"broken image size cards ({type(exc).__name__}: {exc})"
            ) from exc
        if naxis == 2:
            size = path.stat().st_size
            if size < need:
                raise FrameError(path, "truncated", f"{size} of {need} bytes present")
            header["_SHAPE"] = shape
            header["_HDU"] = 0
            return header
    return _astropy_header(path)


def _astropy_header(path):
    from astropy.io import fits

    try:
        # our own file object: astropy leaves its handle open when a broken structural
        # card (e.g. a lost NAXIS1) makes fits.open raise
        with open(path, "rb") as fh, fits.open(fh, memmap=False) as hdul:
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


def read_frame(path, hdu=None, *, fast=False):
    """Read a raw frame as float32.

    Parameters
    ----------
    path : path-like
        FITS file (plain, ``.gz`` or tile-compressed).
    hdu : int, optional
        Index of the image HDU; by default the first HDU with a 2-D image.
    fast : bool
        Read a plain primary image without astropy; the header is then a
        :class:`Header`. Other files are read by astropy as usual.

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
    path = Path(path)
    if fast:
        try:
            header, data = _fast_read_frame(path, hdu)
        except (_Unsupported, OSError, ValueError, KeyError, TypeError):
            pass  # astropy decides, and words the errors
        else:
            return _finite(data, header)
    from astropy.io import fits

    try:
        with (
            open(path, "rb") as fh,  # closed even when fits.open raises (see quick_header)
            fits.open(fh, memmap=False, do_not_scale_image_data=False) as hdul,
        ):
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
    return _finite(data, header)


def _finite(data, header):
    mask = np.zeros(data.shape, dtype=bits.MASK_DTYPE)
    bad = ~np.isfinite(data)
    if bad.any():
        mask[bad] |= bits.BAD
        data = np.where(bad, np.float32(0), data)
    return data, header, mask


class ImageRows:
    """Rows of one image HDU of a FITS file, read on demand: the one banded row reader.

    Plain (uncompressed) images are read with one positional read (``os.pread``) per
    request, so a band costs exactly its bytes, nothing stays mapped or open between
    requests, and the resident size stays at the band; compressed ones are decoded whole
    once. Floats come back as float32 (BSCALE/BZERO applied); integers with BSCALE = 1
    and an integer BZERO (mask planes) as int32/int64 with BZERO applied; other integers
    (raw frames) as float32 with BSCALE/BZERO applied and BLANK values as NaN, as astropy
    scales them.

    Parameters
    ----------
    path : path-like
        The file.
    hdul : astropy.io.fits.HDUList
        The file opened by astropy (``lazy_load_hdus=True``), for the header and the data
        offset; not kept. (`image_hdus` gives the rows of a plain file without astropy.)
    index : int
        Index of the image HDU.
    integers : bool
        Return unscaled integer planes as integers (mask bits); False: always float32.

    Raises
    ------
    FrameError
        The HDU is not a 2-D image (reason ``no_image``), or a read is past the end of
        the file (``truncated``).
    """

    def __init__(self, path, hdul, index, *, integers=True):
        from astropy.io import fits

        h = hdul[index]
        compressed = getattr(hdul.fileinfo(index)["file"], "compression", None)
        if compressed or isinstance(h, fits.CompImageHDU):
            # astropy has already scaled the data and turned BLANK into NaN
            self._setup(path, h.header, index, h.name, integers, whole=lambda: h.data)
        else:
            self._setup(path, h.header, index, h.name, integers, offset=h.fileinfo()["datLoc"])

    @classmethod
    def _plain(cls, path, header, index, name, offset, *, integers=True):
        """Rows of an HDU of a plain file that `_read_hdus` parsed (no astropy)."""
        self = cls.__new__(cls)
        self._setup(path, header, index, name, integers, offset=offset)
        return self

    def _setup(self, path, header, index, name, integers, *, offset=None, whole=None):
        self.path = os.fspath(path)
        self.header = header
        self.shape = (int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0)))
        if int(header.get("NAXIS", 0)) != 2:
            raise FrameError(path, "no_image", f"HDU {index} ({name}) is not a 2-D image")
        bitpix = int(header["BITPIX"])
        self._bscale = float(header.get("BSCALE", 1.0))
        self._bzero = header.get("BZERO", 0)
        self._integer = (
            integers and bitpix > 0 and self._bscale == 1.0 and float(self._bzero).is_integer()
        )
        self._blank = header.get("BLANK") if bitpix > 0 else None
        if whole is not None:
            self._whole = np.asarray(whole()).astype(np.int64 if self._integer else np.float32)
        else:
            self._whole = None
            self._dtype = np.dtype(FITS_DTYPES[bitpix])
            self._offset = int(offset)
            self._rowbytes = self.shape[1] * self._dtype.itemsize

    def _convert(self, raw, out=None):
        if self._integer:
            # mask planes: 16-bit with BZERO 32768 fit int32 (half the memory of int64)
            out = raw.astype(np.int32 if raw.dtype.itemsize <= 2 else np.int64)
            if self._bzero:
                out += int(self._bzero)
            return out
        if out is None:
            out = raw.astype(np.float32)
        else:
            np.copyto(out, raw)
        if self._bscale != 1.0:
            out *= np.float32(self._bscale)
        if self._bzero:
            out += np.float32(self._bzero)
        if self._blank is not None:
            out[raw == self._blank] = np.nan
        return out

    def _read(self, fd, y0, y1):
        # os.pread: one system call, no Python file object (np.fromfile on a file object
        # costs about 0.1 ms a call, which dominated the strided sample reads)
        nbytes = (y1 - y0) * self._rowbytes
        raw = os.pread(fd, nbytes, self._offset + y0 * self._rowbytes)
        if len(raw) != nbytes:
            raise FrameError(self.path, "truncated", f"rows {y0}:{y1} are past the end")
        return np.frombuffer(raw, dtype=self._dtype).reshape(y1 - y0, self.shape[1])

    def rows(self, y0, y1, cols=slice(None), out=None):
        """Rows ``y0:y1`` (and columns ``cols``) as a new array, or (float32 images) into
        ``out``, a float32 array of their shape, without an intermediate copy."""
        if self._whole is not None:
            if out is None:
                return self._whole[y0:y1, cols].copy()
            np.copyto(out, self._whole[y0:y1, cols])
            return out
        if out is not None and self._integer:
            raise ValueError(f"{self.path}: integer planes are not read into a buffer")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return self._convert(self._read(fd, y0, y1)[:, cols], out)
        finally:
            os.close(fd)

    def rows_at(self, ys, cols=slice(None)):
        """Rows ``ys`` (a sequence of row indices; and columns ``cols``) as one new array,
        read with one positional read per row and converted once."""
        ys = [int(y) for y in ys]
        if self._whole is not None:
            return self._whole[ys, cols]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = [self._read(fd, y, y + 1)[:, cols] for y in ys]
        finally:
            os.close(fd)
        return self._convert(np.concatenate(raw))

    def sample(self, step, col_step=1):
        """Every ``step``-th row and ``col_step``-th column, starting at pixel (0, 0)."""
        return self.rows_at(range(0, self.shape[0], step), slice(None, None, col_step))


class _HDU:
    """One HDU of `image_hdus`: its ``name`` (``EXTNAME`` upper-cased; ``PRIMARY`` for
    the first without one), ``header``, and ``rows(integers=True)``, its `ImageRows`."""

    def __init__(self, name, header, rows):
        self.name, self.header, self._rows = name, header, rows

    def rows(self, *, integers=True):
        return self._rows(integers)


@contextlib.contextmanager
def image_hdus(path):
    """The HDUs of a FITS file for banded reads: a list of `_HDU`, in file order.

    A plain file (uncompressed, image extensions only, headers the fast parser takes) is
    parsed without astropy and its headers are :class:`Header`; anything else is opened by
    astropy (``lazy_load_hdus``, closed at exit) and its headers are astropy's. Either way
    the `ImageRows` return the same values (`ImageRows` documents them).
    """
    try:
        hdus = _read_hdus(path)
    except (_Unsupported, OSError, ValueError, KeyError, TypeError):
        hdus = None  # astropy decides, and words the errors
    if hdus is not None:
        out = []
        for i, (header, offset, _) in enumerate(hdus):
            name = str(header.get("EXTNAME", "" if i else "PRIMARY")).strip().upper()
            out.append(_HDU(name, header, _plain_rows(path, header, i, name, offset)))
        yield out
        return
    from astropy.io import fits

    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        yield [_HDU(h.name, h.header, _astropy_rows(path, hdul, i)) for i, h in enumerate(hdul)]


def _plain_rows(path, header, index, name, offset):
    return lambda integers: ImageRows._plain(path, header, index, name, offset, integers=integers)


def _astropy_rows(path, hdul, index):
    return lambda integers: ImageRows(path, hdul, index, integers=integers)


def ccd_hdulist(data, header, uncertainty=None, mask=None, unit=None):
    """Build the ``CCDData``-layout HDU list of a product (does not write).

    ``data=None`` gives a header-only primary HDU (``NAXIS = 0``): a product that has no
    image, e.g. a rejected frame's aligned file or the stack of an empty group.
    """
    from astropy.io import fits

    header = header.to_astropy() if isinstance(header, Header) else header.copy()
    if unit is not None:
        header["BUNIT"] = (unit, "unit of the data and uncertainty")
    pixels = None if data is None else np.asarray(data, dtype=np.float32)
    primary = fits.PrimaryHDU(pixels, header=header)
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


def write_product(path, data, header, uncertainty=None, mask=None, unit=None, extra=()):
    """Write a product atomically: a temporary file in the same folder, then rename.

    A crash or kill never leaves a half-written file at ``path``. A :class:`Header` is
    written without astropy when every card is standard (the same bytes astropy writes).
    ``extra``: ``[(EXTNAME, array)]``, more image extensions after ``MASK`` (float32,
    uint16 or int16, e.g. a stack's ``COVERAGE``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(header, Header):
        try:
            parts = _fast_product_parts(data, header, uncertainty, mask, unit, extra)
        except _Unsupported:
            pass
        else:
            return write_atomic(path, lambda tmp: _write_parts(tmp, parts))
    hdul = ccd_hdulist(data, header, uncertainty, mask, unit)
    if extra:
        from astropy.io import fits

        hdul.extend(fits.ImageHDU(plane, name=name) for name, plane in extra)
    return write_hdulist(path, hdul)


def write_hdulist(path, hdul):
    """Write an HDU list atomically (temporary file in the same folder, then rename)."""
    return write_atomic(
        path, lambda tmp: hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
    )


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, write):
    """Write ``path`` through ``write(tmp)`` on a temporary name in the same folder, then
    rename it into place, so no half-written file ever sits at ``path`` (a killed job
    leaves at most a hidden ``.<name>.*.part`` file). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; products are shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_product(path, *, fast=False):
    """Read a product written by :func:`write_product`.

    With ``fast=True`` a plain file is read without astropy and the header is a
    :class:`Header`; anything unusual is read by astropy as usual.

    Returns
    -------
    data, header, uncertainty, mask
        float32 data, its header, float32 standard deviation (or None), mask bits
        (``bits.MASK_DTYPE``, zeros if the file has no ``MASK``).
    """
    if fast:
        try:
            return _fast_read_product(path)
        except (_Unsupported, OSError, ValueError, KeyError, TypeError):
            pass  # astropy decides, and words the errors
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


# --- fast path: plain FITS without astropy -------------------------------------------

#: Keywords whose value is free text (no ``= ``), as astropy treats them.
_COMMENTARY = ("HISTORY", "COMMENT", "")
_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}\Z")
_VALUE = re.compile(
    r"""\s*(?:
        '(?P<str>(?:[^']|'')*)'          # string, '' is a quote
      | (?P<bool>[TF])
      | (?P<int>[+-]?\d+)
      | (?P<float>[+-]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][+-]?\d+)?)
    )\s*(?:/\s*(?P<comment>.*))?\Z""",
    re.VERBOSE,
)
_PRINTABLE = re.compile(r"[ -~]*\Z")
_LONG_PART = re.compile(r"\s*'(?P<str>(?:[^']|'')*)'\s*(?:/\s*(?P<comment>.*))?\Z")
#: Structural keywords: written by the writer itself, never copied from a header.
_STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND")
_RESERVED = frozenset(
    (
        *_STRUCTURAL,
        *("XTENSION", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK", "EXTNAME", "EXTVER"),
        *("NAXIS3", "NAXIS4", "CHECKSUM", "DATASUM", "GROUPS", "THEAP", "ZIMAGE"),
    )
)
#: FITS BITPIX -> numpy dtype of the data on disk (big-endian).
FITS_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class _Unsupported(Exception):
    """A file or header the fast path does not handle: use astropy instead."""


class Card(tuple):
    """One header card: ``(keyword, value, comment)``, like astropy's ``Card`` fields."""

    __slots__ = ()

    def __new__(cls, keyword, value, comment=""):
        return super().__new__(cls, (keyword, value, comment))

    keyword = property(lambda self: self[0])
    value = property(lambda self: self[1])
    comment = property(lambda self: self[2])


class _Comments:
    def __init__(self, header):
        self._header = header

    def __getitem__(self, key):
        return self._header._cards[self._header._index(key)][2]


class Header:
    """A FITS header without astropy: the subset of ``astropy.io.fits.Header`` ccdflow uses.

    ``h[key]``, ``h[key] = value`` or ``(value, comment)``, ``key in h``, ``h.get``,
    ``del h[key]``, ``h.remove(key, ignore_missing=True)``, ``h.copy()``,
    ``h.add_history``, ``h.add_comment``, ``h.comments[key]``, ``h.cards``, iteration
    over keywords, ``keys``/``values``/``items``. New keywords go after the last
    non-commentary card and HISTORY/COMMENT at the end, as in astropy, so a product
    written from it is the same, card for card. :meth:`to_astropy` converts.
    Keywords are case-insensitive; cards read from a file keep their exact text
    until they are changed.
    """

    __slots__ = ("_cards",)

    def __init__(self, cards=()):
        # each card: [keyword, value, comment, image or None (None: format on write)]
        self._cards = []
        items = cards.items() if isinstance(cards, dict) else cards
        for card in items:
            key, value, *rest = card
            if str(key).upper() in _COMMENTARY:
                self._append_commentary(str(key).upper(), value)
            else:
                self[key] = (value, rest[0] if rest else "")

    @classmethod
    def _from_images(cls, cards):
        header = cls.__new__(cls)
        header._cards = cards
        return header

    def _index(self, key):
        key = key.upper()
        for i, card in enumerate(self._cards):
            if card[0] == key:
                return i
        raise KeyError(f"Keyword {key!r} not found.")

    def __getitem__(self, key):
        if key.upper() in _COMMENTARY:
            return [c[1] for c in self._cards if c[0] == key.upper()]
        return self._cards[self._index(key)][1]

    def __setitem__(self, key, value):
        key = key.upper()
        comment = None
        if isinstance(value, tuple):
            value, comment = (*value, None)[:2]
        if key in _COMMENTARY:
            self._append_commentary(key, value)
            return
        try:
            card = self._cards[self._index(key)]
        except KeyError:
            # astropy: after the last non-commentary card, then a trailing blank reused
            i = len(self._cards)
            while i > 0 and self._cards[i - 1][0] in _COMMENTARY:
                i -= 1
            new = [key, value, comment or "", None]
            self._cards.insert(i, new)
            self._use_blanks(new)
            return
        old = card[1]
        if isinstance(old, str) and isinstance(value, str):
            different = old.rstrip() != value.rstrip()
        elif isinstance(old, bool) or isinstance(value, bool):
            different = old is not value
        else:
            different = old != value or not isinstance(value, type(old))
        if different:
            card[1], card[3] = value, None
        if comment is not None and comment != card[2]:
            card[2], card[3] = comment, None

    def __delitem__(self, key):
        key = key.upper()
        n = len(self._cards)
        self._cards = [c for c in self._cards if c[0] != key]
        if len(self._cards) == n:
            raise KeyError(f"Keyword {key!r} not found.")

    def __contains__(self, key):
        key = key.upper()
        return any(c[0] == key for c in self._cards)

    def __iter__(self):
        return (c[0] for c in self._cards)

    def __len__(self):
        return len(self._cards)

    def __repr__(self):
        return "\n".join(_image(c) for c in self._cards)

    def get(self, key, default=None):
        """Value of ``key``, or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def remove(self, key, ignore_missing=False, remove_all=False):
        """Remove the first card ``key`` (all with ``remove_all``); KeyError if absent."""
        key = key.upper()
        for i, card in enumerate(self._cards):
            if card[0] == key:
                del self._cards[i]
                if remove_all:
                    self.remove(key, ignore_missing=True, remove_all=True)
                return
        if not ignore_missing:
            raise KeyError(f"Keyword {key!r} not found.")

    def copy(self):
        """An independent copy."""
        return Header._from_images([list(c) for c in self._cards])

    def keys(self):
        return list(self)

    def values(self):
        return [c[1] for c in self._cards]

    def items(self):
        return [(c[0], c[1]) for c in self._cards]

    @property
    def cards(self):
        """The cards as ``Card(keyword, value, comment)`` tuples."""
        return [Card(c[0], c[1], c[2]) for c in self._cards]

    @property
    def comments(self):
        """``h.comments[key]``: the comment of a card."""
        return _Comments(self)

    def add_history(self, value):
        """Append a HISTORY card (text longer than 72 characters continues on more)."""
        self._append_commentary("HISTORY", value)

    def add_comment(self, value):
        """Append a COMMENT card."""
        self._append_commentary("COMMENT", value)

    def _append_commentary(self, key, value):
        # as astropy: after the last card of the same kind, else after the last
        # non-blank card; a trailing blank card is reused each time
        text = str(value)
        chunks = [[key, text[i : i + 72], "", None] for i in range(0, max(len(text), 1), 72)]
        same = [i for i, c in enumerate(self._cards) if c[0] == key]
        if same:
            at = same[-1] + 1
            for chunk in reversed(chunks):
                if at >= len(self._cards):
                    self._cards.append(chunk)
                else:
                    self._cards.insert(at, chunk)
                    if not (key == "" and not chunk[1]):
                        self._use_blanks(chunk)
            return
        for chunk in chunks:
            i = len(self._cards)
            while i > 0 and _is_blank(self._cards[i - 1]):
                i -= 1
            self._cards.insert(i, chunk)
            if not _is_blank(chunk):
                self._use_blanks(chunk)

    def _use_blanks(self, card):
        if len(self._cards) > 1 and _is_blank(self._cards[-1]):
            for _ in range(max(1, len(_image(card)) // _CARD)):
                if _is_blank(self._cards[-1]):
                    del self._cards[-1]
                else:
                    break

    def to_astropy(self):
        """The same header as an ``astropy.io.fits.Header``."""
        from astropy.io import fits

        out = fits.Header()
        for key, value, comment, image in self._cards:
            if image is not None:
                out.append(fits.Card.fromstring(image), end=True)
            elif key in _COMMENTARY:
                out.append(fits.Card(key, value), end=True)
            else:
                out.append(fits.Card(key, value, comment), end=True)
        return out


def _is_blank(card):
    return card[0] == "" and card[1] == "" and not card[2]


def _format_value(value):
    """A card's value field, exactly as astropy formats it; _Unsupported otherwise."""
    if isinstance(value, str):
        if not _PRINTABLE.match(value):
            raise _Unsupported("non-ASCII string")
        if value == "":
            return "''"
        quoted = "'{:8}'".format(value.replace("'", "''"))
        return f"{quoted:20}"
    if isinstance(value, (bool, np.bool_)):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):>20d}"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise _Unsupported("non-finite float")
        text = str(value).replace("e", "E")
        if len(text) > 20:
            e = text.find("E")
            text = text[:20] if e < 0 else text[: 20 - (len(text) - e)] + text[e:]
        return f"{text:>20}"
    raise _Unsupported(f"value of type {type(value).__name__}")


def _image(card):
    """The 80-character text of a card (several for long commentary)."""
    key, value, comment, image = card
    if image is not None:
        return image
    if key in _COMMENTARY:
        text = str(value)
        if not _PRINTABLE.match(text) or len(text) > 72:
            raise _Unsupported("commentary card")
        return f"{key:8}{text}".ljust(80)
    if not _KEYWORD.match(key):
        raise _Unsupported(f"keyword {key!r}")
    comment = str(comment or "")
    if not _PRINTABLE.match(comment):
        raise _Unsupported("non-ASCII comment")
    formatted = _format_value(value)
    text = f"{key:8}= {formatted}" + (f" / {comment}" if comment else "")
    if len(text) <= 80:
        return text.ljust(80)
    if not isinstance(value, str) or len(formatted) <= 70:
        raise _Unsupported("card too long")  # astropy would truncate it, with a warning
    return _long_string_image(key, value, comment)


def _words_group(s, width, first_width):
    """Split ``s`` at blanks into parts of at most ``width`` (astropy's ``_words_group``)."""
    words, blanks = [], [i for i, ch in enumerate(s + " ") if ch == " "]
    current, offset, xoffset = first_width, 0, 0
    while True:
        loc = next((k for k, b in enumerate(blanks) if b >= current + offset), len(blanks))
        offset = blanks[loc - 1] + 1 if loc > 0 else -1
        if offset <= xoffset:  # one word longer than the width: cut it
            offset = min(xoffset + current, len(s))
        words.append(s[xoffset:offset])
        if offset >= len(s):
            return words
        xoffset, current = offset, width


def _long_string_image(key, value, comment):
    """A long string as CONTINUE cards, exactly as astropy writes it."""
    words = _words_group(value.replace("'", "''"), 67, 67)
    out = []
    for i, word in enumerate(words):
        head = f"{key:8}= " if i == 0 else "CONTINUE  "
        last = not comment and i == len(words) - 1
        out.append(f"{head}'{word}{'' if last else '&'}'".ljust(80))
    if comment:
        parts = _words_group(comment, 64, 64)
        for i, word in enumerate(parts):
            head = "CONTINUE  '' / " if i == len(parts) - 1 else "CONTINUE  '&' / "
            out.append(f"{head}{word}".ljust(80))
    return "".join(out)


def _parse_long(images):
    """A string card continued on CONTINUE cards (astropy's reading of them)."""
    values, comments = [], []
    for i, image in enumerate(images):
        if i and not image.startswith("CONTINUE  "):
            raise _Unsupported("CONTINUE")
        m = _LONG_PART.match(image, 10)
        if m is None:
            raise _Unsupported("CONTINUE value")
        part = m["str"].rstrip()
        values.append(part[:-1] if part.endswith("&") else part)
        if m["comment"] and m["comment"].rstrip():
            comments.append(m["comment"].rstrip())
    value = "".join(values).replace("''", "'").rstrip()
    return [images[0][:8].rstrip(), value, " ".join(comments), "".join(images)]


def _parse_card(image):
    """``[keyword, value, comment, image]`` of a standard card; _Unsupported otherwise."""
    key = image[:8].rstrip()
    if key in _COMMENTARY:
        return [key, image[8:].rstrip(), "", image]
    if not _KEYWORD.match(key) or image[8:10] != "= " or " " in key:
        raise _Unsupported(f"card {image[:10]!r}")
    m = _VALUE.match(image, 10)
    if m is None:
        raise _Unsupported(f"value of {key}")
    if m["str"] is not None:
        value = m["str"].replace("''", "'").rstrip()
    elif m["bool"] is not None:
        value = m["bool"] == "T"
    elif m["int"] is not None:
        value = int(m["int"])
    else:
        value = float(m["float"].replace("D", "E").replace("d", "e"))
    comment = (m["comment"] or "").rstrip()
    return [key, value, comment, image]


def _read_hdus(path, first_only=False):
    """``[(header, data_offset, nbytes), ...]`` of a plain FITS file; _Unsupported if odd."""
    name = str(path).lower()
    if name.endswith((".gz", ".fz", ".bz2", ".z", ".zip")):
        raise _Unsupported("compressed")
    hdus = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            cards, end = [], False
            while not end:
                block = f.read(_BLOCK)
                offset += len(block)
                if len(block) < _BLOCK:
                    raise _Unsupported("truncated header")
                try:
                    text = block.decode("ascii")
                except UnicodeDecodeError:
                    raise _Unsupported("non-ASCII header") from None
                for i in range(0, _BLOCK, _CARD):
                    image = text[i : i + _CARD]
                    if image.startswith("END     ") and not image[3:].strip():
                        end = True
                        break
                    if image.startswith("CONTINUE"):
                        # astropy joins it to the string card before it
                        if not cards or not isinstance(cards[-1][1], str):
                            raise _Unsupported("CONTINUE")
                        prev = cards[-1][3]
                        subs = [prev[j : j + _CARD] for j in range(0, len(prev), _CARD)]
                        tail = _LONG_PART.match(subs[-1], 10)
                        if tail is None or not tail["str"].rstrip().endswith("&"):
                            raise _Unsupported("CONTINUE after a complete string")
                        cards[-1] = _parse_long([*subs, image])
                        continue
                    cards.append(_parse_card(image))
                if len(cards) > 10000:
                    raise _Unsupported("no END")
            header = Header._from_images(cards)
            first = "SIMPLE" if not hdus else "XTENSION"
            if not cards or cards[0][0] != first:
                raise _Unsupported(f"no {first}")
            if hdus and header.get("XTENSION") != "IMAGE":
                raise _Unsupported("non-image extension")
            naxis = header["NAXIS"]
            nbytes = 0
            if naxis:
                nbytes = abs(header["BITPIX"]) // 8 * header.get("GCOUNT", 1)
                for i in range(1, naxis + 1):
                    nbytes *= header[f"NAXIS{i}"]
                nbytes += abs(header["BITPIX"]) // 8 * header.get("PCOUNT", 0)
            if offset + nbytes > size:
                raise _Unsupported("truncated data")
            hdus.append((header, offset, nbytes))
            if first_only:
                break
            offset += nbytes + (-nbytes % _BLOCK)
            f.seek(offset)
    return hdus


def _image_data(path, header, offset):
    """Data of an image HDU as astropy returns it (unsigned integers for the usual BZERO,
    native byte order); _Unsupported for scaled data or BLANK."""
    bitpix = header["BITPIX"]
    shape = tuple(header[f"NAXIS{i}"] for i in range(header["NAXIS"], 0, -1))
    if bitpix not in FITS_DTYPES or "BLANK" in header:
        raise _Unsupported("BITPIX/BLANK")
    bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
    if bscale != 1 or isinstance(bscale, bool) or isinstance(bzero, bool):
        raise _Unsupported("BSCALE")
    unsigned = {8: -128, 16: 32768, 32: 2**31, 64: 2**63}
    if bzero != 0 and (bitpix < 0 or bzero != unsigned[bitpix]):
        raise _Unsupported("BZERO")
    count = int(np.prod(shape))
    raw = np.fromfile(path, dtype=FITS_DTYPES[bitpix], count=count, offset=offset).reshape(shape)
    if bzero:  # flip the sign bit: the exact integer value of raw + BZERO
        if bitpix == 8:
            return (raw ^ np.uint8(0x80)).view(np.int8)
        flipped = raw.view(raw.dtype.str.replace("i", "u"))
        raw = flipped ^ np.array(1 << (bitpix - 1), dtype=flipped.dtype)
    return raw.astype(raw.dtype.newbyteorder("="))


def _fast_read_frame(path, hdu):
    if hdu not in (None, 0):
        raise _Unsupported("extension HDU")
    header, offset, _ = _read_hdus(path, first_only=True)[0]
    if header["NAXIS"] != 2:
        raise _Unsupported("primary is not a 2-D image")
    return header, np.asarray(_image_data(path, header, offset), dtype=np.float32)


def _fast_read_product(path):
    hdus = _read_hdus(path)
    header, offset, _ = hdus[0]
    data = np.asarray(_image_data(path, header, offset), dtype=np.float32)
    unc = mask = None
    for h, off, _ in hdus[1:]:
        name = str(h.get("EXTNAME", "")).strip().upper()
        if name == "UNCERT" and unc is None:
            unc = np.asarray(_image_data(path, h, off), dtype=np.float32)
        elif name == "MASK" and mask is None:
            mask = np.asarray(_image_data(path, h, off), dtype=bits.MASK_DTYPE)
    if mask is None:
        mask = np.zeros(data.shape, dtype=bits.MASK_DTYPE)
    return data, header.copy(), unc, mask


def _write_parts(path, parts):
    """Write byte strings and arrays (through the buffer protocol, no copy) in order."""
    with open(path, "wb") as fh:
        for part in parts:
            fh.write(part)


def _hdu_parts(first_cards, header, data, last_cards=()):
    """Header text, big-endian data and padding of one HDU, as ``astropy`` writes them.

    Raises _Unsupported if the HDU is unusual. The data part is an array (one
    byte-swapped copy of ``data``), written as it is: no ``tobytes`` or join copies.
    """
    data = np.asarray(data)
    bitpix = {np.dtype(np.float32): -32, np.dtype(np.uint16): 16, np.dtype(np.int16): 16}.get(
        data.dtype
    )
    if bitpix is None:
        raise _Unsupported(f"data type {data.dtype}")
    unsigned = data.dtype == np.uint16
    cards = [
        first_cards[0],
        ["BITPIX", bitpix, "array data type", None],
        ["NAXIS", data.ndim, "number of array dimensions", None],
    ]
    cards += [[f"NAXIS{i + 1}", n, "", None] for i, n in enumerate(reversed(data.shape))]
    cards += first_cards[1:]
    if unsigned:
        cards += [["BSCALE", 1, "", None], ["BZERO", 32768, "", None]]
    user = header._cards if header is not None else []
    i = 0
    while i < len(user) and user[i][0] in _STRUCTURAL:
        i += 1
    if any(c[0] in _RESERVED for c in user[i:]):
        raise _Unsupported("reserved keyword in header")
    text = "".join(_image(c) for c in [*cards, *user[i:], *last_cards])
    text += "END".ljust(80)
    text += " " * (-len(text) % _BLOCK)
    # unsigned 16-bit: stored minus 32768, i.e. with the sign bit flipped
    if unsigned:
        body = (data ^ np.uint16(0x8000)).astype(">u2")
    else:
        body = data.astype(">f4" if bitpix == -32 else ">i2")
    body = np.ascontiguousarray(body)
    return [text.encode("ascii"), body, b"\0" * (-body.nbytes % _BLOCK)]


def _fast_product_parts(data, header, uncertainty, mask, unit, extra=()):
    header = header.copy()
    if unit is not None:
        header["BUNIT"] = (unit, "unit of the data and uncertainty")
    data = np.asarray(data, dtype=np.float32)
    parts = _hdu_parts(
        [["SIMPLE", True, "conforms to FITS standard", None], ["EXTEND", True, "", None]],
        header,
        data,
    )
    xtension = ["XTENSION", "IMAGE", "Image extension", None]
    counts = [["PCOUNT", 0, "number of parameters", None], ["GCOUNT", 1, "number of groups", None]]
    if uncertainty is not None:
        uh = Header()
        uh["UTYPE"] = ("StdDevUncertainty", "uncertainty type (astropy CCDData)")
        if unit is not None:
            uh["BUNIT"] = unit
        extname = [["EXTNAME", "UNCERT", "extension name", None]]
        unc = np.asarray(uncertainty, np.float32)
        parts += _hdu_parts([xtension, *counts], uh, unc, extname)
    if mask is not None:
        mh = Header()
        for key, value, comment in bits.header_cards():
            mh[key] = (value, comment)
        extname = [["EXTNAME", "MASK", "extension name", None]]
        mask = np.asarray(mask, bits.MASK_DTYPE)
        parts += _hdu_parts([xtension, *counts], mh, mask, extname)
    for name, plane in extra:
        extname = [["EXTNAME", name, "extension name", None]]
        parts += _hdu_parts([xtension, *counts], None, plane, extname)
    return parts
