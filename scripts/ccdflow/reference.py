"""The alignment reference of a reference set, chosen for quality and kept stable.

A *reference set* is the frames that share one alignment reference: a stack group
(``align.reference: group``) or an object across filters and exposures (``object``),
one detector setup each (`ccdflow.plan.reference_sets`). Rule ``choose_reference``
measures its candidates and writes ``results/references/{set}.json``; every frame job of
the set reads the reference's star list from that file, so the DAG is known when the
Snakefile is parsed (no checkpoint), and a frame job never waits for another frame job.

Candidates (`candidates`)
-------------------------
The ``align.reference_candidates`` earliest frames of the set (DATE-OBS, then frame id)
when the set is first reduced; once the file exists, the frames it lists, as long as
each is still a frame of the set. So frames arriving later never move the reference,
while a removed candidate, or one whose bytes changed (its fingerprint is a parameter),
chooses again. ``align.reference_frames`` names the reference outright.

Measure and choice (`measure`, `rank`)
--------------------------------------
Each candidate's raw frame is read, overscan-subtracted and trimmed (the calibrated
frame's pixel grid), multiplied by the gain when it is known (electrons) and measured
with `ccdflow.metrics.frame_metrics` (sep background, detections, PSF stars): no master
is needed, so a new calibration frame never touches the reference. The bias, the dark
current and the sky go with the background; hot pixels are masked first (`_spikes`).
The choice: the most detected sources, where counts within
:data:`STAR_COUNT_TIE` of the most are a tie (their scatter is a few per cent, and
cosmic rays are not cleaned here), broken by the smaller median FWHM, then by the
earliest frame. A cloudy, defocused or trailed first frame therefore does not become the
reference while a good frame is among the candidates.

The file holds the chosen frame, every candidate's measures, the reference's star list
(`ccdflow.align.star_list` of the same prepared frame, for `ccdflow.align.match`) and
its photometric catalogue (``metrics['stars']``, for `ccdflow.metrics.transparency`).

Flux scale: the reference's fluxes are those of its raw frame, overscan-subtracted,
times the gain, background-subtracted, *not* flat-fielded. Every frame of the set, the
reference included, gets its transparency against these same fluxes, so the values of a
group stay comparable (the ``cloudy`` gate is relative to the group median); the
reference reads about 1 instead of exactly 1 (the inverse of the flat at its stars,
typically 1.00-1.05).
"""

__all__ = [
    "REFERENCE_VERSION",
    "STAR_COUNT_TIE",
    "candidates",
    "choose_reference",
    "measure",
    "rank",
    "read_candidates",
    "read_reference",
]

import json
import logging
import math
import os

import numpy as np

from ccdflow import __version__, bits

log = logging.getLogger("ccdflow")

#: Layout version of ``results/references/{set}.json``.
REFERENCE_VERSION = 1
#: Star counts within this fraction of the most detected are equally good.
STAR_COUNT_TIE = 0.1
#: Keys of the ``align`` configuration that parameterise star detection.
DETECT_KEYS = ("detection_sigma", "min_area", "max_control_points", "max_sharpness")


