"""Property-based tests (hypothesis) of the FITS loader and of the grouping.

The budget is bounded here (``max_examples``) and the examples are derandomised, so a
run takes a few seconds and CI sees the same cases every time.

- The loader: random valid images (integer and float BITPIX, BZERO/BSCALE, NaN patterns,
  1-3 HDUs, tile-compressed or not), with or without a random corruption (truncation at
  any byte, a flipped byte, a broken END or NAXIS card), either load correctly or raise
  `ccdflow.io.FrameError` naming the file; nothing else escapes.
- The grouping: for random header sets, every file lands exactly once in the frames or in
  the rejected list, every light in exactly one group, independently of file order and
  names.
"""

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccdflow import bits, inventory, io
from conftest import REPO

BUDGET = settings(
    max_examples=60,
    report_multiple_bugs=False,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = {8: np.uint8, 16: np.int16, 32: np.int32, -32: np.float32, -64: np.float64}


@st.composite
def images(draw):
    """The recipe of a valid FITS file (small, so a failing example prints short)."""
    bitpix = draw(st.sampled_from(sorted(DTYPES)))
    integer = bitpix > 0
    scaled = integer and draw(st.booleans())
    return {
        "bitpix": bitpix,
        "shape": (draw(st.integers(1, 9)), draw(st.integers(1, 9))),
        "seed": draw(st.integers(0, 2**16)),
        "bscale": draw(st.sampled_from([1.0, 0.5, 2.0])) if scaled else None,
        "bzero": draw(st.sampled_from([0.0, 32768.0, -1000.0])) if scaled else None,
        "bad": None
        if integer or not draw(st.booleans())
        else draw(st.sampled_from(["nan", "inf", "-inf"])),
        "layout": draw(st.sampled_from(["primary", "extension", "two"])),
        "compressed": integer and not scaled and draw(st.booleans()),
    }


def _build(recipe):
    """FITS bytes of a recipe, the index of its image HDU, and the image astropy reads."""
    import io as _io

    rng = np.random.default_rng(recipe["seed"])
    dtype = np.dtype(DTYPES[recipe["bitpix"]])
    shape = recipe["shape"]
    if dtype.kind == "f":
        raw = rng.normal(100, 30, shape).astype(dtype)
        if recipe["bad"]:
            raw.flat[rng.integers(0, raw.size, 2)] = float(recipe["bad"])
    else:
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    header = fits.Header()
    if recipe["bscale"] is not None:
        header["BSCALE"], header["BZERO"] = recipe["bscale"], recipe["bzero"]
    header["OBJECT"] = "prop"
    if recipe["compressed"]:
        hdus, index = [fits.PrimaryHDU(), fits.CompImageHDU(raw, header=header)], 1
    elif recipe["layout"] == "primary":
        hdus, index = [fits.PrimaryHDU(raw, header=header, do_not_scale_image_data=True)], 0
    else:
        image = fits.ImageHDU(raw, header=header, do_not_scale_image_data=True)
        hdus, index = [fits.PrimaryHDU(), image], 1
    if recipe["layout"] == "two" and not recipe["compressed"]:
        hdus.append(fits.ImageHDU(np.zeros((2, 2), np.float32), name="EXTRA"))
    buffer = _io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList(hdus).writeto(buffer)
        content = buffer.getvalue()
        with fits.open(_io.BytesIO(content)) as hdul:  # the reference reader
            expected = np.asarray(hdul[index].data, dtype=np.float32)
    return content, index, expected


@st.composite
def corruptions(draw, size):
    kind = draw(st.sampled_from(["none", "truncate", "flip", "end", "naxis", "no_naxis1"]))
    if kind == "truncate":
        return kind, draw(st.integers(0, size - 1))
    if kind == "flip":
        return kind, (draw(st.integers(0, size - 1)), draw(st.integers(1, 255)))
    return kind, None


def _corrupt(content, kind, where):
    if kind == "truncate":
        return content[:where]
    if kind == "flip":
        pos, xor = where
        return content[:pos] + bytes([content[pos] ^ xor]) + content[pos + 1 :]
    if kind == "end":
        return content.replace(b"END" + b" " * 77, b"XND" + b" " * 77, 1)
    if kind == "naxis":
        return content.replace(b"NAXIS1  =", b"NAXIS1  = 999999 /", 1)
    if kind == "no_naxis1":  # a structural card lost (a flipped byte in its name)
        return content.replace(b"NAXIS1  =", b"NAXIS!  =", 1)
    return content


def _loads_or_names_the_file(call, path):
    """The call returns, or raises FrameError whose message names the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's verify warnings on broken cards
            return call()
    except io.FrameError as exc:
        assert path.name in str(exc), f"FrameError does not name the file: {exc}"
        assert exc.reason
        return None


@BUDGET
@given(data=st.data())
def test_the_loader_loads_or_raises_its_own_error_naming_the_file(tmp_path, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    content, index, expected = _build(data.draw(images()))
    kind, where = data.draw(corruptions(len(content)))
    path = tmp_path / f"frame_{kind}.fits"
    path.write_bytes(_corrupt(content, kind, where))
    for fast in (True, False):
        got = _loads_or_names_the_file(lambda f=fast: io.read_frame(path, index, fast=f), path)
        if kind == "none":
            assert got is not None, "a valid file did not load"
        if got is None:
            continue
        image, _, mask = got
        assert image.dtype == np.float32 and image.ndim == 2
        if kind == "none":
            bad = ~np.isfinite(expected)
            np.testing.assert_array_equal(image[~bad], expected[~bad])
            assert (image[bad] == 0).all() and ((mask[bad] & bits.BAD) != 0).all()
            assert not mask[~bad].any()
    _loads_or_names_the_file(lambda: io.quick_header(path), path)


IMAGETYPS = [
    "Light Frame",
    "Bias Frame",
    "Dark Frame",
    "Flat Field",
    "object",
    "zero",
    "junk",
    None,
]
FILTERS = ["V", "R", "g'", None]
EXPTIMES = [60.0, 60.01, 120.0, 0.0, -5.0, "abc", None]
OBJECTS = ["M51", "NGC 4565", "M 51"]


@st.composite
def header_sets(draw):
    n = draw(st.integers(1, 10))
    frames = []
    for i in range(n):
        frames.append(
            {
                "IMAGETYP": draw(st.sampled_from(IMAGETYPS)),
                "FILTER": draw(st.sampled_from(FILTERS)),
                "EXPTIME": draw(st.sampled_from(EXPTIMES)),
                "OBJECT": draw(st.sampled_from(OBJECTS)),
                "SEQ": i,  # distinct content: no two files are duplicates
            }
        )
    return frames


def _write_night(folder, frames, names):
    folder.mkdir(parents=True)
    for cards, name in zip(frames, names, strict=True):
        header = fits.Header()
        for key, value in cards.items():
            if value is not None:
                header[key] = value
        fits.PrimaryHDU(np.full((4, 5), 1000, np.uint16), header=header).writeto(folder / name)


def _outcome(inv):
    """SEQ -> the group (lights), the type (others) or the reason of the rejection."""
    seq = {}
    for frame in inv.frames:
        seq[_seq_of(frame["path"])] = ("frame", frame["imagetyp"], frame.get("group", ""))
    for rej in inv.rejected:
        seq[_seq_of(rej["path"])] = ("rejected", rej["reason"])
    return seq


_SEQ = {}


def _seq_of(path):
    return _SEQ[str(path).rsplit("/", 1)[-1]]


@pytest.fixture(scope="module")
def inventory_cfg():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())["inventory"]


@BUDGET
@given(frames=header_sets(), data=st.data())
def test_every_file_lands_once_whatever_its_order_and_name(tmp_path, inventory_cfg, frames, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    n = len(frames)
    outcomes = []
    for trial in range(2):
        names = [f"t{trial}_{k:02d}.fits" for k in data.draw(st.permutations(range(n)))]
        for i, name in enumerate(names):
            _SEQ[name] = i
        folder = tmp_path / f"night{trial}"
        _write_night(folder, frames, names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inv = inventory.scan(folder, inventory_cfg)
        paths = [f["path"] for f in inv.frames] + [r["path"] for r in inv.rejected]
        assert sorted(paths) == sorted(names), "a file is missing or listed twice"
        for frame in inv.frames:
            if frame["imagetyp"] == "light":
                assert frame["group"], f"light {frame['path']} has no group"
        outcomes.append(_outcome(inv))
    assert outcomes[0] == outcomes[1], "the outcome depends on the file names or order"
