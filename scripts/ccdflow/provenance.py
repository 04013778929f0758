"""Provenance keywords: every product says what made it and from what.

All keyword names and their comments (with units) live here, so products stay
consistent and a reader has one place to look them up. Each step is one card, not echoed
into HISTORY (STYLE 13): the cards are provenance for people; jobs read the JSON records.
"""

__all__ = ["KEYWORDS", "add_inputs", "add_step", "stamp"]

import datetime as _dt
import os

from ccdflow import __version__

#: keyword -> comment
KEYWORDS = {
    "PIPELINE": "software that made this file",
    "PIPEVER": "ccdflow version",
    "DATE-RED": "UTC time this file was made",
    "PRODTYPE": "product type",
    "NCOMBINE": "number of frames combined",
    "COMBMETH": "combine method",
    "CLIPLOW": "lower clipping threshold (sigma)",
    "CLIPHIGH": "upper clipping threshold (sigma)",
    "CLIPSIG": "spread estimator used for clipping",
    "CLIPITER": "maximum clipping iterations",
    "SCALEMTH": "per-frame scaling before combining",
    "BIASCORR": "master bias subtracted (file name)",
    "DARKCORR": "master dark subtracted (file name)",
    "DARKSCAL": "scale applied to the master dark",
    "DARKEXP": "exposure time of the master dark (s)",
    "FLATCORR": "master flat divided (file name)",
    "OVSCCORR": "overscan level subtracted",
    "OVSCWARN": "the overscan region holds signal",
    "CALNIGHT": "night of the frame (evening date, YYYYMMDD)",
    "CALCANDS": "calibration sets considered (night, distance)",
    "TRIMSEC": "section kept from the raw frame (FITS, 1-based)",
    "GAINCORR": "converted to electrons with this gain (e-/ADU)",
    "RAWFILE": "raw frame this product was made from",
    "RAWSHA": "content fingerprint of the raw frame",
    "FLATNORM": "normalisation of the flat (median central region)",
    "FLATFLOO": "flat values below this were masked and set to 1",
    "NFLATLOW": "pixels below the flat floor",
    "NSATUR": "pixels flagged saturated",
    "ILLSKY": "sky flat: the low-order shape (file name)",
    "ILLDOME": "dome flat: the pixel structure (file name)",
    "ILLDEG": "total degree of the illumination polynomial",
    "ILLBIN": "block side of the illumination fit (px)",
    "ILLRMS": "robust rms of flat / illumination model - 1",
    "ILLBRMS": "rms of block medians / model - 1 (fit quality)",
    "RDNOISE": "read noise used for the uncertainty (BUNIT)",
    "QCSTATUS": "rejected or empty: this file holds no image",
    "EMPTYWHY": "why this master holds no image",
    "QCREASON": "reason code of the rejection",
    "CRNPIX": "pixels flagged as cosmic rays",
    "CRFRAC": "fraction of valid pixels flagged as cosmic rays",
    "CRMETHOD": "cosmic-ray method and parameters",
    "ALIGNREF": "reference frame of the alignment",
    "ALNNMAT": "stars matched to the reference",
    "ALNRMS": "rms residual of matched stars (px)",
    "ALNDX": "x shift of the fitted transform (px)",
    "ALNDY": "y shift of the fitted transform (px)",
    "ALNKERN": "interpolation kernel of the resampled data",
    "SKYLEVEL": "sky level before alignment (BUNIT)",
    "SKYNOISE": "sky noise per pixel (BUNIT)",
    "NSTARS": "sources detected (5 sigma, 5 px)",
    "FWHM": "median FWHM of the isolated stars (px)",
    "FWHMAS": "median FWHM of the isolated stars (arcsec)",
    "ELLIPTIC": "median ellipticity 1 - b/a of the stars",
    "TRANSPAR": "star flux / flux in the alignment reference",
    "SATFRAC": "fraction of pixels flagged saturated",
    "STKGROUP": "stack group (object_filter_exposure)",
    "NEXCLUDE": "frames left out of this stack or master (EXCLnnn)",
    "WEIGHTS": "frame weighting of the stack",
    "REJBITS": "mask bits that exclude a value",
    "SKYMEAN": "mean sky of the inputs (data unit)",
    "NLOW": "lowest values dropped per pixel (minmax)",
    "NHIGH": "highest values dropped per pixel (minmax)",
    "NHOT": "pixels flagged HOT (master dark)",
    "NDEAD": "pixels flagged DEAD (master flat)",
    "NBADCOL": "pixels flagged BAD_COLUMN (master flat)",
    "NUSERBAD": "pixels flagged BAD by the user map",
    "NBADPIX": "pixels with any defect bit",
    "USERBPM": "user-supplied bad-pixel map (badpix.user_map)",
}


def _set(header, key, value, comment):
    """Set a card, shortening the comment so the card fits in 80 characters."""
    text = f"'{value}'" if isinstance(value, str) else str(value)
    room = 80 - 10 - max(20, len(text)) - 3
    header[key] = (value, comment[: max(room, 0)])


def stamp(header, prodtype):
    """Write the pipeline, version, time and product type into ``header`` (in place).

    Parameters
    ----------
    header : astropy.io.fits.Header
        Header of a product being made (owned by the caller; never a raw header).
    prodtype : str
        E.g. ``'MASTER_BIAS'``, ``'CALIBRATED'``.
    """
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    for key, value in (
        ("PIPELINE", "ccdflow"),
        ("PIPEVER", __version__),
        ("DATE-RED", now),
        ("PRODTYPE", prodtype),
    ):
        _set(header, key, value, KEYWORDS[key])
    return header


def add_step(header, key, value):
    """Record one processing step (a keyword of ``KEYWORDS``) in ``header`` (in place)."""
    _set(header, key, value, KEYWORDS[key])
    return header


def add_inputs(header, paths, prefix="IMCMB"):
    """List combined inputs as ``IMCMB001 = 'file.fits'`` cards (IRAF convention)."""
    header["NCOMBINE"] = (len(paths), KEYWORDS["NCOMBINE"])
    for i, path in enumerate(paths, start=1):
        name = os.path.basename(str(path))
        if i <= 999:  # an 8-character keyword holds 3 digits; the rest go to HISTORY
            _set(header, f"{prefix}{i:03d}", name, "input frame")
        else:
            header.add_history(f"input {i}: {name}")
    return header
