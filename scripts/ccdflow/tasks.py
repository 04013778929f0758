"""File-level tasks: what one rule does, from input paths to the output file.

Each rule script (``scripts/<rule>.py``) unpacks ``snakemake.*`` and calls exactly one
function of this module. Nothing here imports Snakemake.

Per-frame tasks (calibrate, clean, align) run once per frame, so start-up counts more
than arithmetic: modules with heavy dependencies are imported inside the functions that
need them, and those tasks read and write FITS with the astropy-free fast path of
:mod:`ccdflow.io` (astropy is used only for files it does not handle).
"""

__all__ = [
    "align_file",
    "calibrate_file",
    "clean_file",
    "load_master",
    "make_master_file",
    "preview_file",
    "qc_table",
    "raw_stack_file",
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
):
    """Combine raw frames ``[(path, hdu), ...]`` into the master ``output`` (FITS).

    ``overscan``: the ``overscan`` configuration when it is enabled (every input is
    overscan-subtracted and trimmed first), else None. ``identity``: the header cards a
    later run needs to reuse the master from a calibration library
    (`ccdflow.plan.MasterSpec.identity`; empty values are not written).
    """
    from ccdflow import calibrate
    from ccdflow.library import IDENTITY

    t0 = time.perf_counter()
    log.info("%s master from %d frames -> %s", kind, len(frames), output)
    master = calibrate.make_master(
        frames,
        kind,
        combine,
        bias=load_master(bias) if bias else None,
        dark=load_master(dark) if dark else None,
        dark_scales=dark_scales,
        saturation=saturation,
        mem_limit_mb=mem_limit_mb,
        flat_floor=flat_floor,
        overscan=overscan,
    )
    for key, value in (identity or {}).items():
        if value not in (None, ""):
            master.header[key] = (value, IDENTITY[key])
    for i, sha in enumerate(fingerprints, start=1):
        if i <= 999:
            master.header[f"IMSHA{i:03d}"] = (sha, "content fingerprint of input")
    unit = "adu" if kind != "flat" else ""
    io.write_product(output, master.data, master.header, master.uncertainty, master.mask, unit)
    log.info(
        "done in %.2f s: median %.4g, %s",
        time.perf_counter() - t0,
        float(_median(master.data)),
        ", ".join(f"{k}={master.header[k]}" for k in ("COMBMETH", "NCOMBINE")),
    )
    return master


