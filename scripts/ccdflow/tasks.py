"""File-level tasks: what one rule does, from input paths to the output file.

Each rule script (``scripts/<rule>.py``) unpacks ``snakemake.*`` and calls exactly one
function of this module. Nothing here imports Snakemake.
"""

__all__ = ["calibrate_file", "load_master", "make_master_file", "setup_logging"]

import logging
import sys
import time
from pathlib import Path

from ccdflow import calibrate, io, provenance

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
    return log


def load_master(path):
    """Read a master written by :func:`make_master_file` into a :class:`Master`."""
    data, header, unc, mask = io.read_product(path)
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
):
    """Combine raw frames ``[(path, hdu), ...]`` into the master ``output`` (FITS)."""
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
    )
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
    import numpy as np

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
):
    """Calibrate the raw frame ``raw`` with the given masters into ``output`` (FITS)."""
    t0 = time.perf_counter()
    data, header, mask = io.read_frame(raw, hdu)
    bias_m = load_master(bias) if bias else None
    if read_noise is None and bias_m is not None and "RDNOISEM" in bias_m.header:
        read_noise = float(bias_m.header["RDNOISEM"]) * (gain or 1.0)
        log.info("read noise %.3f (measured from bias pairs)", read_noise)
    out, unc, mask, header, unit = calibrate.calibrate_frame(
        data,
        mask,
        header,
        bias=bias_m,
        dark=load_master(dark) if dark else None,
        dark_scale=dark_scale,
        flat=load_master(flat) if flat else None,
        gain=gain,
        read_noise=read_noise,
        saturation=saturation,
    )
    provenance.add_step(header, "RAWFILE", Path(raw).name)
    if fingerprint:
        provenance.add_step(header, "RAWSHA", fingerprint)
    io.write_product(output, out, header, unc, mask, unit)
    log.info("calibrated %s -> %s in %.2f s (%s)", raw, output, time.perf_counter() - t0, unit)
