"""File-level tasks: what one rule does, from input paths to the output file.

Each rule script (``scripts/<rule>.py``) unpacks ``snakemake.*`` and calls exactly one
function of this module. Nothing here imports Snakemake.

The per-frame chain is :func:`ccdflow.framejob.process_frame`; what is here runs once
per master, group or night. Modules with heavy dependencies are imported inside the
functions that need them.
"""

__all__ = [
    "bad_pixel_map_file",
    "calibration_table",
    "combine_flat_file",
    "load_master",
    "make_master_file",
    "measure_detector_file",
    "qc_table",
    "raw_stack_file",
    "select_file",
    "setup_logging",
    "stack_file",
]

import logging
import sys
import time
from pathlib import Path

import numpy as np

from ccdflow import bits, io, provenance, qc

log = logging.getLogger("ccdflow")


def setup_logging(path):
    """Log to the rule's log file (and warnings also to stderr, for the person watching)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)

    def excepthook(kind, value, tb):
        if getattr(value, "user_error", False):
            # bad input, not a bug: the message names the files and why, no traceback
            log.error("%s", value)
            print(f"ccdflow: {value}", file=sys.stderr)
            return
        # the job's traceback also goes to its log file, where Snakemake points the user
        log.error("job failed", exc_info=(kind, value, tb))
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = excepthook
    return log


def load_master(path, *, fast=False):
    """Read a master written by :func:`make_master_file` into a :class:`Master`.

    ``fast=True``: read without astropy when possible (see :func:`ccdflow.io.read_product`).
    """
    from ccdflow import calibrate

    data, header, unc, mask = io.read_product(path, fast=fast)
    return calibrate.Master(
        data=data,
        uncertainty=unc if unc is not None else data * 0,
        mask=mask,
        header=header,
        name=Path(path).name,
        exptime=float(header.get("EXPTIME", 0.0)),
    )


def make_master_file(
    kind,
    frames,
    output,
    combine,
    bias=None,
    dark=None,
    dark_scales=None,
    saturation=None,
    mem_limit_mb=2000,
    flat_floor=0.1,
    fingerprints=(),
    overscan=None,
    identity=None,
    gates=None,
    record=None,
    illumination=None,
    badpix=None,
    missing_master="exclude",
):
    """Combine raw frames ``[(path, hdu), ...]`` into the master ``output`` (FITS).

    ``overscan``: the ``overscan`` configuration when it is enabled (every input is
    overscan-subtracted and trimmed first), else None. ``identity``: the header cards a
    later run needs to reuse the master from a calibration library
    (`ccdflow.plan.MasterSpec.identity`; empty values are not written). ``gates``: the
    ``calibration.gates`` thresholds (`ccdflow.calibrate.CALIBRATION_GATES`): a frame
    that fails one is left out, listed in the header (``EXCLnnn``) and in ``record``, the
    master's JSON record (every input frame: metrics, status, reason, value, threshold)
    that `calibration_table` collects. ``illumination``: ``calibration.illumination`` when
    it is enabled, else None: a flat's illumination model is fitted
    (`ccdflow.illumination`), written as the ``ILLUM`` extension, summarised in the header,
    the record and the log.
    ``badpix``: the master's defect thresholds
    (`ccdflow.badpix.master_thresholds`; None: no defect bits), see
    `ccdflow.calibrate.make_master`.

    ``missing_master`` (``calibration.missing_master``): when no input frame passes the
    gates, or the master bias or dark it subtracts is itself empty, ``'exclude'`` writes
    an empty master (`empty_master_file`: no image, every frame's reason) and returns
    None, so that the frames needing it are rejected (reason ``no_good_master``) and the
    rest of the night is reduced; ``'error'`` stops the job with
    `ccdflow.calibrate.MasterError` (the message names each frame and why).
    """
    from ccdflow import calibrate
    from ccdflow.combine import Clip
    from ccdflow.library import IDENTITY

    t0 = time.perf_counter()
    log.info("%s master from %d frames -> %s", kind, len(frames), output)
    for upstream in (bias, dark):
        if upstream and io.empty_product(upstream) is not None:
            why = f"{Path(upstream).name} is empty"
            detail = f"needs {Path(upstream).name}, which holds no image (see its record)"
            if missing_master == "error":
                raise calibrate.MasterError(f"no master {kind}: it {detail}")
            rows = [
                {"frame": Path(str(p)).name, "status": "rejected", "reason": "no_good_master"}
                | {"value": None, "threshold": None, "detail": detail}
                for p, _ in frames
            ]
            empty_master_file(kind, output, record, rows, why, "no_good_master", identity)
            return None
    try:
        master = calibrate.make_master(
            frames,
            kind,
            Clip.from_config(combine),
            bias=load_master(bias, fast=True) if bias else None,
            dark=load_master(dark, fast=True) if dark else None,
            dark_scales=dark_scales,
            saturation=saturation,
            mem_limit_mb=mem_limit_mb,
            flat_floor=flat_floor,
            overscan=overscan,
            gates=gates,
            badpix=badpix,
        )
    except calibrate.MasterError as exc:
        if missing_master == "error" or not exc.frames:
            raise
        why = "every input frame failed its gates"
        empty_master_file(kind, output, record, exc.frames, why, "no_good_frames", identity)
        return None
    kept = [i for i, row in enumerate(master.frames) if row["status"] == "ok"]
    excluded = [row for row in master.frames if row["status"] != "ok"]
    fingerprints = [fingerprints[i] for i in kept] if fingerprints else ()
    if excluded:
        _record_exclusions(master.header, {"excluded": excluded})
    for key, value in (identity or {}).items():
        if value not in (None, ""):
            master.header[key] = (value, IDENTITY[key])
    for i, sha in enumerate(fingerprints, start=1):
        if i <= 999:
            master.header[f"IMSHA{i:03d}"] = (sha, "content fingerprint of input")
    unit = "adu" if kind != "flat" else ""
    fit = None
    if kind == "flat" and illumination:
        fit = _fit_illumination(master.data, master.mask, illumination, master.header, output)
    _write_master(output, master.data, master.header, master.uncertainty, master.mask, unit, fit)
    if record:
        from ccdflow.framejob import write_json

        units = {"level": "adu", "noise": "adu", "saturated_fraction": "", "pattern_rms": ""}
        units["outlier_fraction"] = ""  # of the sampled pixels (`calibrate._outlier_fractions`)
        content = {"master": Path(output).stem, "kind": kind, "units": units}
        if fit is not None:
            content["illumination"] = _fit_summary(fit, illumination)
        content["defects"] = {
            name: int(master.header[card])
            for name, card in calibrate.DEFECT_CARDS.items()
            if card in master.header
        }
        write_json(record, content | {"frames": master.frames})
    log.info(
        "done in %.2f s: median %.4g, %s",
        time.perf_counter() - t0,
        float(_median(master.data)),
        ", ".join(f"{k}={master.header[k]}" for k in ("COMBMETH", "NCOMBINE")),
    )
    return master


def empty_master_file(kind, output, record, frames, why, reason, identity=None, extra=None):
    """An explicit empty master: a header-only FITS (``NAXIS = 0``, ``NCOMBINE = 0``,
    ``QCSTATUS = 'empty'``, ``QCREASON`` = ``reason``, ``EMPTYWHY`` = ``why``, every
    frame in ``EXCLnnn``) and its JSON ``record`` listing ``frames`` (each with its
    reason, so ``results/qc/calibration.tsv`` lists them); a warning names the master
    and why. A frame job given it rejects its frame (reason ``no_good_master``,
    `ccdflow.framejob`)."""
    from astropy.io import fits

    from ccdflow.framejob import write_json
    from ccdflow.library import IDENTITY

    header = fits.Header()
    provenance.stamp(header, f"MASTER_{kind.upper()}")
    provenance.add_step(header, "NCOMBINE", 0)
    provenance.add_step(header, "QCSTATUS", "empty")
    provenance.add_step(header, "QCREASON", reason)
    provenance.add_step(header, "EMPTYWHY", why[:68])
    for key, value in (identity or {}).items():
        if value not in (None, ""):
            header[key] = (value, IDENTITY[key])
    _record_exclusions(header, {"excluded": frames})
    header.add_comment(f"no master {kind}: {why}"[:4000])
    io.write_hdulist(output, io.ccd_hdulist(None, header))
    if record:
        content = {"master": Path(output).stem, "kind": kind, "status": "empty"}
        content |= {"reason": reason, "detail": why, "frames": frames}
        write_json(record, content | (extra or {}))
    reasons = "; ".join(f"{r['frame']}: {r['reason']}" for r in frames)
    log.warning(
        "master %s is empty (%s): %s (%s); the frames that need it are rejected (no_good_master)",
        Path(output).name,
        reason,
        why,
        reasons or "no frames",
    )


def _fit_illumination(data, mask, cfg, header, name):
    """`ccdflow.illumination.fit_illumination` of a master flat with the configured degree
    and block size; its figures go into ``header`` (in place) and the log."""
    from ccdflow.illumination import fit_illumination

    fit = fit_illumination(data, mask, degree=cfg["degree"], bin=cfg["bin"])
    provenance.add_step(header, "ILLDEG", fit.degree)
    provenance.add_step(header, "ILLBIN", int(cfg["bin"]))
    provenance.add_step(header, "ILLRMS", round(fit.residual_rms, 6))
    provenance.add_step(header, "ILLBRMS", round(fit.binned_residual_rms, 6))
    coefficients = ", ".join(f"{k} {v:.5g}" for k, v in fit.coefficients.items())
    log.info(
        "illumination model of %s: degree %d on %d blocks of %d px (%d clipped); residual "
        "rms %.4g (pixel structure and noise), block rms %.4g (shape not described); "
        "coefficients in u, v = pixel x, y scaled to [-1, 1]: %s",
        Path(name).name,
        fit.degree,
        fit.n_blocks,
        cfg["bin"],
        fit.n_rejected,
        fit.residual_rms,
        fit.binned_residual_rms,
        coefficients,
    )
    return fit


def _fit_summary(fit, cfg):
    """The record's ``illumination`` entry: the fit's figures and coefficients."""
    coords = "u = (x - (nx - 1) / 2) / ((nx - 1) / 2), v likewise in y; x, y 0-based px"
    return fit.summary() | {"bin": int(cfg["bin"]), "coordinates": coords}


def _write_master(output, data, header, unc, mask, unit, fit=None):
    """Write a master; with an illumination ``fit``, its model is the ``ILLUM`` extension."""
    if fit is None:
        io.write_product(output, data, header, unc, mask, unit)
        return
    from astropy.io import fits

    hdul = io.ccd_hdulist(data, header, unc, mask, unit)
    ih = fits.Header()
    for key in ("ILLDEG", "ILLBIN", "ILLRMS", "ILLBRMS"):
        ih[key] = (header[key], provenance.KEYWORDS[key])
    hdul.append(fits.ImageHDU(fit.model, header=ih, name="ILLUM"))
    io.write_hdulist(output, hdul)


def combine_flat_file(sky, dome, output, record, *, illumination, flat_floor=0.1, identity=None):
    """The master flat of a filter with sky and dome flats: the dome master's pixel
    structure with the sky master's low-order shape,
    ``dome / model(dome) * model(sky)`` (`ccdflow.illumination.combine_sky_dome`),
    normalised and floored as every master flat (central median 1, values below
    ``flat_floor`` masked ``FLAT_LOW`` and set to 1).

    The uncertainty is the dome's, scaled as its data; the mask the dome's (and the sky's
    ``NODATA``). The header is the dome master's with ``ILLSKY``/``ILLDOME`` naming both;
    ``record`` holds both fits and the combination's own (``illumination``), and its
    model is the ``ILLUM`` extension.
    """
    from ccdflow import bits
    from ccdflow.calibrate import _normalise_flat
    from ccdflow.framejob import write_json
    from ccdflow.illumination import combine_sky_dome
    from ccdflow.library import IDENTITY

    t0 = time.perf_counter()
    empty = [p for p in (sky, dome) if io.empty_product(p) is not None]
    if empty:  # an empty part makes the combination empty
        names = " and ".join(Path(p).name for p in empty)
        combination = {"combination": {"sky": Path(sky).stem, "dome": Path(dome).stem}}
        why = f"{names} {'is' if len(empty) == 1 else 'are'} empty"
        empty_master_file("flat", output, record, [], why, "no_good_master", identity, combination)
        return
    s, d = load_master(sky), load_master(dome)
    log.info("combined flat %s: the shape of %s with the pixels of %s", output, s.name, d.name)
    flat, fits_of = combine_sky_dome(
        d.data,
        s.data,
        dome_mask=d.mask,
        sky_mask=s.mask,
        degree=illumination["degree"],
        bin=illumination["bin"],
    )
    for part, name in (("sky", s.name), ("dome", d.name)):
        f = fits_of[part]
        log.info(
            "%s master %s: illumination residual rms %.4g, block rms %.4g",
            part,
            name,
            f["residual_rms"],
            f["binned_residual_rms"],
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(d.data != 0, flat / d.data, 0).astype(np.float32)
    unc = np.nan_to_num(d.uncertainty * np.abs(scale)).astype(np.float32)
    mask = d.mask | (s.mask & bits.NODATA)
    header = d.header.copy()
    header.remove("CALFKIND", ignore_missing=True)
    provenance.stamp(header, "MASTER_FLAT")
    provenance.add_step(header, "ILLSKY", s.name)
    provenance.add_step(header, "ILLDOME", d.name)
    for key, value in (identity or {}).items():
        if value not in (None, ""):
            header[key] = (value, IDENTITY[key])
    nused = ((mask & bits.NODATA) == 0).astype(np.int16)
    data, mask = _normalise_flat(flat, unc, mask, nused, flat_floor, header)
    fit = _fit_illumination(data, mask, illumination, header, output)
    _write_master(output, data, header, unc, mask, "", fit)
    units = {"level": "adu", "noise": "adu", "saturated_fraction": "", "pattern_rms": ""}
    content = {"master": Path(output).stem, "kind": "flat", "units": units, "frames": []}
    content["combination"] = {
        "sky": Path(sky).stem,
        "dome": Path(dome).stem,
        "formula": "dome / model(dome) * model(sky), central median 1",
        "sky_fit": fits_of["sky"],
        "dome_fit": fits_of["dome"],
    }
    content["illumination"] = _fit_summary(fit, illumination)
    write_json(record, content)
    log.info("done in %.2f s", time.perf_counter() - t0)


def _median(a):
    return np.median(a[:: max(1, a.shape[0] // 256), :: max(1, a.shape[1] // 256)])


def read_user_map(path, shape=None, frame=""):
    """A user-supplied bad-pixel map (first 2-D image HDU; non-zero or non-finite = bad)
    as a boolean array; with ``shape``, a :class:`ccdflow.io.FrameError` (reason
    ``user_map_shape``) naming the map, ``frame`` and both shapes when they differ."""
    data, _, mask = io.read_frame(path, fast=True)
    bad = (data != 0) | (mask != 0)
    if shape is not None and bad.shape != tuple(shape):
        detail = (
            f"badpix.user_map {path} is {bad.shape[0]} x {bad.shape[1]} px (rows x columns),"
            f" the calibrated frame {frame} {shape[0]} x {shape[1]}"
        )
        raise io.FrameError(frame or path, "user_map_shape", detail)
    return bad


def bad_pixel_map_file(masters, output, *, setup, user_map=None):
    """Rule make_bad_pixel_map: ``results/masters/bpm_{setup}.fits``.

    The union of the detector-defect bits (`ccdflow.bits.DEFECT_BITS`: ``HOT`` of the
    master darks, ``DEAD`` and ``BAD_COLUMN`` of the master flats, and their ``FLAT_LOW``
    pixels, below the flat floor) of the setup's ``masters``, and ``bits.BAD`` on the
    pixels of the ``user_map`` (when given and of the same shape; else it is left out
    with a warning). A uint16 image of mask bits; the header counts the pixels of each
    bit (``NHOT``, ``NDEAD``, ``NBADCOL``, ``NFLATLOW``, ``NUSERBAD``, ``NBADPIX``: any of
    them) and names the masters (``IMCMBnnn``) and the user map.
    Frame jobs do not read it (each frame inherits the bits of its own masters).
    """
    from astropy.io import fits

    from ccdflow import calibrate

    out = None
    empty = [path for path in masters if io.empty_product(path) is not None]
    if empty:
        log.warning("setup %s: empty masters left out: %s", setup, [Path(p).name for p in empty])
    for path in masters:
        if path in empty:
            continue
        _, _, _, mask = io.read_product(path)
        if mask is None:
            continue
        mask = mask & (bits.DEFECT_BITS | bits.FLAT_LOW)
        if out is not None and mask.shape != out.shape:
            raise ValueError(f"{path}: shape {mask.shape}, other masters of {setup} {out.shape}")
        out = mask if out is None else out | mask
    if out is None and empty and len(empty) == len(masters):
        header = fits.Header()
        provenance.stamp(header, "BAD_PIXEL_MAP")
        provenance.add_step(header, "QCSTATUS", "empty")
        header.add_comment(f"no bad-pixel map: every master of setup {setup} is empty")
        io.write_hdulist(output, io.ccd_hdulist(None, header))
        return None
    if out is None:
        raise ValueError(f"setup {setup}: no master with a mask plane among {list(masters)}")
    header = fits.Header()
    provenance.stamp(header, "BAD_PIXEL_MAP")
    provenance.add_inputs(header, masters)
    counts = {}
    for name, card in calibrate.DEFECT_CARDS.items():
        counts[card] = int(np.count_nonzero(out & getattr(bits, name)))
    counts["NFLATLOW"] = int(np.count_nonzero(out & bits.FLAT_LOW))
    if user_map:
        provenance.add_step(header, "USERBPM", Path(user_map).name)
        user = read_user_map(user_map)
        if user.shape == out.shape:
            out[user] |= bits.BAD
            counts["NUSERBAD"] = int(np.count_nonzero(user))
        else:
            header.add_comment(f"user map {user_map} {user.shape} not applied: shape {out.shape}")
            log.warning(
                "user map %s is %s, setup %s %s: left out", user_map, user.shape, setup, out.shape
            )
    counts["NBADPIX"] = int(np.count_nonzero(out))
    for card, n in counts.items():
        provenance.add_step(header, card, n)
    for key, value, comment in bits.header_cards():
        header[key] = (value, comment)
    io.write_hdulist(output, fits.HDUList([fits.PrimaryHDU(out.astype(bits.MASK_DTYPE), header)]))
    log.info(
        "setup %s: %s of %d pixels (%.4f %%) from %d masters",
        setup,
        ", ".join(f"{card} {n}" for card, n in counts.items()),
        out.size,
        100 * counts["NBADPIX"] / out.size,
        len(masters),
    )
    return out


def select_file(records, output, *, group, frames, selection):
    """Rule select_frames: the group's selection (`ccdflow.select`) as JSON."""
    from ccdflow.framejob import read_record, write_json
    from ccdflow.select import select_group

    result = select_group(group, [read_record(p) for p in records], selection, frames)
    write_json(output, result)
    for e in result["excluded"]:
        log.warning("%s excluded: %s (%s)", e["frame"], e["reason"], e["detail"])
    log.info(
        "group %s: %d frames selected, %d excluded",
        group,
        len(result["selected"]),
        len(result["excluded"]),
    )
    return result


def _read_selection(path):
    import json

    with open(path) as f:
        return json.load(f)


def _record_exclusions(header, selection):
    provenance.add_step(header, "NEXCLUDE", len(selection["excluded"]))
    for i, e in enumerate(selection["excluded"][:999], start=1):
        text = f"{e['frame']}: {e['reason']}"
        if e.get("value") is not None and e.get("threshold") is not None:
            text += f" {e['value']:.4g} vs {e['threshold']:.4g}"
        text = text[:68]
        comment = "excluded frame: reason value vs limit"[: max(0, 80 - 10 - len(text) - 5)]
        header[f"EXCL{i:03d}"] = (text, comment)


def _empty_product(output, header, selection, what):
    """A header-only file for a group without any frame to combine: no image, and why."""
    provenance.add_step(header, "NCOMBINE", 0)
    _record_exclusions(header, selection)
    reasons = sorted({e["reason"] for e in selection["excluded"]})
    header.add_comment(f"no {what}: every frame was excluded ({', '.join(reasons)})")
    io.write_hdulist(output, io.ccd_hdulist(None, header))
    log.warning(
        "group %s: no %s, every frame was excluded (%s)", selection["group"], what, reasons
    )


def stack_file(selection_path, output, *, group, mem_limit_mb=2000, **params):
    """Stack the frames the group's selection chose into ``output``.

    Excluded frames are listed in the header (``EXCLnnn``) with their reason. A group
    without any selected frame gets a header-only file (no image) saying why.
    """
    from ccdflow import stack
    from ccdflow.combine import Clip

    selection = _read_selection(selection_path)
    chosen = selection["selected"]
    if not chosen:
        from astropy.io import fits

        header = fits.Header()
        provenance.stamp(header, "STACK")
        provenance.add_step(header, "STKGROUP", group)
        _empty_product(output, header, selection, "stack")
        return
    clip, rest = Clip.split(params)  # the stack configuration: the clip, scale, weight
    paths = [f["aligned"] for f in chosen]
    result = stack.stack_files(paths, clip=clip, mem_limit_mb=mem_limit_mb, **rest)
    header = result.header
    provenance.stamp(header, "STACK")
    provenance.add_step(header, "STKGROUP", group)
    provenance.add_step(header, "ALIGNREF", selection["reference"])
    first = chosen[0]
    for kind, key in (("bias", "BIASCORR"), ("dark", "DARKCORR"), ("flat", "FLATCORR")):
        provenance.add_step(header, key, first["masters"].get(kind) or f"skipped: no {kind}")
    provenance.add_step(header, "CRMETHOD", first["cosmics"])
    _record_exclusions(header, selection)
    _write_stack(output, result.data, header, result.uncertainty, result.mask, result.coverage)
    log.info("stack %s: %d frames, %d excluded", group, len(chosen), len(selection["excluded"]))


def _write_stack(output, data, header, unc, mask, coverage):
    extra = [("COVERAGE", coverage.astype(np.int16))]
    io.write_product(output, data, header, unc, mask, unit=header.get("BUNIT"), extra=extra)


def raw_stack_file(selection_path, output, *, group):
    """Mean of the raw frames (ADU, no calibration) resampled with the same transforms
    as their calibrated frames: the "before" of the before/after comparison."""
    from ccdflow import align

    selection = _read_selection(selection_path)
    header = io.Header()  # written without astropy (`io.write_product`)
    provenance.stamp(header, "RAW_STACK")
    provenance.add_step(header, "STKGROUP", group)
    if not selection["selected"]:
        _empty_product(output, header, selection, "raw stack")
        return
    shape = tuple(selection["shape"])
    total = np.zeros(shape, np.float64)
    count = np.zeros(shape, np.int16)
    for f in selection["selected"]:
        data, _, mask = io.read_frame(f["raw"], f["hdu"], fast=True)
        out, _, out_mask = align.resample(data, None, mask, np.asarray(f["matrix"]), shape)
        good = out_mask == 0
        total[good] += out[good]
        count[good] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
    provenance.add_step(header, "COMBMETH", "mean")
    provenance.add_step(header, "ALNKERN", align.KERNELS[0])
    provenance.add_inputs(header, [f["raw"] for f in selection["selected"]])
    mask = np.where(count == 0, bits.NOT_COVERED, 0).astype(bits.MASK_DTYPE)
    _write_stack(output, mean, header, None, mask, count)


def qc_table(records, selections, output):
    """``results/qc/frames.tsv``: status, reason and measures of every light frame, from
    the frame records and the groups' selections."""
    from ccdflow.framejob import read_record
    from ccdflow.inventory import write_tsv

    decisions = {}
    for path in selections:
        sel = _read_selection(path)
        decisions |= {f["frame"]: None for f in sel["selected"]}
        decisions |= {e["frame"]: e for e in sel["excluded"]}
    rows = [qc.qc_row(read_record(p), decisions.get(Path(p).stem)) for p in records]
    write_tsv(output, rows, qc.QC_COLUMNS)
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad:
        log.warning("%s excluded: %s %s", r["frame"], r["reason"], r["detail"])
    log.info("%d frames, %d excluded", len(rows), len(bad))


def _pairs_by_level(frames, tolerance=0.1):
    """Consecutive pairs of frames (already read: (path, data)) whose median levels agree
    within ``tolerance`` (relative), after sorting by level: pairs of one flat level."""
    levels = sorted(((float(np.median(d[::4, ::4])), p, d) for p, d in frames), key=lambda t: t[0])
    pairs, i = [], 0
    while i + 1 < len(levels):
        (l1, _, a), (l2, _, b) = levels[i], levels[i + 1]
        if l1 > 0 and abs(l2 - l1) <= tolerance * l1:
            pairs.append((a, b))
            i += 2
        else:
            i += 1
    return pairs


def measure_detector_file(setups, output):
    """Gain and read noise of each detector setup from pairs of raw frames, beside the
    header's values: ``results/qc/detector.json`` and a table in the log.

    Parameters
    ----------
    setups : dict
        ``{setup: {'bias': [[path, hdu], ...], 'flats': {filter: [[path, hdu], ...]},
        'header': {'gain': e-/ADU or None, 'read_noise': e- or None, 'sources': {...}}}}``:
        raw biases (at least two for a measurement), raw flats per filter (pairs of equal
        level give the gain; several levels a photon-transfer fit), and the values the
        frames' headers (or the configuration) give.
    output : path-like
        The JSON file: per setup the `ccdflow.detector.DetectorMeasurement` fields with
        their units, the header values, their ratios, and the warnings.
    """
    from ccdflow import detector
    from ccdflow.framejob import write_json

    out = {"units": dict(detector.UNITS), "setups": {}}
    for setup, spec in sorted(setups.items()):
        biases = [io.read_frame(p, h, fast=True)[0] for p, h in spec["bias"]]
        bias_pairs = list(zip(biases[0::2], biases[1::2], strict=False))
        flat_pairs, n_flats = [], 0
        for _filter, frames in sorted(spec.get("flats", {}).items()):
            read = [(p, io.read_frame(p, h, fast=True)[0]) for p, h in frames]
            flat_pairs += _pairs_by_level(read)
            n_flats += len(read)
        entry = {"n_bias": len(biases), "n_flats": n_flats, "header": spec.get("header", {})}
        entry["warnings"] = []
        if not bias_pairs:
            entry["warnings"].append("fewer than two bias frames: nothing measured")
            out["setups"][setup] = entry
            continue
        m = detector.measure_detector(bias_pairs, flat_pairs)
        entry |= m.as_dict()
        header = spec.get("header", {})
        gain_h, rn_h = header.get("gain"), header.get("read_noise")
        entry["gain_ratio"] = (m.gain / gain_h) if gain_h and np.isfinite(m.gain) else None
        rn_e = m.read_noise_e if np.isfinite(m.read_noise_e) else None
        entry["read_noise_ratio"] = (rn_e / rn_h) if rn_h and rn_e else None
        for name, measured, value, unit in (
            ("gain", m.gain, gain_h, "e-/ADU"),
            ("read noise", rn_e, rn_h, "e-"),
        ):
            warning = detector.compare_with_header(name, measured, value, unit=unit)
            if warning:
                entry["warnings"].append(warning)
                log.warning("setup %s: %s", setup, warning)
        out["setups"][setup] = entry
        log.info(
            "setup %s: gain %s e-/ADU (header %s), read noise %s e- = %s ADU (header %s e-);"
            " %d bias pairs, %d flat pairs (%s)",
            setup,
            _pm(m.gain, m.gain_err),
            gain_h,
            _pm(m.read_noise_e, m.read_noise_e_err),
            _pm(m.read_noise_adu, m.read_noise_adu_err),
            rn_h,
            m.n_bias_pairs,
            m.n_flat_pairs,
            m.method,
        )
    write_json(output, out)
    return out


def _pm(value, err):
    return "n/a" if not np.isfinite(value) else f"{value:.3f} +- {err:.3f}"


#: Columns of ``results/qc/calibration.tsv``: one row per calibration frame.
CALIBRATION_COLUMNS = (
    "master",
    "frame",
    "level",
    "noise",
    "saturated_fraction",
    "pattern_rms",
    "outlier_fraction",
    "status",
    "reason",
    "value",
    "threshold",
    "illum_degree",
    "illum_residual_rms",
    "illum_binned_rms",
    "detail",
)


def calibration_table(records, output):
    """``results/qc/calibration.tsv`` from the masters' JSON records: every calibration
    frame with its metrics (ADU; flats' pattern_rms relative; the fraction of its pixels
    that are outliers against the rest of its group) and whether it was combined; with
    ``calibration.illumination``, the master flat's illumination fit (degree, residual
    rms, block rms; fractions) on each of its rows, and one row (status ``combined``)
    per sky/dome combination."""
    from ccdflow.inventory import write_tsv

    rows = []
    for path in records:
        rec = _read_selection(path)
        fit = rec.get("illumination")
        illum = {}
        if fit:  # the master flat's illumination model (calibration.illumination)
            illum = {
                "illum_degree": fit["degree"],
                "illum_residual_rms": round(fit["residual_rms"], 6),
                "illum_binned_rms": round(fit["binned_residual_rms"], 6),
            }
        rows += [{"master": rec["master"], **row, **illum} for row in rec["frames"]]
        if "combination" in rec:  # a sky/dome combination: one row of its own
            c = rec["combination"]
            detail = f"pixel structure of {c['dome']}, low-order shape of {c['sky']}"
            if rec.get("status") == "empty":
                detail = f"no image: {rec['detail']}"
            rows.append(
                {
                    "master": rec["master"],
                    "status": rec.get("status", "combined"),
                    "reason": rec.get("reason", ""),
                    "detail": detail,
                    **illum,
                }
            )
    write_tsv(output, rows, CALIBRATION_COLUMNS)
    bad = [r for r in rows if r["status"] not in ("ok", "combined")]
    log.info("%d calibration frames, %d left out of their masters", len(rows), len(bad))
