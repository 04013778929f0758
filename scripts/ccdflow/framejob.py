"""The frame job: one light frame from raw to aligned in one process, and its record.

Calibrate (overscan, bias, scaled dark, flat, gain), clean cosmic rays (astroscrappy),
find its stars, register it onto its reference (the star list of its reference set's
file ``results/references/{set}.json``, `ccdflow.reference`) and resample it: all in memory, on
:class:`ccdflow.frame.Frame` objects. Three files come out:

- ``results/calibrated/{frame}.fits``: calibrated and cosmic-ray-cleaned, native pixels
  (``COSMIC`` bit in its mask): what photometry on single frames needs;
- ``results/aligned/{group}/{frame}.fits``: on the reference's pixel grid; for a frame
  that cannot be aligned a header-only file (no pixels) saying why;
- ``results/records/{frame}.json``: the record (:data:`RECORD_VERSION`): what later jobs
  need from this one (detector values with units and their source, sky and noise,
  cosmic-ray counts, the star list, the transform, status and reason), the quality
  metrics (``metrics``: `ccdflow.metrics.frame_metrics` of the cleaned frame, in its data
  unit, plus ``transparency`` against the reference's catalogue in the reference file
  through the alignment matrix) and the time of each step. No job reads state back from
  a header card; the aligned frame carries the main metrics as provenance cards.

The metrics and the star list share one source extraction (`ccdflow.align.detect`: sep's
background and sources of the cleaned frame, without its masked pixels): the catalogues
differ (alignment keeps the brightest star-like sources with windowed centroids; the
metrics need the segmentation map, isolation and half-flux radii), the extraction they
start from does not. Each uses it only when it is the one it would compute (same pixels
left out, threshold and area; the metrics leave out pixels above a ``saturation`` level
too, when one is given), so sharing changes no result; on the benchmark night (2048 x
2048) it saves about 0.15 s of CPU a frame (one background and one extraction).

A frame the chain cannot use (unreadable at run time, absurd cosmic-ray fraction, no
stars, no match to the reference) is not an error: the record says ``rejected`` with a
reason code, and the group's selection step leaves it out.
"""

__all__ = [
    "RECORD_VERSION",
    "choose_read_noise",
    "measured_detector",
    "process_frame",
    "read_record",
    "write_json",
]

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ccdflow import __version__, bits, io, provenance
from ccdflow.frame import read_raw
from ccdflow.io import FrameError

log = logging.getLogger("ccdflow")

#: Layout version of ``results/records/{frame}.json``.
RECORD_VERSION = 2

#: Keys of the ``align`` configuration that parameterise star detection.
_DETECT_KEYS = ("detection_sigma", "min_area", "max_control_points", "max_sharpness")
#: Keys of the ``align`` configuration that parameterise matching and validation.
_MATCH_KEYS = (
    "detection_sigma",
    "max_control_points",
    "min_matches",
    "max_scale_error",
    "max_residual",
)


def write_json(path, content):
    """Write JSON atomically (temporary file in the same folder, then rename)."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(content, f, indent=1, allow_nan=True)
            f.write("\n")

    return io.write_atomic(path, write)


def read_versioned_json(path, key, version, fix):
    """The JSON document at ``path`` whose ``key`` must equal ``version``; else a
    ValueError naming the file, both versions and ``fix`` (what the user does about it)."""
    with open(path) as f:
        doc = json.load(f)
    if doc.get(key) != version:
        what = key.removesuffix("_version")
        raise ValueError(
            f"{path}: {what} version {doc.get(key)!r}, this ccdflow writes {version}; {fix}"
        )
    return doc


def read_record(path):
    """A frame's record; raises ValueError naming the file when it is not one."""
    fix = "rerun the frame jobs (snakemake --forcerun process_frame)"
    return read_versioned_json(path, "record_version", RECORD_VERSION, fix)