def read_candidates(path):
    """The candidate frame ids of an existing reference file, or None (no file, or one
    this version cannot read)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if doc.get("reference_version") != REFERENCE_VERSION:
        return None
    return [c["frame"] for c in doc.get("candidates", [])] or None


def candidates(members, previous=None, n=10, override=None):
    """The candidates of one reference set.

    Parameters
    ----------
    members : list of str
        Frame ids of the set, earliest first (DATE-OBS, then id).
    previous : list of str or None
        The candidates of the set's existing reference file (`read_candidates`).
    n : int
        ``align.reference_candidates``.
    override : str or None
        The frame ``align.reference_frames`` names for this set.

    Returns
    -------
    list of str
        ``[override]``; else ``previous`` when every one of them is still a member; else
        the ``n`` earliest members.
    """
    if override is not None:
        return [override]
    if previous and set(previous) <= set(members):
        return list(previous)
    return list(members[: max(int(n), 1)])


def _spikes(data, mask):
    """``mask`` with `ccdflow.bits.BAD` on point-like spikes (hot pixels, which a raw
    frame keeps): pixels more than 5 sigma above the median of their 3 x 3 box and more
    than 5 times as far above the frame's median level as that box median is. A star of
    FWHM 3 px has its peak 1.4 times above its box median, one of 1.3 px still below 5
    times. On the M51 raw frames this takes the detections from 530-570 (FWHM 0.83 px:
    hot pixels) to 72-83 (FWHM 2.8-3.2 px), what their calibrated frames give (65-72,
    2.9-3.2 px)."""
    # The 3 x 3 box median (scipy's `median_filter(data, 3)`, edges mirrored as its
    # 'reflect' mode does) is needed only at the sampled pixels of the noise estimate and
    # where a pixel can be a spike, so it is computed there alone: a spike lies more
    # than 5 sigma above its box median, which is at least the least of the medians of
    # the box's three rows (each row median has two of the box's values at or above it,
    # so six would lie above a smaller median). Whole-frame filtering took 0.5 s of the
    # 0.7 s a 2048 x 2048 candidate costs.
    data = np.asarray(data, np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        # Blank (NaN) pixels of a raw frame take the frame's median level: neither a
        # spike nor a hole in its neighbours' boxes, and no NaN in the noise, which
        # would flag nothing at all.
        if not finite.any():
            return mask.copy()
        data = np.where(finite, data, np.median(data[finite][::16]))
    padded = np.pad(data, 1, mode="symmetric")
    ny, nx = data.shape

    def box_median(ys, xs):
        return _median9([padded[ys + dy, xs + dx] for dy in range(3) for dx in range(3)])

    ys, xs = np.mgrid[0:ny:4, 0:nx:4]
    sample = data[::4, ::4] - box_median(ys, xs)
    rms = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    level = float(np.median(data[::4, ::4]))
    left, middle, right = padded[:, :-2], padded[:, 1:-1], padded[:, 2:]
    rows = np.maximum(np.minimum(left, middle), np.minimum(np.maximum(left, middle), right))
    lower = np.minimum(np.minimum(rows[:-2], rows[1:-1]), rows[2:])
    ys, xs = np.nonzero(data - lower > 5 * rms)
    box = box_median(ys, xs)
    value = data[ys, xs]
    spike = (value - box > 5 * rms) & ((value - level) > 5 * (box - level))
    out = mask.copy()
    out[ys[spike], xs[spike]] |= bits.BAD
    return out


#: Compare-exchange pairs whose last survivor at index 4 is the median of 9 values (the
#: 19-comparator network of Paeth's median-of-9, as in Devillard's ``opt_med9``).
_MEDIAN9 = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)  # fmt: skip


def _median9(values):
    """Element-wise median of nine equal-shape arrays (no NaN): the same values as
    ``np.median(np.stack(values), axis=0)``, a middle element, without the strided
    partition numpy does along the stacked axis (16x slower on 262,144 pixels)."""
    v = list(values)
    for a, b in _MEDIAN9:
        v[a], v[b] = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
    return v[4]


def _prepare(raw_path, hdu, overscan, saturation, gain):
    from ccdflow import calibrate
    from ccdflow.frame import read_raw

    raw = calibrate.prepare_raw(read_raw(raw_path, hdu), overscan, saturation, raw_path)
    data = raw.data.astype(np.float32)
    if gain is not None:
        data = data * np.float32(gain)
    return data, raw.mask


def measure(raw_path, hdu=0, *, overscan=None, saturation=None, gain=None):
    """Quality of one candidate, from its raw frame (see the module docstring).

    Returns
    -------
    dict
        ``n_stars``, ``fwhm_px``, ``ellipticity``, ``sky`` and ``error`` (``''``, or why
        the frame could not be measured; then the counts are 0 and the FWHM None).
    """
    return _measure(raw_path, hdu, overscan, saturation, gain)[0]


def _measure(raw_path, hdu, overscan, saturation, gain):
    """`measure`, and the `ccdflow.metrics.frame_metrics` record it comes from (None for
    a frame that could not be read)."""
    from ccdflow import metrics
    from ccdflow.io import FrameError

    out = {"n_stars": 0, "fwhm_px": None, "ellipticity": None, "sky": None, "error": ""}
    try:
        data, mask = _prepare(raw_path, hdu, overscan, saturation, gain)
    except FrameError as exc:
        out["error"] = f"{exc.reason}: {exc.detail or exc}"
        return out, None
    q = metrics.frame_metrics(data, _spikes(data, mask))  # as the frame job measures a frame
    out.update(
        n_stars=q["n_stars"], fwhm_px=q["fwhm_px"], ellipticity=q["ellipticity"], sky=q["sky_e"]
    )
    return out, q


def rank(measures):
    """Indices of ``measures`` (earliest frame first) from best to worst reference.

    Most ``n_stars``, counts within `STAR_COUNT_TIE` of the most being a tie; then the
    smaller ``fwhm_px`` (a frame without one last); then the earlier frame.
    """
    if not measures:
        return []
    most = max(m["n_stars"] for m in measures)
    floor = (1 - STAR_COUNT_TIE) * most

    def key(i):
        m = measures[i]
        fwhm = m.get("fwhm_px")
        fwhm = math.inf if fwhm is None or not math.isfinite(fwhm) else fwhm
        tied = most > 0 and m["n_stars"] >= floor
        return (not tied, fwhm if tied else -m["n_stars"], -m["n_stars"] if tied else fwhm, i)

    return sorted(range(len(measures)), key=key)


def choose_reference(name, frames, output, *, overscan=None, align=None, override=False):
    """Measure the candidates of reference set ``name``, choose, write ``output``.

    Parameters
    ----------
    name : str
        The reference set (stack group or object).
    frames : list of dict
        The candidates, earliest first: ``frame`` (id), ``raw`` (path), ``hdu``,
        ``fingerprint``, ``gain`` (e-/ADU or None), ``saturation`` (ADU or None).
    output : path-like
        ``results/references/{name}.json``.
    overscan : dict, optional
        The ``overscan`` configuration when it is enabled.
    align : dict
        The detection keys of the ``align`` configuration (:data:`DETECT_KEYS`).
    override : bool
        The single candidate was named by ``align.reference_frames``.

    Returns
    -------
    dict
        The document written.
    """
    from ccdflow import align as aln
    from ccdflow.framejob import write_json

    align = {k: v for k, v in (align or {}).items() if k in DETECT_KEYS}
    measures, qualities = [], []
    for f in frames:
        m, quality = _measure(
            f["raw"], f.get("hdu", 0), overscan, f.get("saturation"), f.get("gain")
        )
        log.info(
            "%s: %s: %d sources, FWHM %s px%s",
            name,
            f["frame"],
            m["n_stars"],
            "-" if m["fwhm_px"] is None else f"{m['fwhm_px']:.2f}",
            f" ({m['error']})" if m["error"] else "",
        )
        measures.append(m)
        qualities.append(quality)
    order = [i for i in rank(measures) if not measures[i]["error"]] or rank(measures)
    best = order[0]
    chosen = frames[best]
    data, mask = _prepare(
        chosen["raw"], chosen.get("hdu", 0), overscan, chosen.get("saturation"), chosen.get("gain")
    )
    stars = aln.star_list(data, mask, **align)
    quality = qualities[best]  # its metrics as measured among the candidates
    why = (
        "named by align.reference_frames"
        if override
        else f"most sources (ties within {STAR_COUNT_TIE:.0%}), then smallest FWHM, "
        f"of {len(frames)} candidate(s)"
    )
    doc = {
        "reference_version": REFERENCE_VERSION,
        "pipeline_version": __version__,
        "set": name,
        "reference": chosen["frame"],
        "why": why,
        "shape": [int(s) for s in data.shape],
        "unit": "electron" if chosen.get("gain") is not None else "adu",
        "flux_scale": "raw frame, overscan-subtracted and trimmed, times the gain; "
        "background-subtracted, not flat-fielded",
        "candidates": [
            {
                "frame": f["frame"],
                "raw": os.fspath(f["raw"]),
                "fingerprint": f.get("fingerprint", ""),
                **m,
                "rank": order.index(i) + 1 if i in order else None,
                "chosen": i == best,
            }
            for i, (f, m) in enumerate(zip(frames, measures, strict=True))
        ],
        "stars": stars,
        "metrics": {"stars": quality["stars"], "n_stars": quality["n_stars"]},
    }
    log.info(
        "%s: reference %s (%d sources, %d star-like; %s)",
        name,
        chosen["frame"],
        measures[best]["n_stars"],
        stars["n_starlike"],
        why,
    )
    write_json(output, doc)
    return doc


def read_reference(path):
    """A reference file; raises ValueError naming the file when it is not one."""
    from ccdflow.framejob import read_versioned_json

    fix = "delete it to choose the reference again"
    return read_versioned_json(path, "reference_version", REFERENCE_VERSION, fix)
