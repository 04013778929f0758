"""Detector sections and overscan correction.

Sections use the FITS/IRAF convention ``[x1:x2,y1:y2]``: 1-based, inclusive, x along a
row (NAXIS1). They come from header keywords (BIASSEC, TRIMSEC, DATASEC) or from the
configuration, and a section that does not fit the image is an error that names the
file, the keyword and the value: never a silent crop.

Overscan: the level of each row is measured in the overscan columns (median over the
columns, robust to cosmic rays), optionally smoothed along the rows by a low-order
polynomial, and subtracted from the whole row before trimming.
"""

__all__ = [
    "SectionError",
    "check_configured",
    "overscan_levels",
    "parse_section",
    "resolve_sections",
    "signal_in_overscan",
    "subtract_overscan",
]

import re

import numpy as np

_SECTION = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


class SectionError(ValueError):
    """A section that cannot be parsed or does not fit the image."""

    def __init__(self, path, keyword, value, problem):
        self.path, self.keyword, self.value = str(path), keyword, value
        super().__init__(f"{path}: {keyword} = {value!r} {problem}")


def parse_section(value, shape, *, path="", keyword="section"):
    """Parse ``[x1:x2,y1:y2]`` into numpy slices, validated against ``shape``.

    Parameters
    ----------
    value : str
        FITS section, 1-based and inclusive. Reversed ranges (``[50:1,...]``, which some
        instruments write for flipped read-out) are accepted and normalised.
    shape : tuple of int
        ``(ny, nx)`` of the image the section refers to.
    path, keyword : str
        Named in the error message.

    Returns
    -------
    (slice, slice)
        ``(rows, columns)``, 0-based, for ``data[rows, columns]``.

    Raises
    ------
    SectionError
        If the value is not a section, or the section leaves the image.
    """
    m = _SECTION.match(str(value))
    if m is None:
        raise SectionError(path, keyword, value, "is not a section like [x1:x2,y1:y2]")
    x1, x2, y1, y2 = (int(v) for v in m.groups())
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    ny, nx = shape
    if x1 < 1 or y1 < 1 or x2 > nx or y2 > ny:
        raise SectionError(
            path, keyword, value, f"does not fit the image of {nx} x {ny} pixels (NAXIS1 x NAXIS2)"
        )
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def resolve_sections(header, shape, overscan, path=""):
    """Overscan and trim sections of a raw frame, from header keywords or literals.

    ``overscan['biassec']`` / ``overscan['trimsec']`` are either a header keyword
    (``'BIASSEC'``) or a literal section (``'[1:2048,1:4096]'``); an empty trimsec keeps
    the whole frame. Raises :class:`ccdflow.sections.SectionError` naming file, keyword
    and value when a section is missing or does not fit.
    """
    out = []
    for what in ("biassec", "trimsec"):
        spec = str(overscan.get(what) or "").strip()
        if what == "trimsec" and not spec:
            out.append((slice(0, shape[0]), slice(0, shape[1])))
            continue
        if spec.startswith("["):
            value, keyword = spec, f"overscan.{what}"
        else:
            value, keyword = header.get(spec), spec
            if value in (None, ""):
                raise SectionError(path, keyword, None, f"is missing ({what} of the overscan)")
        out.append(parse_section(value, shape, path=path, keyword=keyword))
    return out[0], out[1]


def check_configured(overscan):
    """Literal sections of the ``overscan`` configuration that cannot be a section of any
    image raise :class:`SectionError` naming the key (header keywords are checked per
    frame, by the inventory)."""
    for what in ("biassec", "trimsec"):
        spec = str(overscan.get(what) or "").strip()
        if spec.startswith("["):
            parse_section(spec, (10**9, 10**9), path="config", keyword=f"overscan.{what}")


def overscan_levels(data, biassec, method="median", order=3):
    """Overscan level of every row of ``data`` (ADU).

    Parameters
    ----------
    data : numpy.ndarray
        Raw frame (ADU), not modified.
    biassec : (slice, slice)
        Overscan region (from :func:`parse_section`); must cover all rows of the frame
        that are to be corrected (serial overscan: a block of columns).
    method : {'median', 'poly'}
        ``median``: per-row median of the overscan columns; ``poly``: those medians
        smoothed by a Legendre polynomial of ``order`` along the rows.

    Returns
    -------
    numpy.ndarray
        float32 level per row of the frame; rows outside ``biassec`` take the nearest
        measured row's level.
    """
    rows, cols = biassec
    per_row = np.median(np.asarray(data[rows, cols], dtype=np.float64), axis=1)
    y = np.arange(data.shape[0])[rows]
    if method == "poly":
        fit = np.polynomial.legendre.Legendre.fit(y, per_row, deg=order)
        levels = fit(np.arange(data.shape[0]))
    elif method == "median":
        levels = np.interp(np.arange(data.shape[0]), y, per_row)
    else:
        raise ValueError(f"overscan method {method!r} is not 'median' or 'poly'")
    return levels.astype(np.float32)


def subtract_overscan(data, biassec, trimsec=None, method="median", order=3):
    """Subtract the per-row overscan level and trim to ``trimsec``.

    Returns
    -------
    data : numpy.ndarray
        float32, overscan-subtracted and trimmed (a new array).
    levels : numpy.ndarray
        The per-row levels that were subtracted (ADU).
    """
    levels = overscan_levels(data, biassec, method=method, order=order)
    out = np.asarray(data, dtype=np.float32) - levels[:, None]
    if trimsec is not None:
        out = out[trimsec]
    return np.ascontiguousarray(out), levels


def signal_in_overscan(data, biassec, read_noise_adu=None, threshold=8.0, max_fraction=1e-3):
    """Does the overscan region hold light? (a wrong BIASSEC, or charge bleeding into it)

    The overscan should hold read noise only. Pixels more than ``threshold`` noise above
    their row's level are counted (cosmic rays hit a few); more than ``max_fraction`` of
    them, a row profile that wanders by more than ``threshold`` noise / sqrt(ncols), or
    a column whose median is more than ``threshold`` noise off the others (the section
    reaches into the image) means signal.

    Returns
    -------
    (bool, str)
        Whether signal was found, and a description with the numbers.
    """
    from astropy.stats import mad_std

    rows, cols = biassec
    region = np.asarray(data[rows, cols], dtype=np.float64)
    per_row = np.median(region, axis=1)
    resid = region - per_row[:, None]
    noise = float(read_noise_adu) if read_noise_adu else float(mad_std(resid))
    noise = max(noise, 0.5)  # quantised data: never below half an ADU
    hot = float(np.mean(resid > threshold * noise))
    wander = float(mad_std(np.diff(per_row)) / np.sqrt(2))
    limit = threshold * noise / np.sqrt(region.shape[1])
    # a real overscan is flat across its columns; image columns inside it are not
    columns = np.median(region, axis=0)
    step = float(np.max(np.abs(columns - np.median(columns))))
    found = bool(hot > max_fraction or wander > limit or step > threshold * noise)
    return found, (
        f"{100 * hot:.3f} % of overscan pixels above {threshold:g} sigma; row-to-row level "
        f"scatter {wander:.3g} ADU (limit {limit:.3g}); largest column offset {step:.3g} ADU "
        f"(limit {threshold * noise:.3g})"
    )