def _median(a):
    return np.median(a[:: max(1, a.shape[0] // 256), :: max(1, a.shape[1] // 256)])


def calibrate_file(
    raw,
    hdu,
    output,
    bias=None,
    dark=None,
    dark_scale=1.0,
    flat=None,
    gain=None,
    read_noise=None,
    saturation=None,
    fingerprint="",
    overscan=None,
    night="",
    candidates="",
):
    """Calibrate the raw frame ``raw`` with the given masters into ``output`` (FITS).

    Saturation is judged on the raw values; then the overscan (if configured) is
    subtracted and the frame trimmed, before bias, dark and flat.
    """
    from ccdflow import calibrate

    t0 = time.perf_counter()
    data, header, mask = io.read_frame(raw, hdu, fast=True)
    data, mask, header = calibrate.prepare_raw(data, mask, header, overscan, raw, saturation)
    bias_m = load_master(bias, fast=True) if bias else None
    if read_noise is None and bias_m is not None and "RDNOISEM" in bias_m.header:
        read_noise = float(bias_m.header["RDNOISEM"]) * (gain or 1.0)
        log.info("read noise %.3f (measured from bias pairs)", read_noise)
    out, unc, mask, header, unit = calibrate.calibrate_frame(
        data,
        mask,
        header,
        bias=bias_m,
        dark=load_master(dark, fast=True) if dark else None,
        dark_scale=dark_scale,
        flat=load_master(flat, fast=True) if flat else None,
        gain=gain,
        read_noise=read_noise,
        saturation=None,  # flagged on the raw values by prepare_raw
    )
    if read_noise is not None:
        provenance.add_step(header, "RDNOISEU", round(float(read_noise), 4))
    if night:
        provenance.add_step(header, "CALNIGHT", night)
    if candidates:
        provenance.add_step(header, "CALCANDS", candidates[:60])
        header.add_history(f"calibration candidates: {candidates}")
    provenance.add_step(header, "RAWFILE", Path(raw).name)
    if fingerprint:
        provenance.add_step(header, "RAWSHA", fingerprint)
    io.write_product(output, out, header, unc, mask, unit)
    log.info("calibrated %s -> %s in %.2f s (%s)", raw, output, time.perf_counter() - t0, unit)


def _rejected(header):
    return header.get("QCSTATUS", "ok") != "ok"


def clean_file(calibrated, output, *, enabled=True, read_noise=None, **params):
    """Flag and clean cosmic rays of a calibrated frame (astroscrappy) into ``output``.

    The frame must be in electrons (``BUNIT = 'electron'``) or carry ``GAINCORR``-less ADU
    with ``GAIN`` in its header. A frame whose flagged fraction is absurd is written
    unchanged and marked rejected (``QCSTATUS``), never silently "cleaned".
    """
    from ccdflow import cosmics

    data, header, unc, mask = io.read_product(calibrated, fast=True)
    unit = str(header.get("BUNIT", "adu")).strip().lower()
    if not enabled:
        provenance.add_step(header, "CRMETHOD", "skipped (cosmics.enabled: false)")
        qc.mark(header, True)
        io.write_product(output, data, header, unc, mask, unit)
        return
    gain = 1.0 if unit == "electron" else float(header.get("GAIN", 1.0))
    rn = read_noise if read_noise is not None else header.get("RDNOISEU")
    if rn is None:
        raise ValueError(f"{calibrated}: no read noise (RDNOISEU) to model the noise with")
    result = cosmics.clean_cosmics(data, mask, gain=gain, read_noise=rn, **params)
    provenance.add_step(
        header,
        "CRMETHOD",
        "astroscrappy " + " ".join(f"{k}={v}" for k, v in params.items() if k != "saturation"),
    )
    provenance.add_step(header, "CRNPIX", int(result.n_flagged))
    provenance.add_step(header, "CRFRAC", round(float(result.fraction), 6))
    qc.mark(header, result.ok, result.reason, result.detail)
    if result.ok:
        log.info(
            "%s: %d cosmic-ray pixels (%.4f %%)",
            calibrated,
            result.n_flagged,
            100 * result.fraction,
        )
        io.write_product(output, result.data, header, unc, result.mask, unit)
    else:
        log.warning("%s excluded: %s (%s)", calibrated, result.reason, result.detail)
        io.write_product(output, data, header, unc, mask, unit)


def align_file(cleaned, reference, output, *, reference_name, **params):
    """Register a cleaned frame onto its reference's pixel grid into ``output``.

    Data, uncertainty and mask are resampled together. A frame that cannot be aligned
    (or was rejected upstream) is written with every pixel ``NODATA`` and marked
    rejected, so its stack leaves it out and the run goes on.
    """
    from ccdflow import align

    data, header, unc, mask = io.read_product(cleaned, fast=True)
    unit = str(header.get("BUNIT", "")).strip().lower() or None
    provenance.add_step(header, "ALIGNREF", reference_name)
    if _rejected(header):
        log.warning("%s was rejected upstream (%s): not aligned", cleaned, header["QCREASON"])
        _write_rejected(output, data, header, unc, unit)
        return
    if Path(cleaned).resolve() == Path(reference).resolve():
        matrix = np.eye(3)
        result = None
        ref_shape = data.shape
    else:
        ref, _, _, ref_mask = io.read_product(reference, fast=True)
        ref_shape = ref.shape
        result = align.find_transform(
            data, ref, source_mask=mask, reference_mask=ref_mask, **params
        )
        if not result.ok:
            log.warning("%s not aligned: %s (%s)", cleaned, result.reason, result.detail)
            qc.mark(header, False, result.reason, result.detail)
            _write_rejected(output, data, header, unc, unit)
            return
        matrix = result.matrix
    out, out_unc, out_mask = align.resample(data, unc, mask, matrix, ref_shape)
    _record_transform(header, matrix, result)
    qc.mark(header, True)
    io.write_product(output, out, header, out_unc, out_mask, unit)
    log.info("aligned %s onto %s", cleaned, reference_name)


def _record_transform(header, matrix, result):
    for i in range(2):
        for j in range(3):
            header[f"ALNM{i + 1}{j + 1}"] = (float(matrix[i, j]), "source -> reference")
    if result is None:
        provenance.add_step(header, "ALNNMAT", 0)
        provenance.add_step(header, "ALNSCALE", 1.0)
        for key in ("ALNRMS", "ALNROT", "ALNDX", "ALNDY"):
            provenance.add_step(header, key, 0.0)
        return
    provenance.add_step(header, "ALNNMAT", int(result.n_matches))
    provenance.add_step(header, "ALNRMS", round(float(result.rms_residual), 4))
    provenance.add_step(header, "ALNSCALE", round(float(result.scale), 6))
    provenance.add_step(header, "ALNROT", round(float(result.rotation_deg), 5))
    provenance.add_step(header, "ALNDX", round(float(result.shift[0]), 3))
    provenance.add_step(header, "ALNDY", round(float(result.shift[1]), 3))


def _matrix(header):
    m = np.eye(3)
    for i in range(2):
        for j in range(3):
            m[i, j] = header[f"ALNM{i + 1}{j + 1}"]
    return m


def _write_rejected(output, data, header, unc, unit):
    mask = np.full(data.shape, bits.NODATA, bits.MASK_DTYPE)
    zeros = np.zeros(data.shape, np.float32)
    io.write_product(output, zeros, header, zeros if unc is not None else None, mask, unit)


def stack_file(aligned, output, *, group, mem_limit_mb=2000, **params):
    """Stack the accepted aligned frames of one group into ``output``.

    Rejected frames are listed in the header (``EXCLnnn``) with their reason; a group
    without any accepted frame gives an empty stack (coverage 0 everywhere) and a warning.
    """
    from astropy.io import fits

    from ccdflow import stack

    accepted, excluded = [], []
    for path in aligned:
        h = io.quick_header(path)
        (excluded if _rejected(h) else accepted).append((path, h))
    if accepted:
        result = stack.stack_files([p for p, _ in accepted], mem_limit_mb=mem_limit_mb, **params)
        header, data, unc, mask = result.header, result.data, result.uncertainty, result.mask
        coverage = result.coverage
    else:
        log.warning("group %s: no frame could be stacked", group)
        shape = fits.getdata(aligned[0]).shape
        header = fits.Header()
        data = unc = np.zeros(shape, np.float32)
        mask = np.full(shape, bits.NOT_COVERED, bits.MASK_DTYPE)
        coverage = np.zeros(shape, np.int16)
        provenance.add_inputs(header, [])
    first = accepted[0][1] if accepted else io.quick_header(aligned[0])
    for key in ("OBJECT", "FILTER", "EXPTIME", "INSTRUME", "TELESCOP", "DATE-OBS", "BUNIT"):
        if key in first and key not in header:
            header[key] = first[key]
    provenance.stamp(header, "STACK")
    provenance.add_step(header, "STKGROUP", group)
    if "ALIGNREF" in first:
        provenance.add_step(header, "ALIGNREF", first["ALIGNREF"])
    for key in ("BIASCORR", "DARKCORR", "FLATCORR"):
        if key in first:
            provenance.add_step(header, key, first[key])
    # no CRMETHOD on the inputs: the workflow ran no cosmic-ray step (cosmics.enabled false)
    provenance.add_step(header, "CRMETHOD", first.get("CRMETHOD", "none (cleaning disabled)"))
    provenance.add_step(header, "NEXCLUDE", len(excluded))
    for i, (path, h) in enumerate(excluded[:999], start=1):
        header[f"EXCL{i:03d}"] = (
            f"{Path(path).stem}: {h.get('QCREASON', '?')}"[:68],
            "excluded frame: reason",
        )
    _write_stack(output, data, header, unc, mask, coverage)
    log.info("stack %s: %d frames, %d excluded", group, len(accepted), len(excluded))


def _write_stack(output, data, header, unc, mask, coverage):
    from astropy.io import fits

    hdul = io.ccd_hdulist(data, header, unc, mask, unit=header.get("BUNIT"))
    hdul.append(fits.ImageHDU(coverage.astype(np.int16), name="COVERAGE"))
    io.write_hdulist(output, hdul)


def raw_stack_file(raws, aligned, output, *, group):
    """Mean of the raw frames (ADU, no calibration) resampled with the same transforms
    as their calibrated frames: the "before" of the before/after comparison."""
    from astropy.io import fits

    from ccdflow import align

    total = count = None
    used = []
    for (raw, hdu), path in zip(raws, aligned, strict=True):
        h = fits.getheader(path)
        if _rejected(h):
            continue
        data, _, mask = io.read_frame(raw, hdu)
        shape = fits.getdata(path).shape
        out, _, out_mask = align.resample(data, None, mask, _matrix(h), shape)
        good = out_mask == 0
        if total is None:
            total = np.zeros(shape, np.float64)
            count = np.zeros(shape, np.int16)
        total[good] += out[good]
        count[good] += 1
        used.append(raw)
    shape = fits.getdata(aligned[0]).shape
    if total is None:
        total, count = np.zeros(shape), np.zeros(shape, np.int16)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
    header = fits.Header()
    provenance.stamp(header, "RAW_STACK")
    provenance.add_step(header, "STKGROUP", group)
    provenance.add_step(header, "COMBMETH", "mean")
    provenance.add_inputs(header, used)
    mask = np.where(count == 0, bits.NOT_COVERED, 0).astype(bits.MASK_DTYPE)
    _write_stack(output, mean, header, None, mask, count)


def preview_file(stack_path, raw_stack_path, output, *, title=""):
    """PNG: raw stack beside calibrated stack, each with a zscale stretch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import ZScaleInterval

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    for ax, path, label in (
        (axes[0], raw_stack_path, "raw frames, aligned and averaged"),
        (axes[1], stack_path, "calibrated, cleaned, aligned stack"),
    ):
        data = io.read_product(path)[0]
        lo, hi = ZScaleInterval().get_limits(data)
        ax.imshow(data, origin="lower", cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)


def qc_table(aligned, frames, groups, output):
    """``results/qc/frames.tsv``: status, reason and measures of every light frame.

    Headers are read with the astropy-free parser: on a 1,000-frame night this table is
    rebuilt after every new frame, and astropy takes 7x longer per header.
    """
    from ccdflow.inventory import write_tsv

    rows = [
        qc.qc_row(frame, group, io.quick_header(path))
        for path, frame, group in zip(aligned, frames, groups, strict=True)
    ]
    write_tsv(output, rows, qc.QC_COLUMNS)
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad:
        log.warning("%s excluded: %s %s", r["frame"], r["reason"], r["detail"])
    log.info("%d frames, %d excluded", len(rows), len(bad))