class _Steps:
    """Times the steps of one job and logs each as it starts and ends."""

    def __init__(self, frame):
        self.frame = frame
        self.seconds = {}

    def __call__(self, name):
        self.name = name
        return self

    def __enter__(self):
        log.info("%s: %s ...", self.frame, self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.seconds[self.name] = round(self.seconds.get(self.name, 0.0) + dt, 4)
        log.info("%s: %s done in %.2f s", self.frame, self.name, dt)


def _quantity(value, unit, source):
    return {"value": None if value is None else float(value), "unit": unit, "source": source}


def _detector(calibration, gain, read_noise, rn_source, unit, measured):
    """Detector values of the record: value, unit and where each came from; a value taken
    from detector.json (``measured``: name -> (source, uncertainty)) with its uncertainty."""
    sources = calibration.get("detector_sources", {}) | {"read_noise": rn_source}
    sources |= {k: v[0] for k, v in measured.items()}
    out = {
        "gain": _quantity(gain, "electron/adu", sources.get("gain", "none")),
        "read_noise": _quantity(read_noise, unit, sources["read_noise"]),
        "saturation": _quantity(
            calibration.get("saturation"), "adu", sources.get("saturation", "none")
        ),
    }
    for name, (_, err) in measured.items():
        out[name]["uncertainty"] = err
    return out


def measured_detector(path, setup, wanted, raw=""):
    """Gain and/or read noise of ``setup`` measured by measure_detector from frame pairs.

    Parameters
    ----------
    path : path-like or None
        ``results/qc/detector.json``; None when the setup has no measurement (fewer than
        two biases: measure_detector does not measure it).
    setup : str
        The frame's detector setup.
    wanted : sequence of {'gain', 'read_noise'}
        What the configuration takes from the measurement (``detector.<key>: measured``).
    raw : str
        The frame, named in the error.

    Returns
    -------
    dict
        The setup's entry of detector.json (``gain``, ``gain_err`` e-/ADU,
        ``read_noise_adu``, ``read_noise_adu_err`` ADU, ...).

    Raises
    ------
    ccdflow.io.FrameError
        Reason ``no_measured_detector`` (the frame is rejected, not the night), naming the
        setup and the missing pairs.
    """
    keys = ", ".join(f"detector.{k}: measured" for k in wanted)
    entry = None
    if path is not None:
        with open(path) as f:
            entry = json.load(f)["setups"].get(setup)
    missing = []
    if entry is None or entry.get("read_noise_adu") is None:
        n = 0 if entry is None else entry.get("n_bias", 0)
        missing.append(f"no read noise: {n} bias frame(s) of setup {setup}, at least 2 needed")
    if "gain" in wanted and (entry is None or entry.get("gain") is None):
        n = 0 if entry is None else entry.get("n_flats", 0)
        missing.append(
            f"no gain: no pair of flats of one level (within 10 %) among the {n} flat(s)"
            f" of setup {setup}"
        )
    if missing:
        error = FrameError(
            raw,
            "no_measured_detector",
            f"{keys}, but {path or 'results/qc/detector.json'} has {'; '.join(missing)}."
            " Take pairs of biases and of flats, or set a number or header",
        )
        error.step = "detector"
        raise error
    return entry


def choose_read_noise(value, source, measured_adu, gain, bias_name, max_ratio=1.5):
    """The read noise of a frame: the header/config ``value`` or the one measured from
    the bias pairs of the master ``bias_name`` (``measured_adu``, ADU).

    Without ``value`` the measured one is used. With both, a disagreement by more than
    ``max_ratio`` either way (``detector.read_noise_max_ratio``; None: never) is logged
    as a warning naming both, and the measured value is used: a header read noise far
    below the real one makes the cosmic-ray noise model flag the sky noise itself.

    Returns ``(read noise, source)`` in electrons (ADU when ``gain`` is None).
    """
    measured = float(measured_adu) * (gain or 1.0)
    if value is None:
        return measured, f"measured:{bias_name}"
    if max_ratio is None or measured <= 0 or value <= 0:
        return value, source
    ratio = max(measured / value, value / measured)
    if ratio <= max_ratio:
        return value, source
    unit = "e-" if gain else "ADU"
    log.warning(
        "read noise: %s value %.4g %s disagrees with %.4g %s measured from the bias pairs"
        " of %s (ratio %.2f > detector.read_noise_max_ratio %.4g): using the measured one",
        source,
        value,
        unit,
        measured,
        unit,
        bias_name,
        ratio,
        max_ratio,
    )
    return measured, f"measured:{bias_name} ({source} {value:.4g} disagreed)"


def _reject_empty_masters(raw_path, masters):
    """A :class:`ccdflow.io.FrameError` (reason ``no_good_master``, step ``calibrate``)
    when a master the frame needs is an empty one (`ccdflow.tasks.empty_master_file`: a
    header-only FITS): the detail names the master and gives why it is empty and its
    frames' reasons from the master's JSON record, written beside it by the same job
    (STYLE 13: no state read back from header cards)."""
    for kind, path in masters.items():
        if not path or io.empty_product(path) is None:
            continue
        record_path = Path(path).with_suffix(".json")
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        frames = [
            f"{r['frame']}: {r['reason']}" for r in record.get("frames", ()) if r.get("reason")
        ]
        detail = (
            f"master {kind} {Path(path).name} holds no image: "
            f"{record.get('detail', 'no input frame passed its gates')}"
            + (f" ({'; '.join(frames)})" if frames else "")
            + f"; see its record {record_path}"
        )
        error = FrameError(raw_path, "no_good_master", detail)
        error.step = "calibrate"
        raise error


def _calibrate(
    raw_path, hdu, masters, calibration, overscan, steps, detector_record, user_map=None
):
    from ccdflow import calibrate
    from ccdflow.tasks import load_master, read_user_map

    with steps("read"):
        raw = read_raw(raw_path, hdu)
        _reject_empty_masters(raw_path, masters)
        loaded = {k: load_master(p, fast=True) for k, p in masters.items() if p}
    with steps("calibrate"):
        raw = calibrate.prepare_raw(raw, overscan, calibration.get("saturation"), raw_path)
        gain = calibration.get("gain")
        read_noise = calibration.get("read_noise")
        rn_source = calibration.get("detector_sources", {}).get("read_noise", "none")
        wanted = calibration.get("measured", ())
        measured = {}
        if wanted:
            m = measured_detector(detector_record, calibration.get("setup"), wanted, raw_path)
            source = f"measured:{detector_record}"
            if "gain" in wanted:
                gain = m["gain"]
                measured["gain"] = (source, m["gain_err"])
            if "read_noise" in wanted:
                # ADU, in electrons with the gain in use (measured or not)
                g = 1.0 if gain is None else gain
                read_noise = m["read_noise_adu"] * g
                measured["read_noise"] = (source, m["read_noise_adu_err"] * g)
                if "gain" in wanted and m.get("read_noise_e_err") is not None:
                    measured["read_noise"] = (source, m["read_noise_e_err"])
        bias = loaded.get("bias")
        # (a read noise measured from the setup's bias pairs is not compared again)
        if "read_noise" not in measured and bias is not None and "RDNOISEM" in bias.header:
            # measured from the bias pairs by make_master_bias (ADU)
            read_noise, rn_source = choose_read_noise(
                read_noise,
                rn_source,
                float(bias.header["RDNOISEM"]),
                gain,
                bias.name,
                calibration.get("read_noise_max_ratio", 1.5),
            )
        calibrated = calibrate.calibrate_frame(
            raw,
            bias=bias,
            dark=loaded.get("dark"),
            dark_scale=calibration.get("dark_scale", 1.0),
            flat=loaded.get("flat"),
            gain=gain,
            read_noise=read_noise,
        )
        if user_map:
            try:
                user = read_user_map(user_map, calibrated.shape, Path(raw_path).name)
            except FrameError as exc:
                exc.step = "calibrate"
                raise
            mask = calibrated.mask.copy()
            mask[user] |= bits.BAD
            calibrated = calibrated.replace(mask=mask)
            provenance.add_step(calibrated.header, "USERBPM", Path(user_map).name)
    header = calibrated.header
    if read_noise is not None:
        provenance.add_step(header, "RDNOISE", round(float(read_noise), 4))
    if calibration.get("night"):
        provenance.add_step(header, "CALNIGHT", calibration["night"])
    candidates = calibration.get("candidates", "")
    if candidates:
        provenance.add_step(header, "CALCANDS", candidates[:60])
        header.add_history(f"calibration candidates: {candidates}")
    provenance.add_step(header, "RAWFILE", Path(raw_path).name)
    if calibration.get("fingerprint"):
        provenance.add_step(header, "RAWSHA", calibration["fingerprint"])
    detector = _detector(calibration, gain, read_noise, rn_source, calibrated.unit, measured)
    return calibrated, detector


def _clean(frame, detector, cosmics, steps):
    """Cosmic rays flagged and cleaned; (frame, record part, reason, detail)."""
    from ccdflow import cosmics as cr

    params = {k: v for k, v in cosmics.items() if k != "enabled"}
    if not cosmics.get("enabled", True):
        provenance.add_step(frame.header, "CRMETHOD", "skipped (cosmics.enabled: false)")
        return frame, {"method": "none"}, "", ""
    rn = detector["read_noise"]["value"]
    if rn is None:
        detail = "no read noise (detector.read_noise, a header alias or bias pairs)"
        return frame, {"method": "astroscrappy"}, "no_read_noise", detail
    # the frame is in electrons when the gain is known; otherwise in ADU, and the read
    # noise is then in ADU too (detector.read_noise.unit says which)
    with steps("cosmics"):
        result = cr.clean_cosmics(frame.data, frame.mask, gain=1.0, read_noise=rn, **params)
    method = "astroscrappy " + " ".join(f"{k}={v}" for k, v in params.items())
    header = frame.header.copy()
    provenance.add_step(header, "CRMETHOD", method)
    provenance.add_step(header, "CRNPIX", int(result.n_flagged))
    provenance.add_step(header, "CRFRAC", round(float(result.fraction), 6))
    part = {
        "method": method,
        "n_flagged": int(result.n_flagged),
        "fraction": float(result.fraction),
        "detail": result.detail,
    }
    if not result.ok:
        return frame.replace(header=header), part, result.reason, result.detail
    log.info("%d cosmic-ray pixels (%.4f %%)", result.n_flagged, 100 * result.fraction)
    return frame.replace(data=result.data, mask=result.mask, header=header), part, "", ""


def _detect(frame, align):
    """The frame's sources as the star list finds them (`ccdflow.align.detect`), for the
    metrics too when theirs would be the same extraction; None if sep fails here (each then
    detects by itself, and reports the failure as before)."""
    from ccdflow import align as aln

    options = {k: align[k] for k in ("detection_sigma", "min_area") if k in align}
    try:
        return aln.detect(frame.data, aln.bad_pixels(frame.data, frame.mask), **options)
    except Exception:  # sep raises plain Exception (e.g. its buffer overflows)
        return None


def _metric_options(calibration):
    """Keyword arguments of `ccdflow.metrics.frame_metrics` from the frame's calibration."""
    scale = calibration.get("pixel_scale")
    return {"pixel_scale": scale} if scale else {}


def _transparency(quality, result, ref_stars):
    """``transparency`` and ``n_transparency_stars`` of the record's metrics.

    The frame's stars are matched with the reference's photometric catalogue
    (``ref_stars``, `ccdflow.reference`: the reference's raw fluxes) through the
    alignment matrix (frame -> reference pixels); the reference itself is measured the
    same way (identity), so it reads about 1, not exactly. Without a reference file (the
    frame is its own reference) 1 by definition. None when the frame was not aligned.
    """
    from ccdflow import metrics

    n = len(quality["stars"]["flux_e"])
    if ref_stars is None:
        return {"transparency": 1.0, "n_transparency_stars": n}
    if result is None or not result.ok or not ref_stars.get("x_px"):
        return {"transparency": None, "n_transparency_stars": 0}
    t = metrics.transparency(quality["stars"], ref_stars, result.matrix)
    return {"transparency": t["transparency"], "n_transparency_stars": t["n_matched"]}


def _reference_unusable(result, stars, ref, path):
    """The frame's failed match, blamed on the reference when it is the reference's fault.

    A reference with fewer than 3 star-like sources cannot be matched by anything; a
    frame that has at least twice the reference's star-like sources (and enough for
    ``min_matches``) but does not match it is also the reference's failure (a cloudy or
    defocused reference), not the frame's own. Otherwise the frame's result stands.
    """
    from ccdflow import align as aln

    name = ref["reference"]
    mine, theirs = len(stars["stars"]), len(ref["stars"]["stars"])
    n_ref = ref["stars"]["n_starlike"]
    if theirs < 3:
        why = f"reference {name} has {n_ref} star-like sources in its raw frame ({path})"
        return aln.AlignResult(False, "reference_unusable", why)
    if result.ok or result.reason not in ("no_match", "few_matches", "hot_pixels_only"):
        return result
    if stars["n_starlike"] >= 2 * max(n_ref, 1) and mine >= 3:
        why = (
            f"{stars['n_starlike']} star-like sources here, {n_ref} in reference {name}"
            f" ({path}): {result.reason} ({result.detail}); name another reference in"
            " align.reference_frames"
        )
        return dataclasses.replace(result, reason="reference_unusable", detail=why)
    return result


#: Header cards of the aligned frame: keyword -> (metrics key, digits).
_METRIC_CARDS = {
    "SKYLEVEL": ("sky_e", 3),
    "SKYNOISE": ("sky_noise_e", 3),
    "NSTARS": ("n_stars", None),
    "FWHM": ("fwhm_px", 3),
    "FWHMAS": ("fwhm_arcsec", 3),
    "ELLIPTIC": ("ellipticity", 4),
    "TRANSPAR": ("transparency", 4),
    "SATFRAC": ("saturated_fraction", 6),
}


def _metric_cards(header, quality):
    """The frame's quality metrics as provenance cards (the measured ones only)."""
    for key, (name, digits) in _METRIC_CARDS.items():
        value = quality.get(name)
        if value is not None:
            provenance.add_step(header, key, value if digits is None else round(value, digits))


def _write_no_pixels(path, header, status, reason, detail):
    """A header-only product: the frame has no image on this grid, and why."""
    header = header.copy()
    provenance.add_step(header, "QCSTATUS", status)
    provenance.add_step(header, "QCREASON", reason)
    header.add_comment(f"no image: {reason}: {detail}"[:4000])
    from ccdflow import io

    return io.write_hdulist(path, io.ccd_hdulist(None, header))


def process_frame(
    raw,
    hdu,
    *,
    frame,
    group,
    calibrated_path,
    aligned_path,
    record_path,
    masters,
    calibration,
    cosmics,
    align,
    reference=None,
    overscan=None,
    detector_record=None,
    user_map=None,
):
    """Run the per-frame chain of one light frame and write its three products.

    Parameters
    ----------
    raw : path-like
        The raw frame; ``hdu`` the index of its image HDU.
    frame, group : str
        Frame id and stack group (names in the record and the logs).
    calibrated_path, aligned_path, record_path : path-like
        Where the products go (see the module docstring).
    masters : dict
        ``{'bias': path, 'dark': path, 'flat': path}``; a missing or None entry is a
        skipped step.
    calibration : dict
        ``gain`` (e-/ADU or None), ``read_noise`` (e-, or ADU without gain, or None),
        ``saturation`` (ADU), ``detector_sources`` (where each came from), ``dark_scale``,
        ``fingerprint``, ``night``, ``candidates``; ``measured`` (``'gain'``,
        ``'read_noise'``: taken from ``detector_record`` for ``setup``).
    cosmics, align : dict
        The ``cosmics`` and ``align`` configuration sections.
    reference : path-like, optional
        The reference file of the frame's reference set (`ccdflow.reference`: the
        chosen frame, its star list and photometric catalogue); None: the frame is its
        own reference.
    overscan : dict, optional
        The ``overscan`` configuration when it is enabled.
    detector_record : path-like, optional
        ``results/qc/detector.json`` when ``calibration['measured']`` names values taken
        from it (`measured_detector`; a setup without the measurement rejects the frame,
        reason ``no_measured_detector``).
    user_map : path-like, optional
        ``badpix.user_map``: a FITS image of the calibrated frame's shape whose non-zero
        pixels get ``bits.BAD``; of another shape, the frame is rejected (reason
        ``user_map_shape``, naming the map and both shapes).

    Returns
    -------
    dict
        The record, as written to ``record_path``.
    """
    from ccdflow import align as aln
    from ccdflow import metrics
    from ccdflow.reference import read_reference

    steps = _Steps(frame)
    t_start = time.perf_counter()
    ref = None if reference is None else read_reference(reference)
    reference_frame = frame if ref is None else ref["reference"]
    record = {
        "record_version": RECORD_VERSION,
        "pipeline_version": __version__,
        "frame": frame,
        "group": group,
        "raw": os.fspath(raw),
        "fingerprint": calibration.get("fingerprint", ""),
        "status": "ok",
        "reason": "",
        "detail": "",
        "failed_step": "",
        "masters": {k: (Path(p).name if p else None) for k, p in masters.items()},
        "dark_scale": calibration.get("dark_scale"),
        "night": calibration.get("night", ""),
        "reference": reference_frame,
    }

    def reject(step, reason, detail):
        record.update(status="rejected", failed_step=step, reason=reason, detail=detail)
        log.warning("%s excluded at %s: %s (%s)", frame, step, reason, detail)

    try:
        calibrated, detector = _calibrate(
            raw, hdu, masters, calibration, overscan, steps, detector_record, user_map
        )
    except FrameError as exc:
        reject(getattr(exc, "step", "read"), exc.reason, exc.detail or str(exc))
        from ccdflow.io import Header

        header = Header()
        provenance.stamp(header, "CALIBRATED")
        _write_no_pixels(calibrated_path, header, "rejected", exc.reason, exc.detail)
        _write_no_pixels(aligned_path, header, "rejected", exc.reason, exc.detail)
        record |= {"unit": None, "shape": None, "stars": None, "alignment": None}
        record["metrics"] = None
        record["seconds"] = steps.seconds | {"total": round(time.perf_counter() - t_start, 4)}
        write_json(record_path, record)
        return record
    record["unit"] = calibrated.unit
    record["shape"] = [int(s) for s in calibrated.shape]
    record["detector"] = detector
    record["saturated_pixels"] = int(np.count_nonzero(calibrated.mask & bits.SATURATED))
    record["defect_pixels"] = {
        name: int(np.count_nonzero(calibrated.mask & getattr(bits, name)))
        for name in ("HOT", "DEAD", "BAD_COLUMN")
    }

    cleaned, record["cosmics"], reason, detail = _clean(calibrated, detector, cosmics, steps)
    if reason:
        reject("cosmics", reason, detail)
    with steps("detect"):  # one source extraction for the metrics and the star list
        detection = _detect(cleaned, align)
    with steps("metrics"):
        quality = metrics.frame_metrics(
            cleaned.data, cleaned.mask, detection=detection, **_metric_options(calibration)
        )
    record["sky"] = {"value": quality["sky_e"], "unit": cleaned.unit}
    record["sky_noise"] = {"value": quality["sky_noise_e"], "unit": cleaned.unit}
    provenance.add_step(cleaned.header, "ALIGNREF", reference_frame)
    with steps("write calibrated"):
        cleaned.write(calibrated_path)

    is_reference = frame == reference_frame
    stars = None
    if record["status"] == "ok" or is_reference:
        with steps("stars"):
            stars = aln.star_list(
                cleaned.data,
                cleaned.mask,
                detection=detection,
                **{k: align[k] for k in _DETECT_KEYS if k in align},
            )
    del detection
    record["stars"] = stars

    result = None
    if record["status"] == "ok":
        if is_reference:
            result = aln.AlignResult.identity()
            ref_shape = cleaned.shape
        else:
            ref_shape = tuple(ref["shape"])
            record["reference_shape"] = list(ref_shape)
            with steps("match"):
                if len(ref["stars"]["stars"]) >= 3:
                    result = aln.match(
                        stars, ref["stars"], **{k: align[k] for k in _MATCH_KEYS if k in align}
                    )
                else:
                    result = aln.AlignResult(False, "no_stars")
                result = _reference_unusable(result, stars, ref, reference)
        if not result.ok:
            reject("align", result.reason, result.detail)
    record["alignment"] = None if result is None else result.as_dict()
    quality |= _transparency(quality, result, None if ref is None else ref["metrics"]["stars"])
    record["metrics"] = quality

    header = cleaned.header
    if record["status"] == "ok":
        with steps("resample"):
            data, unc, mask = aln.resample(
                cleaned.data, cleaned.uncertainty, cleaned.mask, result.matrix, ref_shape
            )
        provenance.add_step(header, "ALNNMAT", int(result.n_matches))
        provenance.add_step(header, "ALNRMS", round(float(result.rms_residual), 4))
        provenance.add_step(header, "ALNDX", round(float(result.shift[0]), 3))
        provenance.add_step(header, "ALNDY", round(float(result.shift[1]), 3))
        provenance.add_step(header, "ALNKERN", aln.KERNELS[0])
        _metric_cards(header, quality)
        with steps("write aligned"):
            cleaned.replace(data=data, uncertainty=unc, mask=mask).write(aligned_path)
    else:
        _write_no_pixels(aligned_path, header, "rejected", record["reason"], record["detail"])
    record["seconds"] = steps.seconds | {"total": round(time.perf_counter() - t_start, 4)}
    write_json(record_path, record)
    log.info(
        "%s: %s in %.2f s (%s)",
        frame,
        record["status"],
        record["seconds"]["total"],
        ", ".join(f"{k} {v:.2f} s" for k, v in steps.seconds.items()),
    )
    return record
