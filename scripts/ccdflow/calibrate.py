"""Master calibration frames and calibrated science frames.

Units: raw frames and masters are in ADU; a calibrated frame is in electrons when the
gain is known (``BUNIT = 'electron'``), otherwise in ADU. Masters are combined in row
bands, each input read once, so memory stays under a limit for any number of inputs.

Arithmetic (DESIGN §5):

- master bias  = combine(raw_i)
- master dark  = combine(raw_i - bias), one per exposure group, EXPTIME = median
- master flat  = combine((raw_i - bias - dark * t_i / t_dark) / m_i), m_i = median of
  the central region of each flat; then divided by its own central median; values
  below ``floor`` are masked (``FLAT_LOW``) and set to 1
- calibrated   = (raw - bias - dark * t / t_dark) / flat  [* gain]
"""

__all__ = [
    "CALIBRATION_GATES",
    "DEFECT_CARDS",
    "Master",
    "MasterError",
    "calibrate_frame",
    "central_region",
    "make_master",
    "prepare_raw",
    "read_noise_adu",
]

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ccdflow import bits, metrics, provenance
from ccdflow.combine import band_rows, combine_stack
from ccdflow.sections import resolve_sections


@dataclass
class Master:
    """A master calibration in memory: data, standard error and mask bits (ADU)."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray
    header: object  # astropy.io.fits.Header
    name: str = ""
    exptime: float = 0.0
    #: per input frame, in input order: its metrics and the gates' decision
    #: (`gate_calibration_frames`); empty for a master read from a file
    frames: list = field(default_factory=list)


class MasterError(ValueError):
    """No input frame of a master passed its gates; the message names each and why."""

    #: bad input, not a bug: a job stops with the message only (`ccdflow.tasks.setup_logging`)
    user_error = True

    def __init__(self, message, frames=()):
        super().__init__(message)
        #: per input frame, the gates' decision (`gate_calibration_frames`), each rejected
        self.frames = list(frames)


def central_region(shape, fraction=0.5):
    """Slices of the central ``fraction`` of each axis (flat normalisation region)."""
    ny, nx = shape
    my, mx = int(ny * (1 - fraction) / 2), int(nx * (1 - fraction) / 2)
    return slice(my, ny - my), slice(mx, nx - mx)


def _overscan_levels(strip, rows, overscan):
    """Per-row overscan level of the whole frame from its overscan columns (``strip``)."""
    from ccdflow.sections import overscan_levels

    return overscan_levels(
        strip,
        (rows, slice(None)),
        method=overscan.get("method", "median"),
        order=overscan.get("order", 3),
    )


class _RowReader:
    """Rows of one raw frame, overscan-subtracted and trimmed, read band by band through
    the one row reader (`ccdflow.io.ImageRows`: each byte read once, float32 with
    BSCALE/BZERO applied and BLANK as NaN)."""

    def __init__(self, path, hdu, overscan=None):
        from ccdflow.io import image_hdus

        self.path = path
        with image_hdus(path) as hdus:
            self._image = hdus[hdu].rows(integers=False)
            self.header = self._image.header.copy()
        self.shape = self._image.shape
        self.raw_shape = self.shape
        self.levels = None
        self._trim = (slice(0, self.shape[0]), slice(0, self.shape[1]))
        if overscan:
            biassec, self._trim = resolve_sections(self.header, self.shape, overscan, path)
            # the overscan columns of every row (for a polynomial along the rows)
            strip = self._raw_rows(0, self.shape[0], biassec[1])
            self.levels = _overscan_levels(strip, biassec[0], overscan)
            self.shape = (
                self._trim[0].stop - self._trim[0].start,
                self._trim[1].stop - self._trim[1].start,
            )

    def _raw_rows(self, y0, y1, cols=slice(None), out=None):
        return self._image.rows(y0, y1, cols, out)

    def rows(self, y0, y1, saturation=None, out=None, nonfinite=True):
        """Rows ``y0:y1`` of the (trimmed) frame: values (overscan subtracted; into
        ``out``, a float32 array of their shape, if given), a mask of non-finite values
        (None unless ``nonfinite``), and a mask of raw values at or above
        ``saturation``."""
        ty, tx = self._trim
        raw = self._raw_rows(y0 + ty.start, y1 + ty.start, tx, out)
        return self._finish(raw, slice(y0 + ty.start, y1 + ty.start), saturation, nonfinite)

    def rows_at(self, ys, saturation=None):
        """Rows ``ys`` (indices into the trimmed frame), as `rows` returns them."""
        ty, tx = self._trim
        ys = np.asarray(ys, int) + ty.start
        return self._finish(self._image.rows_at(ys, tx), ys, saturation)

    def _finish(self, raw, at, saturation, nonfinite=True):
        bad = ~np.isfinite(raw) if nonfinite else None
        sat = raw >= saturation if saturation is not None else np.zeros(raw.shape, bool)
        if self.levels is not None:
            raw -= self.levels[at, None]  # (a new array or the caller's buffer)
        return raw, bad, sat

    def close(self):
        self._image = None


def _open_all(frames, overscan=None):
    from ccdflow.io import FrameError
    from ccdflow.sections import SectionError

    readers = []
    try:
        for path, hdu in frames:
            try:
                readers.append(_RowReader(path, hdu, overscan))
            except SectionError:
                raise
            except Exception as exc:
                raise FrameError(path, "unreadable", f"{type(exc).__name__}: {exc}") from exc
        shapes = {r.shape for r in readers}
        if len(shapes) != 1:
            detail = ", ".join(f"{r.path}: {r.shape}" for r in readers)
            raise FrameError(readers[0].path, "shape_mismatch", detail)
    except BaseException:
        for r in readers:
            r.close()
        raise
    return readers


def read_noise_adu(a, b):
    """Read noise (ADU) from two bias frames: robust std of their difference / sqrt(2)
    (astropy's ``mad_std``: 1.482602218505602 x the median absolute deviation)."""
    return float(_mad(np.asarray(a, np.float64) - b) * 1.482602218505602 / np.sqrt(2))


def _mad(values):
    """``np.median(np.abs(values - np.median(values)))`` (NaN if a value is NaN)."""
    return _median_and_mad(values)[1]


def _median_and_mad(values):
    """``np.median(values)`` and :func:`_mad` of ``values``, the median taken once.

    Integer values (raw ADU differences) are counted in a histogram rather than
    partitioned, which takes a fraction of the time for the same result.
    """
    v = np.ravel(values)
    if v.size:
        lo, hi = v.min(), v.max()
        if np.isfinite(lo) and np.isfinite(hi) and hi - lo < 2**22:
            offset = (v - lo).astype(np.int32)
            if np.array_equal(offset + lo, v):
                return _mad_of_counts(np.bincount(offset), lo, v.size)
    centre = np.median(v)  # (a numpy scalar: the subtraction keeps numpy's dtype rules)
    return float(centre), float(np.median(np.abs(v - centre)))


def _mad_of_counts(counts, lo, size):
    """Median and MAD of ``size`` integers, ``counts[j]`` of them equal to ``lo + j``."""

    def median(order, values, counts):  # the mean of the two middle values, as numpy
        cum = np.cumsum(counts)
        middle = np.searchsorted(cum, [(size - 1) // 2, size // 2], side="right")
        return float(values[order[middle]].sum()) / 2

    values = lo + np.arange(counts.size, dtype=np.float64)
    centre = median(np.arange(counts.size), values, counts)
    deviation = np.abs(values - centre)
    order = np.argsort(deviation, kind="stable")
    return centre, median(order, deviation, counts[order])


#: Gates of each calibration frame against the other frames of its master, by master
#: kind (rules as data: `ccdflow.metrics.Gate`, decided by `ccdflow.metrics.gate_group`;
#: the key is that of ``calibration.gates``, whose defaults are these thresholds). In
#: table order, the first failing gate is the reason. Why each default:
#:
#: * ``no_signal``: a flat whose central median (bias and dark subtracted) is not
#:   positive holds no light (an all-zero file, a closed shutter); not configurable.
#: * ``saturated``: more than 1 % of the pixels at the saturation level. A bias, dark or
#:   flat has no stars: hot pixels are ~0.1 %, so 1 % is an overexposed flat (twilight
#:   too bright) or a mislabelled light, whose saturated pixels the combine would miss
#:   in its normalisation.
#: * ``faint``: a flat with less than 0.1 x the median level of the other flats (e.g. a
#:   shutter failure or the lamp off). Twilight series span a factor of 2-5 in level and
#:   are kept; at a tenth of the level a flat brings sqrt(10) times the noise of the
#:   others, and a still fainter one is no flat at all.
#: * ``wrong_pattern``: a flat whose normalised large-scale pattern (medians of 16 x 16
#:   cells) differs from the median pattern of the master's other good flats by > 1 %
#:   rms: another filter (other dust shadows and vignetting), a light leak, a cloud in a
#:   sky flat; it would put a 1 % error into the photometry. Good flats of one filter
#:   agree to ~0.2 % (cell noise); a twilight gradient changing by 3 % across the field
#:   between flats is still under 1 % rms.
#: * ``noisy``: a bias or dark whose pixel noise (neighbour differences) is more than 2 x
#:   the median of the others: a readout fault, a light leak, a mislabelled light.
#: * ``outliers``: more than 2 % of the frame's (sampled, unsaturated) pixels more than 5
#:   robust sigma from the median of the other good frames of the master
#:   (`_outlier_fractions`; flats level-matched): a light leak, a gradient, a mislabelled
#:   frame. A dark with a bright blob over 10 % of the frame passes every gate above
#:   (its neighbour-difference noise grows by about 1.2 x) and scores 0.10 here. Normal
#:   frames score 0 (biases, flats) to 0.1-0.4 % (darks: cosmic rays, the photon noise of
#:   hot pixels; M51's darks 0.10 %, the generated 300 s darks 0.2-0.4 %), so the limit
#:   leaves 5 x room above a long dark and a leak over more than 2 % of the frame is
#:   caught. Needs two other good frames (None and no decision otherwise).
_OUTLIERS = metrics.Gate("outliers", "outlier_fraction", "above", 0.02, "max_outlier_fraction")
CALIBRATION_GATES = {
    "bias": (
        metrics.Gate("saturated", "saturated_fraction", "above", 0.01, "max_saturated_fraction"),
        metrics.Gate("noisy", "noise", "above_median", 2.0, "max_noise_ratio"),
        _OUTLIERS,
    ),
    "flat": (
        metrics.Gate("no_signal", "level", "at_most", 0.0),
        metrics.Gate("saturated", "saturated_fraction", "above", 0.01, "max_saturated_fraction"),
        metrics.Gate("faint", "level", "below_median", 0.1, "min_flat_level_ratio"),
        metrics.Gate("wrong_pattern", "pattern_rms", "above", 0.01, "max_flat_pattern_rms"),
        _OUTLIERS,
    ),
}
CALIBRATION_GATES["dark"] = CALIBRATION_GATES["bias"]

_PATTERN_CELLS = 16


#: Rows of a calibration frame its gate measures use: frames taller than twice this are
#: sampled every ``ny // _MEASURE_ROWS``-th row (256 rows: medians to well under 1 % of
#: the pixel noise), so a master reads each input once in full plus that sample, instead
#: of twice (4128 x 2080 frames: 1/8 more bytes; 96-512 rows: every row).
_MEASURE_ROWS = 256
#: Columns per sampled row kept for the outlier fraction (every ``nx // 512``-th column of
#: a wide frame): at most 256 x 1023 values per frame stay in memory during the combine.
_MEASURE_COLUMNS = 512
#: A pixel is an outlier against its group when it deviates from the median of the other
#: frames by more than this many robust sigma (`_outlier_fractions`).
OUTLIER_SIGMA = 5.0


def _frame_measures(reader, kind, bias, dark, scale, saturation):
    """Level (central median, bias/dark subtracted), pixel noise, saturated fraction and,
    for flats, the cell pattern (medians of cells / level) of one input frame, from every
    row, or every ``ny // _MEASURE_ROWS``-th row of a tall frame. (Along the columns the
    noise then compares rows ``step`` apart, which still cancels column patterns; the
    smaller of the two directions is used.)"""
    ny, nx = reader.shape
    step = max(1, ny // _MEASURE_ROWS)
    rows = np.arange(0, ny, step)
    if step == 1:
        raw, bad, sat = reader.rows(0, ny, saturation)
        values = _subtract(raw, bias, dark, scale, slice(0, ny))
    else:  # every step-th row: a sample, not a second read of the whole file
        raw, bad, sat = reader.rows_at(rows, saturation)
        values = _subtract(raw, bias, dark, scale, rows)
    ys, xs = central_region((ny, nx))
    ys = (rows >= ys.start) & (rows < ys.stop)
    centre = values[ys][:, xs]
    # no finite value at all: no signal (level 0), which no flat passes
    level = float(np.nanmedian(centre)) if np.isfinite(centre).any() else 0.0
    out = {
        "level": level,
        "noise": _pixel_noise(centre, ~(bad | sat)[ys][:, xs]),
        "saturated_fraction": float(np.count_nonzero(sat)) / sat.size,
        "pattern": None,
        # the same rows, every nx // _MEASURE_COLUMNS-th column, for the outlier fraction
        # against the other frames (`_outlier_fractions`); saturated pixels, which the
        # combine leaves out and the saturated gate counts, are NaN
        "sample": np.where(sat, np.nan, values)[:, :: max(1, nx // _MEASURE_COLUMNS)].astype(
            np.float32
        ),
    }
    if kind == "flat" and level is not None and level > 0:
        my = values.shape[0]
        cy, cx = max(1, my // _PATTERN_CELLS), max(1, nx // _PATTERN_CELLS)
        cells = values[: my // cy * cy, : nx // cx * cx].reshape(my // cy, cy, nx // cx, cx)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN cell
            out["pattern"] = np.nanmedian(cells, axis=(1, 3)) / level
    return out


def _pixel_noise(image, valid):
    """Pixel noise of one frame (the ``noisy`` gate; a one-frame master's uncertainty):
    std of neighbour differences within 5 robust sigma of their median, / sqrt(2), the
    smaller along rows and columns (differences cancel gradients, and along the right
    axis column or row patterns, which only add to the spread).

    Unlike the median absolute deviation of integer differences (a raw bias), this is not
    quantised to steps of ~1 ADU, which a ratio of 2 between frames would trip over; for
    integer differences the clipping spread is at least 1 ADU for the same reason.
    """
    spreads = []
    for a, b, ok in (
        (image[:, 1:], image[:, :-1], valid[:, 1:] & valid[:, :-1]),
        (image[1:], image[:-1], valid[1:] & valid[:-1]),
    ):
        diff = (a - b)[ok].astype(np.float64)
        if diff.size < 2:
            continue
        centre, mad = _median_and_mad(diff)
        spread = 1.482602218505602 * mad
        if spread < 1.0 and np.array_equal(diff, np.round(diff)):
            spread = 1.0  # quantised ADU differences
        kept = diff[np.abs(diff - centre) < 5 * spread]
        spreads.append(float(np.std(kept) / np.sqrt(2)))
    return min(spreads) if spreads else 0.0


def gate_calibration_frames(measures, kind, thresholds=None, names=None):
    """Decide which input frames of a master are combined.

    Parameters
    ----------
    measures : list of dict
        Per frame: ``level``, ``noise``, ``saturated_fraction`` and (flats) ``pattern``,
        the normalised cell medians (:func:`_frame_measures`).
    kind : {'bias', 'dark', 'flat'}
    thresholds : dict, optional
        The ``calibration.gates`` configuration (key -> threshold, None: gate off).
    names : list of str, optional
        Frame names for the rows.

    Returns
    -------
    list of dict
        Per frame: ``frame``, the metrics (``pattern_rms``: rms of the frame's pattern /
        the median pattern of the other flats that pass the other gates - 1; None
        without such flats), and the decision
        of `ccdflow.metrics.gate_group` (``status``, ``reason``, ``value``, ``threshold``,
        ``detail``).
    """
    from ccdflow.select import gate_thresholds

    gates = CALIBRATION_GATES[kind]
    limits = gate_thresholds(thresholds or {}, gates)
    rows = [{k: v for k, v in m.items() if k not in ("pattern", "sample")} for m in measures]
    if kind == "flat":
        # each flat's reference: the median pattern of the *other* flats that pass the
        # other gates (a frame is never compared with itself)
        others = [g for g in gates if g.metric != "pattern_rms"]
        first = metrics.gate_group(
            rows, {g.reason: limits[g.reason] for g in others if g.key}, others
        )
        good = [
            i
            for i, (m, d) in enumerate(zip(measures, first, strict=True))
            if d["status"] == "ok" and m["pattern"] is not None
        ]
        others_median = _OthersMedian([measures[j]["pattern"] for j in good])
        for i, (row, m) in enumerate(zip(rows, measures, strict=True)):
            row["pattern_rms"] = None
            rest = len(good) - (i in good)
            if rest and m["pattern"] is not None:
                reference = others_median(good.index(i) if i in good else None)
                with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    rms = float(np.sqrt(np.nanmean((m["pattern"] / reference - 1) ** 2)))
                row["pattern_rms"] = rms if np.isfinite(rms) else None
    # the outlier fraction against the frames that pass every other gate
    others = [g for g in gates if g.metric != "outlier_fraction"]
    first = metrics.gate_group(rows, {g.reason: limits[g.reason] for g in others if g.key}, others)
    good = [i for i, d in enumerate(first) if d["status"] == "ok"]
    for row, fraction in zip(rows, _outlier_fractions(measures, kind, good), strict=True):
        row["outlier_fraction"] = fraction
    decisions = metrics.gate_group(rows, limits, gates)
    names = names or [str(i) for i in range(len(rows))]
    return [
        {
            "frame": name,
            **row,
            **{k: d[k] for k in ("status", "reason", "value", "threshold", "detail")},
        }
        for name, row, d in zip(names, rows, decisions, strict=True)
    ]


class _OthersMedian:
    """Per pixel, the median of a group of frames' values without one of them, NaN
    ignored: ``np.nanmedian`` of the others, bit for bit, from one sort of the group
    (a median per frame of the ``n - 1`` others would sort ``n`` times).

    Parameters
    ----------
    arrays : list of array
        The group's frames (same shape).
    """

    def __init__(self, arrays):
        self.shape = np.shape(arrays[0]) if arrays else ()
        # pixels x frames: each pixel's values side by side, sorted along the last axis
        # (4x faster than along the first). Which of equal values sorts first does not
        # matter: leaving out either leaves the same values.
        stack = np.stack([np.ravel(a) for a in arrays], axis=1) if arrays else np.empty((0, 0))
        self.n = stack.shape[1]
        order = np.argsort(stack, axis=1)  # NaN last
        self._sorted = np.take_along_axis(stack, order, axis=1)
        finite = np.isfinite(stack)
        self._count = finite.sum(axis=1)
        # rank of each frame's value among the group's, pixel by pixel; it and the finite
        # flags are kept frames x pixels, so that one frame's are read contiguously
        rank = np.empty_like(order)
        ranks = np.broadcast_to(np.arange(self.n)[None, :], order.shape)
        np.put_along_axis(rank, order, ranks, axis=1)
        self._rank = np.ascontiguousarray(rank.T)
        self._finite = np.ascontiguousarray(finite.T)

    def __call__(self, leave_out=None):
        """The median without frame ``leave_out`` (an index into ``arrays``; None: all)."""
        if leave_out is None:
            rank, count = self.n, self._count
        else:
            rank, count = self._rank[leave_out], self._count - self._finite[leave_out]
        # the two middle values of the others, as indices into the group's sorted values
        lo, hi = np.maximum(count - 1, 0) // 2, count // 2
        lo = np.minimum(lo + (lo >= rank), self.n - 1)
        hi = np.minimum(hi + (hi >= rank), self.n - 1)
        pixels = np.arange(self._sorted.shape[0])
        with np.errstate(invalid="ignore"):
            median = (self._sorted[pixels, lo] + self._sorted[pixels, hi]) / 2
        median[count == 0] = np.nan
        return median.reshape(self.shape)


def _outlier_fractions(measures, kind, good):
    """Per frame, the fraction of its sampled pixels that are outliers against the rest of
    its group (`OUTLIER_SIGMA`); None where it cannot be told.

    Each frame's row sample (flats divided by their level, so that levels are matched) is
    compared pixel by pixel with the median of the samples of the *other* frames of
    ``good`` (those that pass the other gates). Fixed patterns (bias structure, hot
    pixels, dust, vignetting) are the same in every frame and cancel; what is left is the
    frame's noise plus whatever is its own: a light leak, a gradient, cosmic rays. A pixel
    is an outlier when its residual lies more than `OUTLIER_SIGMA` robust sigma (1.4826 x
    the median absolute deviation of all the frame's residuals, about their median) from
    the median residual. The spread is the frame's, pooled over its ~10^5 sampled pixels,
    not a per-pixel spread across the group: with the 3-10 frames of a master a pixel's
    own spread is too noisy (its MAD can be 0), while a calibration frame's noise is
    nearly uniform. A Gaussian frame has 6e-7 of its pixels beyond 5 sigma.

    Saturated pixels are not counted (the ``saturated`` gate does). None with fewer than
    two other good frames (with one, a defect of either frame shows in both and cannot be
    attributed), and for a flat without signal.
    """

    def matched(j):
        sample = measures[j]["sample"]
        return sample / np.float32(measures[j]["level"]) if kind == "flat" else sample

    others_median = _OthersMedian([matched(j) for j in good])
    out = []
    for i, m in enumerate(measures):
        level_ok = kind != "flat" or m["level"] > 0
        if len(good) - (i in good) < 2 or not level_ok:
            out.append(None)
            continue
        reference = others_median(good.index(i) if i in good else None)
        residual = (matched(i) - reference).ravel()
        residual = residual[np.isfinite(residual)].astype(np.float64)
        if residual.size == 0:
            out.append(None)
            continue
        centre, mad = _median_and_mad(residual)
        spread = 1.482602218505602 * mad
        if spread == 0:
            spread = float(np.std(residual))
        if spread == 0:
            out.append(0.0)
            continue
        n = int(np.count_nonzero(np.abs(residual - centre) > OUTLIER_SIGMA * spread))
        out.append(n / residual.size)
    return out


def make_master(
    frames,
    kind,
    clip,
    bias=None,
    dark=None,
    dark_scales=None,
    saturation=None,
    mem_limit_mb=2000,
    flat_floor=0.1,
    overscan=None,
    gates=None,
    badpix=None,
):
    """Make a master bias, dark or flat from the input frames that pass their gates.

    Parameters
    ----------
    frames : list of (path, hdu)
        Raw input frames (ADU); never modified.
    kind : {'bias', 'dark', 'flat'}
    clip : ccdflow.combine.Clip
        How the frames are combined (`ccdflow.combine.Clip.from_config` of
        ``combine.<kind>``).
    bias : Master, optional
        Subtracted from every input (darks, flats).
    dark : Master, optional
        Subtracted from every input after scaling by ``dark_scales[i]`` (flats).
    saturation : float, optional
        Raw values at or above it (ADU) are excluded from the combination.
    mem_limit_mb : float
        Memory budget of the stack of one band.
    flat_floor : float
        Flats: normalised values below it are masked and set to 1.
    overscan : dict, optional
        ``biassec``, ``trimsec`` (keywords or literal sections), ``method``, ``order``:
        every input gets its per-row overscan level subtracted and is trimmed first.
    gates : dict, optional
        The ``calibration.gates`` thresholds (`CALIBRATION_GATES`; a key left out takes
        the gate's default, None switches a gate off). A frame that fails one is left out
        of the master, with its reason and measured value in ``Master.frames``.
    badpix : dict, optional
        Detector-defect thresholds (`ccdflow.badpix.DEFAULTS` keys; a key left out takes
        its default); None: no defect bits. A master dark gets `bits.HOT` on the hot
        pixels of its dark rate (ADU/s; `ccdflow.badpix.find_hot`), a master flat
        `bits.DEAD` and `bits.BAD_COLUMN` (`find_low`, `find_bad_columns`); every frame
        the master calibrates inherits them (`calibrate_frame`). Biases get none.

    Returns
    -------
    Master
        Data in ADU (flats: dimensionless, central median 1); the header carries the
        provenance (inputs, method, masters used, defect counts).

    Raises
    ------
    MasterError
        When no input frame passes the gates (the message names each and why).
    """
    if kind not in ("bias", "dark", "flat"):
        raise ValueError(f"unknown master kind {kind!r}")
    readers = _open_all(frames, overscan)
    try:
        scales = np.ones(len(frames)) if dark_scales is None else np.asarray(dark_scales, float)
        measures = [
            _frame_measures(r, kind, bias, dark, scales[i], saturation)
            for i, r in enumerate(readers)
        ]
        qc = gate_calibration_frames(measures, kind, gates, [Path(str(p)).name for p, _ in frames])
        keep = [i for i, row in enumerate(qc) if row["status"] == "ok"]
        _report_exclusions(kind, qc, keep)
        for i in sorted(set(range(len(readers))) - set(keep)):
            readers[i].close()
        readers = [readers[i] for i in keep]
        frames = [frames[i] for i in keep]
        scales = scales[keep]
        ny, nx = readers[0].shape
        n = len(readers)
        norm = np.ones(n, dtype=np.float64)
        if kind == "flat":  # exact: the gates' level may come from a row sample
            norm = _flat_levels(readers, bias, dark, scales)
        step = band_rows(n, nx, ny, mem_limit_mb)
        data = np.empty((ny, nx), np.float32)
        unc = np.empty((ny, nx), np.float32)
        nused = np.empty((ny, nx), np.int16)
        nsat = 0
        pair = np.empty((ny, nx), np.float32) if kind == "bias" and n >= 2 else None
        # The frames' rows of a band (bias and dark subtracted), one buffer for all
        # bands, handed to the kernel frame by frame (no stack is assembled).
        buffer = np.empty((n, min(step, ny) * nx), np.float32)
        values, masks = [], []
        for y0 in range(0, ny, step):
            y1 = min(ny, y0 + step)
            values, masks = [], []
            for i, r in enumerate(readers):
                values.append(buffer[i, : (y1 - y0) * nx].reshape(y1 - y0, nx))
                # read straight into the buffer (non-finite values: the kernel skips them)
                _, _, sat = r.rows(y0, y1, saturation, out=values[i], nonfinite=False)
                nsat += int(np.count_nonzero(sat))
                masks.append(sat if sat.any() else None)
                _subtract(values[i], bias, dark, scales[i], slice(y0, y1), out=values[i])
                if kind == "flat":
                    values[i] /= norm[i]
            if pair is not None:
                np.subtract(values[1], values[0], out=pair[y0:y1])
            combine_stack(values, masks, clip, out=(data[y0:y1], unc[y0:y1], nused[y0:y1]))
        del buffer, values, masks
        header = readers[0].header.copy()
        exptimes = [float(r.header.get("EXPTIME", r.header.get("EXPOSURE", 0.0))) for r in readers]
    finally:
        for r in readers:
            r.close()

    mask = np.zeros((ny, nx), bits.MASK_DTYPE)
    mask[nused == 0] |= bits.NODATA
    if n == 1:
        # No scatter to measure a standard error from: the master is that frame, with its
        # own pixel noise (from neighbour differences, which cancel gradients and, along
        # the right axis, column or row patterns), not 0.
        single = _pixel_noise(data, nused > 0)
        unc[nused > 0] = single
        header_note = f"one input frame: uncertainty = its measured pixel noise {single:.4g}"
        logging.getLogger("ccdflow").warning(
            "master %s from a single frame (%s): its noise is not averaged down; "
            "uncertainty set to the frame's measured pixel noise %.4g (data unit)",
            kind,
            frames[0][0],
            single,
        )
    for key in ("BZERO", "BSCALE", "BLANK"):
        header.remove(key, ignore_missing=True)
    provenance.stamp(header, f"MASTER_{kind.upper()}")
    provenance.add_inputs(header, [p for p, _ in frames])
    provenance.add_step(header, "COMBMETH", clip.method)
    if clip.clips:
        provenance.add_step(header, "CLIPLOW", clip.sigma_low)
        provenance.add_step(header, "CLIPHIGH", clip.sigma_high)
        provenance.add_step(header, "CLIPSIG", clip.spread)
        provenance.add_step(header, "CLIPITER", clip.maxiters)
    if overscan:
        _record_overscan(header, overscan, readers)
    if bias is not None:
        provenance.add_step(header, "BIASCORR", bias.name)
    if dark is not None:
        provenance.add_step(header, "DARKCORR", dark.name)
        provenance.add_step(header, "DARKEXP", dark.exptime)
    exptime = float(np.median(exptimes)) if kind != "bias" else 0.0
    header["EXPTIME"] = (exptime, "[s] median exposure of the inputs")
    if pair is not None:
        rn = read_noise_adu(pair, 0.0)
        header["RDNOISEM"] = (round(rn, 4), "[adu] read noise measured from bias pairs")
    if nsat:
        provenance.add_step(header, "NSATUR", nsat)
    if n == 1:
        header.add_comment(header_note)
    if kind == "flat":
        provenance.add_step(header, "SCALEMTH", "median of central region, per frame")
        data, mask = _normalise_flat(data, unc, mask, nused, flat_floor, header)
    if badpix is not None and kind in ("dark", "flat"):
        mask = _defect_bits(kind, data, mask, exptime, badpix, header)
    return Master(data=data, uncertainty=unc, mask=mask, header=header, exptime=exptime, frames=qc)


#: Header card of each defect bit's count in a master (and the bad-pixel map).
DEFECT_CARDS = {"HOT": "NHOT", "DEAD": "NDEAD", "BAD_COLUMN": "NBADCOL"}


def _defect_bits(kind, data, mask, exptime, thresholds, header):
    """The master's mask with its detector-defect bits (see `make_master`)."""
    from ccdflow import badpix

    p = badpix.DEFAULTS | {k: v for k, v in thresholds.items() if k in badpix.DEFAULTS}
    mask = mask.copy()
    found = {}
    if kind == "dark":
        rate = data / np.float32(exptime) if exptime > 0 else data
        found[bits.HOT] = badpix.find_hot(
            rate, mask, hot_sigma=p["hot_sigma"], min_excess=p["min_excess"], block=p["block"]
        )
    else:
        found[bits.DEAD] = badpix.find_low(
            data, mask, low_fraction=p["low_fraction"], block=p["block"]
        )
        found[bits.BAD_COLUMN] = badpix.find_bad_columns(
            data,
            mask,
            column_fraction=p["column_fraction"],
            column_band=p["column_band"],
            block=p["block"],
        )
    counts = []
    for bit, where in found.items():
        mask[where] |= bit
        name = bits.BIT_NAMES[int(bit)]
        provenance.add_step(header, DEFECT_CARDS[name], int(where.sum()))
        counts.append(f"{int(where.sum())} {name}")
    logging.getLogger("ccdflow").info("master %s: defect pixels %s", kind, ", ".join(counts))
    return mask


def _report_exclusions(kind, qc, keep):
    log = logging.getLogger("ccdflow")
    bad = [row for row in qc if row["status"] != "ok"]
    for row in bad:
        log.warning(
            "master %s: %s left out: %s (%s)", kind, row["frame"], row["reason"], row["detail"]
        )
    if not keep:
        why = "; ".join(f"{row['frame']}: {row['reason']} ({row['detail']})" for row in bad)
        raise MasterError(
            f"no master {kind}: every input frame failed its gates ({why}); check these "
            "files, or the calibration.gates thresholds",
            qc,
        )
    if bad:
        log.warning("master %s made from %d of its %d frames", kind, len(keep), len(qc))


def _record_overscan(header, overscan, readers):
    levels = [float(np.mean(r.levels)) for r in readers if r.levels is not None]
    ty, tx = readers[0]._trim
    method = overscan.get("method", "median")
    provenance.add_step(header, "OVSCCORR", f"{method}, mean level {np.mean(levels):.2f}")
    provenance.add_step(header, "TRIMSEC", f"[{tx.start + 1}:{tx.stop},{ty.start + 1}:{ty.stop}]")


def prepare_raw(raw, overscan, saturation=None, path=""):
    """Flag saturation on the raw values, then subtract the overscan and trim.

    Parameters
    ----------
    raw : ccdflow.frame.Frame
        Raw frame (ADU); not modified.
    overscan : dict or None
        The ``overscan`` configuration when it is enabled, else None.
    saturation : float, optional
        Raw values at or above it (ADU) get ``bits.SATURATED``.
    path : str
        The raw file, named in errors.

    Returns
    -------
    ccdflow.frame.Frame
        Overscan-subtracted, trimmed data (float32), its mask (with ``SATURATED``) and a
        header copy recording the step; the same data when ``overscan`` is falsy.
    """
    from ccdflow.sections import signal_in_overscan, subtract_overscan

    mask = raw.mask.copy()
    header = raw.header.copy()
    data = raw.data
    if saturation is not None:
        sat = data >= saturation
        mask[sat] |= bits.SATURATED
        provenance.add_step(header, "NSATUR", int(sat.sum()))
    if not overscan:
        return raw.replace(mask=mask, header=header)
    biassec, trimsec = resolve_sections(header, data.shape, overscan, path)
    lit, detail = signal_in_overscan(data, biassec)
    if lit:
        logging.getLogger("ccdflow").warning("%s: signal in the overscan: %s", path, detail)
        provenance.add_step(header, "OVSCWARN", "signal in overscan: " + detail[:40])
    out, levels = subtract_overscan(
        data, biassec, trimsec, overscan.get("method", "median"), overscan.get("order", 3)
    )
    ty, tx = trimsec
    method = overscan.get("method", "median")
    provenance.add_step(header, "OVSCCORR", f"{method}, mean level {float(levels.mean()):.2f}")
    provenance.add_step(header, "TRIMSEC", f"[{tx.start + 1}:{tx.stop},{ty.start + 1}:{ty.stop}]")
    return raw.replace(data=out, mask=np.ascontiguousarray(mask[trimsec]), header=header)


def _subtract(raw, bias, dark, scale, rows, out=None):
    """``raw - bias - scale * dark`` in float32, into ``out`` if given; ``rows`` (a slice
    or row indices) are the masters' rows that ``raw`` holds."""
    if out is None:
        out = np.empty(np.shape(raw), np.float32)
    if bias is not None:
        np.subtract(raw, bias.data[rows], out=out)
    elif raw is not out:
        np.copyto(out, raw)
    if dark is not None and scale != 0:
        out -= np.float32(scale) * dark.data[rows]
    return out


def _flat_levels(readers, bias, dark, scales):
    """Median of the central region of each bias/dark-subtracted flat, the normalisation
    of each input (its central half read once more)."""
    ys, xs = central_region(readers[0].shape)
    levels = []
    for i, r in enumerate(readers):
        centre = _subtract(r.rows(ys.start, ys.stop)[0], bias, dark, scales[i], ys)
        levels.append(float(np.nanmedian(centre[:, xs])))
    return np.asarray(levels)


def _normalise_flat(data, unc, mask, nused, floor, header):
    ys, xs = central_region(data.shape)
    centre = data[ys, xs][nused[ys, xs] > 0]
    level = float(np.median(centre))
    data = data / np.float32(level)
    unc /= np.float32(level)
    low = ~(data >= floor)  # also catches NaN
    data[low] = 1.0
    mask[low] |= bits.FLAT_LOW
    provenance.add_step(header, "FLATNORM", round(level, 6))
    provenance.add_step(header, "FLATFLOO", floor)
    provenance.add_step(header, "NFLATLOW", int(low.sum()))
    return data.astype(np.float32), mask


def calibrate_frame(
    raw,
    bias=None,
    dark=None,
    dark_scale=1.0,
    flat=None,
    gain=None,
    read_noise=None,
    saturation=None,
):
    """Calibrate one science frame.

    Parameters
    ----------
    raw : ccdflow.frame.Frame
        Raw frame (ADU; overscan-subtracted and trimmed where the camera has one), its
        mask (``bits.BAD`` for non-finite pixels) and header. Not modified.
    bias, dark, flat : Master, optional
        Masters; a missing one is recorded as a skipped step.
    dark_scale : float
        Multiplies the master dark (``t_frame / t_dark``; 1 for equal exposures).
    gain : float, optional
        e-/ADU; when given the result is in electrons.
    read_noise : float, optional
        Read noise in electrons (ADU when ``gain`` is None) for the uncertainty plane.
    saturation : float, optional
        Raw values at or above it (ADU) get ``bits.SATURATED``.

    Returns
    -------
    ccdflow.frame.Frame
        float32 calibrated data and standard deviation, mask bits, a new header with the
        provenance, unit ``'electron'`` or ``'adu'``.
    """
    g = 1.0 if gain is None else float(gain)
    rn = 0.0 if read_noise is None else float(read_noise)
    header = raw.header.copy()
    for key in ("BZERO", "BSCALE", "BLANK"):
        header.remove(key, ignore_missing=True)
    mask = raw.mask.copy()
    if saturation is not None:
        sat = raw.data >= saturation
        mask[sat] |= bits.SATURATED
        provenance.add_step(header, "NSATUR", int(sat.sum()))

    signal = raw.data.astype(np.float32, copy=True)
    var_adu = np.zeros(raw.shape, np.float32)
    if bias is not None:
        signal -= bias.data
        var_adu += bias.uncertainty**2
        mask |= bias.mask & (bits.BAD | bits.NODATA)
        provenance.add_step(header, "BIASCORR", bias.name)
    else:
        provenance.add_step(header, "BIASCORR", "skipped: no master bias")
    # Poisson noise of everything the pixel collected (sky, stars, dark current).
    var_e = np.float32(rn**2) + np.maximum(signal * np.float32(g), 0)
    if dark is not None:
        signal -= np.float32(dark_scale) * dark.data
        var_adu += (np.float32(dark_scale) * dark.uncertainty) ** 2
        mask |= dark.mask & (bits.BAD | bits.NODATA | bits.HOT)
        provenance.add_step(header, "DARKCORR", dark.name)
        provenance.add_step(header, "DARKEXP", dark.exptime)
        provenance.add_step(header, "DARKSCAL", round(float(dark_scale), 6))
    else:
        provenance.add_step(header, "DARKCORR", "skipped: no master dark")
    data = signal * np.float32(g)
    var = var_e + var_adu * np.float32(g * g)
    if flat is not None:
        data /= flat.data
        var = var / flat.data**2 + (data * flat.uncertainty / flat.data) ** 2
        mask |= flat.mask & (bits.BAD | bits.NODATA | bits.FLAT_LOW | bits.DEAD | bits.BAD_COLUMN)
        provenance.add_step(header, "FLATCORR", flat.name)
    else:
        provenance.add_step(header, "FLATCORR", "skipped: no master flat")
    if gain is not None:
        provenance.add_step(header, "GAINCORR", g)
    provenance.stamp(header, "CALIBRATED")
    return raw.replace(
        data=data.astype(np.float32),
        uncertainty=np.sqrt(var).astype(np.float32),
        mask=mask,
        header=header,
        unit="electron" if gain is not None else "adu",
    )
