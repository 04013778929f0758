"""Sections and overscan: known truth in, truth out; wrong sections are loud errors."""

import numpy as np
import pytest

from ccdflow.sections import (
    SectionError,
    overscan_levels,
    parse_section,
    signal_in_overscan,
    subtract_overscan,
)

NY, NX, NOVER = 60, 80, 16  # image 80 columns + 16 overscan columns on the right


def _frame(seed=0, rn=4.0, slope=True, stars=False):
    """Raw frame with a per-row bias level (drifting along the rows) and an overscan."""
    rng = np.random.default_rng(seed)
    y = np.arange(NY)
    level = 1000 + (0.05 * y + 3 * np.sin(y / 9) if slope else 0 * y)
    image = np.zeros((NY, NX + NOVER))
    image[:, :NX] = 500.0  # light only in the image area
    if stars:
        image[20:23, NX + 4 : NX + 7] += 3000  # light where the overscan should be
    raw = image + level[:, None] + rng.normal(0, rn, image.shape)
    return np.round(raw).astype(np.float32), level


BIASSEC = f"[{NX + 3}:{NX + NOVER},1:{NY}]"  # skip 2 columns next to the image
TRIMSEC = f"[1:{NX},1:{NY}]"


def test_parse_section_is_1_based_inclusive():
    rows, cols = parse_section("[3:10,1:5]", (20, 30))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 5, 2, 10)
    data = np.arange(600).reshape(20, 30)
    assert data[rows, cols].shape == (5, 8)
    # reversed ranges are normalised
    assert parse_section("[10:3,5:1]", (20, 30)) == (rows, cols)


@pytest.mark.parametrize(
    "value, problem",
    [("[1:31,1:5]", "does not fit"), ("[0:10,1:5]", "does not fit"), ("1:10,1:5", "is not")],
)
def test_a_section_that_does_not_fit_names_file_keyword_and_value(value, problem):
    with pytest.raises(SectionError) as err:
        parse_section(value, (20, 30), path="raw/ccd_012.fits", keyword="BIASSEC")
    message = str(err.value)
    assert "raw/ccd_012.fits" in message and "BIASSEC" in message and value in message
    assert problem in message


def test_per_row_overscan_recovers_the_bias_level():
    raw, level = _frame()
    biassec = parse_section(BIASSEC, raw.shape)
    levels = overscan_levels(raw, biassec, method="median")
    # median of 14 columns with read noise 4: error ~ 1.25*4/sqrt(14) ~ 1.3 ADU per row
    assert np.std(levels - level) < 2.0 and abs(np.mean(levels - level)) < 0.5
    smooth = overscan_levels(raw, biassec, method="poly", order=5)
    assert np.std(smooth - level) < 0.6  # the polynomial averages rows: much better


def test_subtract_and_trim():
    raw, _ = _frame(slope=False)
    out, _ = subtract_overscan(
        raw, parse_section(BIASSEC, raw.shape), parse_section(TRIMSEC, raw.shape), "poly", 1
    )
    assert out.shape == (NY, NX)
    assert np.median(out) == pytest.approx(500.0, abs=0.5)
    assert raw.shape == (NY, NX + NOVER)  # input untouched


def test_signal_in_the_overscan_is_detected():
    clean, _ = _frame(seed=1)
    lit, _ = _frame(seed=1, stars=True)
    biassec = parse_section(BIASSEC, clean.shape)
    assert signal_in_overscan(clean, biassec)[0] is False
    found, detail = signal_in_overscan(lit, biassec)
    assert found and "above" in detail
    # a BIASSEC that points into the illuminated image area is caught too
    wrong = parse_section(f"[{NX - 20}:{NX + NOVER},1:{NY}]", clean.shape)
    assert signal_in_overscan(clean, wrong)[0] is True
