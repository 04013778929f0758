"""Calibration library: masters made earlier (another night, another run) reused as they are.

A library is one or more folders of FITS masters written by ccdflow (a previous run's
``results/masters/``, or a curated folder of them). Every master ccdflow writes says in
its header what it is (``PRODTYPE``), which detector setup it belongs to (``CCDSETUP``),
its night (``CALNIGHT``), filter (``CALFILT``), exposure group (``CALEXPG``) and
temperature (``CALTEMP``), and whether the overscan was subtracted (``OVSCCORR``). The
plan (:func:`ccdflow.plan.make_plan`) uses a library master for a step only when the raw
directory itself offers none for it (own night or nearest within the gap), with the same
rules as for masters made from raw frames: the setup must match exactly; the nearest
night wins; darks are matched by exposure and, when asked, by temperature.

Files that are not usable masters are listed with a reason and never guessed at: masters
of other software or of ccdflow before 0.4 (no ``CCDSETUP``), and masters made with the
other overscan treatment (bias frames and overscan subtraction must not be mixed).
"""

__all__ = ["IDENTITY", "scan_library"]

from pathlib import Path

from ccdflow.io import FrameError, empty_product, quick_header
from ccdflow.plan import MasterSpec, night_of

#: Header keywords that identify a master for reuse, with their comments.
IDENTITY = {
    "CCDSETUP": "detector setup (binning, raw shape, readout)",
    "CALNIGHT": "night of the calibration set (YYYYMMDD)",
    "CALFILT": "filter of the master flat",
    "CALEXPG": "exposure group of the master dark",
    "CALTEMP": "median CCD temperature of the inputs (C)",
    "CALFKIND": "sky or dome part of a combined flat",
}

_KINDS = {"MASTER_BIAS": "bias", "MASTER_DARK": "dark", "MASTER_FLAT": "flat"}
_SUFFIXES = (".fits", ".fit", ".fts")


def scan_library(folders, overscan=False, utc_offset_hours=0.0):
    """Masters found in the library ``folders`` (searched recursively).

    Parameters
    ----------
    folders : list of str or Path
        Library folders. A folder that does not exist is an error (a typo in the
        configuration must not silently mean "no library").
    overscan : bool
        Whether this run subtracts the overscan: only masters made the same way are used.
    utc_offset_hours : float
        Local time minus UTC, for the night of a master without ``CALNIGHT``.

    Returns
    -------
    (list of MasterSpec, list of dict)
        Usable masters (``library_path`` set, ``name`` = that path) sorted by path, and
        the skipped files as ``{"path", "reason", "detail"}``.

    Raises
    ------
    FileNotFoundError
        A library folder does not exist.
    """
    specs, skipped = [], []
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration.library: {folder} is not a directory")
        for path in sorted(folder.rglob("*")):
            if path.name.startswith(".") or not path.name.lower().endswith(_SUFFIXES):
                continue
            spec, why = _read(path.resolve(), overscan, utc_offset_hours)
            if spec is None:
                skipped.append({"path": str(path), "reason": why[0], "detail": why[1]})
            else:
                specs.append(spec)
    return specs, skipped


def _read(path, overscan, utc_offset_hours):
    try:
        empty = empty_product(path)
        if empty is not None and empty.get("PIPELINE") == "ccdflow":
            why = empty.get("EMPTYWHY", "no input frame passed its gates")
            return None, ("empty_master", f"an empty master (no image): {why}")
        header = quick_header(path)
    except (FrameError, OSError) as exc:
        return None, ("unreadable", str(getattr(exc, "detail", exc)))
    kind = _KINDS.get(str(header.get("PRODTYPE", "")).strip())
    if header.get("PIPELINE") != "ccdflow" or kind is None:
        return None, ("not_a_master", "not a master written by ccdflow (PIPELINE/PRODTYPE)")
    setup = header.get("CCDSETUP")
    if not setup:
        return None, ("no_setup", "no CCDSETUP card (made before ccdflow 0.4): make it again")
    if bool(header.get("OVSCCORR")) != bool(overscan):
        made = "with" if header.get("OVSCCORR") else "without"
        return None, (
            "overscan_mismatch",
            f"made {made} overscan subtraction, this run has overscan.enabled "
            f"{str(bool(overscan)).lower()}",
        )
    if header.get("CALFKIND"):
        return None, (
            "flat_component",
            f"the {header['CALFKIND']} part of a combined flat; the combination is used",
        )
    night = str(header.get("CALNIGHT", "") or "") or night_of(
        header.get("DATE-OBS", ""), utc_offset_hours
    )
    temperature = header.get("CALTEMP")
    exptime = float(header.get("EXPTIME", 0.0) or 0.0)
    spec = MasterSpec(
        kind,
        str(path),
        str(setup),
        [],
        exptime=exptime,
        expgroup=str(header.get("CALEXPG", "") or ""),
        filter=str(header.get("CALFILT", "") or ""),
        bias=header.get("BIASCORR") or None,
        temperature=None if temperature in (None, "") else float(temperature),
        night=night,
        library_path=str(path),
    )
    return spec, None
