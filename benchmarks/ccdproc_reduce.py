"""A straightforward ccdproc reduction of one night, the way the astropy CCD guide does it.

Reference point for benchmarks/bench_e2e.py ("CCD Data Reduction Guide",
https://www.astropy.org/ccd-reduction-and-photometry-guide/): ImageFileCollection to sort
frames by header, sigma-clipped combines with ccdproc.combine, subtract_bias, subtract_dark
(scaled by exposure time), flat_correct, astroalign for registration, ccdproc.combine for the
stack. Every intermediate is written to disk as the guide does (masters and calibrated lights).
No cosmic-ray cleaning (like Siril's script). Deliberately plain, not deliberately slow.

    python benchmarks/ccdproc_reduce.py RAW_DIR OUT_DIR

Writes OUT_DIR/masters/*.fits, OUT_DIR/calibrated/*.fits and OUT_DIR/stacks/{object}_{filter}.fits
(ADU, bias/dark/flat corrected, aligned to the first light of the filter).
"""

import argparse
import logging
import time
import warnings
from pathlib import Path

import astroalign
import numpy as np
from astropy import units as u
from astropy.nddata import CCDData
from astropy.stats import mad_std
from astropy.wcs import FITSFixedWarning
from ccdproc import (
    ImageFileCollection,
    combine,
    flat_correct,
    subtract_bias,
    subtract_dark,
)

CLIP = dict(
    sigma_clip=True,
    sigma_clip_low_thresh=3,
    sigma_clip_high_thresh=3,
    sigma_clip_func=np.ma.median,
    sigma_clip_dev_func=mad_std,
    mem_limit=1.5e9,
)


warnings.simplefilter("ignore", FITSFixedWarning)  # DATE-OBS -> MJD-OBS notes, once per read
logging.getLogger("astropy").setLevel(logging.WARNING)


def _inv_median(a):
    return 1 / np.median(a)


T0 = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def reduce_night(raw_dir, out_dir):
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    for sub in ("masters", "calibrated", "stacks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    ifc = ImageFileCollection(raw_dir, glob_include="*.fit*")

    # Master bias: sigma-clipped average of the raw bias frames.
    bias_files = ifc.files_filtered(imagetyp="Bias Frame", include_path=True)
    master_bias = combine(bias_files, method="average", unit="adu", **CLIP)
    master_bias.meta["combined"] = True
    master_bias.write(out_dir / "masters" / "master_bias.fits", overwrite=True)
    log(f"master bias from {len(bias_files)} frames")

    # Master dark per exposure time: bias-subtracted, sigma-clipped average.
    master_darks = {}
    dark_times = set(ifc.summary["exptime"][ifc.summary["imagetyp"] == "Dark Frame"])
    for exptime in sorted(dark_times):
        darks = []
        for ccd in ifc.ccds(imagetyp="Dark Frame", exptime=exptime, ccd_kwargs={"unit": "adu"}):
            darks.append(subtract_bias(ccd, master_bias))
        master = combine(darks, method="average", **CLIP)
        master.meta["combined"] = True
        master.write(out_dir / "masters" / f"master_dark_{exptime:g}s.fits", overwrite=True)
        master_darks[exptime] = master
        log(f"master dark {exptime:g} s from {len(darks)} frames")

    def dark_for(exptime):
        """The dark of the longest exposure time (it is scaled to the frame's exposure)."""
        return master_darks[max(master_darks)]

    # Master flats per filter: bias- and scaled-dark-subtracted, scaled to a median of
    # one, sigma-clipped average.
    master_flats = {}
    flat_filters = set(ifc.summary["filter"][ifc.summary["imagetyp"] == "Flat Field"])
    for filt in sorted(flat_filters):
        flats = []
        for ccd in ifc.ccds(imagetyp="Flat Field", filter=filt, ccd_kwargs={"unit": "adu"}):
            ccd = subtract_bias(ccd, master_bias)
            dark = dark_for(ccd.header["exptime"])
            ccd = subtract_dark(ccd, dark, exposure_time="exptime", exposure_unit=u.s, scale=True)
            flats.append(ccd)
        master = combine(flats, method="average", scale=_inv_median, **CLIP)
        master.meta["combined"] = True
        master.write(out_dir / "masters" / f"master_flat_{filt}.fits", overwrite=True)
        master_flats[filt] = master
        log(f"master flat {filt} from {len(flats)} frames")

    # Lights: calibrate, write, then per (object, filter) align onto the first frame and stack.
    groups = {}
    for ccd, name in ifc.ccds(
        imagetyp="Light Frame", ccd_kwargs={"unit": "adu"}, return_fname=True
    ):
        ccd = subtract_bias(ccd, master_bias)
        ccd = subtract_dark(
            ccd,
            dark_for(ccd.header["exptime"]),
            exposure_time="exptime",
            exposure_unit=u.s,
            scale=True,
        )
        ccd = flat_correct(ccd, master_flats[ccd.header["filter"]])
        path = out_dir / "calibrated" / name
        ccd.write(path, overwrite=True)
        key = (ccd.header["object"].strip(), ccd.header["filter"].strip())
        groups.setdefault(key, []).append(path)
    log(f"calibrated {sum(len(v) for v in groups.values())} lights")

    for (obj, filt), paths in sorted(groups.items()):
        paths = sorted(paths)
        reference = CCDData.read(paths[0])
        target = np.asarray(reference.data, dtype=np.float64)  # FITS is big-endian
        aligned = [reference]
        for path in paths[1:]:
            ccd = CCDData.read(path)
            data, footprint = astroalign.register(np.asarray(ccd.data, dtype=np.float64), target)
            aligned.append(CCDData(data, mask=footprint, unit=ccd.unit, meta=ccd.meta))
        log(f"aligned {len(paths)} frames of {obj} {filt}")
        stack = combine(aligned, method="average", **CLIP)
        stack.meta["combined"] = True
        stack.meta["ncombine"] = len(aligned)
        stack.write(out_dir / "stacks" / f"{obj}_{filt}.fits", overwrite=True)
        log(f"stacked {obj} {filt}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    reduce_night(args.raw_dir, args.out_dir)


if __name__ == "__main__":
    main()
