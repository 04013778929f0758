"""Inventory of a raw directory: read headers, translate them, classify frames.

Runs when the Snakefile is parsed, so it must be fast: headers are parsed without
astropy for plain FITS files, and a cache keyed by (path, size, mtime) means a
re-parse of an unchanged directory reads no file at all. Translation is pure
configuration (DESIGN §4): keyword aliases in priority order, an IMAGETYP vocabulary,
filename rules and per-file overrides, an exposure-time tolerance.

A frame that cannot be used is never fatal: it goes to the rejected list with a
reason code (``unreadable``, ``truncated``, ``no_image``, ``unknown_imagetyp``,
``missing_keyword``, ``bad_value``, ``excluded``, ``checksum``, ``duplicate_of:<file>``).

Integrity: a file whose header carries DATASUM or CHECKSUM is verified against them
(astropy), and only such a file has its data read for it (one more pass over bytes the
fingerprint has just read, so from the page cache; once per file: the result is cached
with the header). A file with the same content fingerprint as one before it (by path)
is a duplicate: the first is used, the others are rejected as ``duplicate_of:<first>``.
"""

__all__ = [
    "DETECTOR_RANGES",
    "FIELDS",
    "FLAT_KINDS",
    "Inventory",
    "exposure_label",
    "flat_kind",
    "future_mtimes",
    "group_exposures",
    "rejection_summary",
    "sanitize",
    "scan",
    "write_tsv",
]

import fnmatch
import hashlib
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

from ccdflow.io import FrameError, quick_header

#: Logical fields filled from headers (through keyword aliases) or configuration.
FIELDS = (
    "imagetyp",
    "exptime",
    "filter",
    "object",
    "date",
    "xbinning",
    "ybinning",
    "binning",
    "gain",
    "rdnoise",
    "temperature",
    "readout",
    "saturation",
)
#: Sane ranges of header detector values: field -> (detector config key of the value that
#: overrides the header, config key of the range, default range, unit). A header value
#: outside its range rejects the frame unless the configuration gives the value.
DETECTOR_RANGES = {
    "gain": ("gain", "gain_range", (0.05, 50.0), "e-/ADU"),
    "rdnoise": ("read_noise", "read_noise_range", (0.1, 100.0), "e-"),
}
#: Kind of a flat by its IMAGETYP value (``inventory.flat_kinds``; the values are flats
#: too): twilight (sky) flats carry the night sky's illumination, dome (lamp) flats the
#: best pixel-to-pixel signal (`ccdflow.illumination`). Any other flat is
#: ``'unspecified'``; other types have ``''``.
FLAT_KINDS = {
    "sky": ("skyflat", "twiflat", "sky flat", "twilight flat"),
    "dome": ("domeflat", "dome flat", "lampflat"),
}
#: Types whose shutter is closed: FILTER means nothing for them.
CLOSED_SHUTTER = ("bias", "dark")
#: Columns of frames.tsv, in order.
COLUMNS = (
    "frame",
    "path",
    "imagetyp",
    "flat_kind",
    "exptime",
    "expgroup",
    "filter",
    "filter_name",
    "object",
    "object_name",
    "group",
    "setup",
    "date",
    "ny",
    "nx",
    "xbinning",
    "ybinning",
    "gain",
    "rdnoise",
    "temperature",
    "readout",
    "saturation",
    "datamax",
    "hdu",
    "size",
    "fingerprint",
)
_CACHE_VERSION = 2
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass
class Inventory:
    """Result of :func:`scan`: usable frames and rejected files, both sorted by path."""

    frames: list = field(default_factory=list)
    rejected: list = field(default_factory=list)

    def of_type(self, imagetyp):
        """Frames of one type (``'bias'``, ``'dark'``, ``'flat'``, ``'light'``)."""
        return [f for f in self.frames if f["imagetyp"] == imagetyp]


def sanitize(name):
    """A string safe in file names: runs of characters outside ``[A-Za-z0-9._+-]`` -> ``_``.

    Leading and trailing ``_`` are dropped (the wildcard patterns of the workflow do not
    start with one): ``"g'"`` -> ``'g'``, ``'Johnson B'`` -> ``'Johnson_B'``; empty ->
    ``'none'``.
    """
    out = _SAFE.sub("_", str(name).strip()).strip("_")
    return out or "none"


def exposure_label(seconds):
    """Short, stable label of an exposure time: three significant digits (whole seconds
    from 100 s up), no exponent.

    >>> exposure_label(300.04), exposure_label(0.33), exposure_label(1234.0)
    ('300', '0.33', '1234')
    """
    if seconds <= 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(seconds)))
    value = round(seconds, digits)
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"


def group_exposures(times, absolute=0.05, relative=0.001):
    """Cluster exposure times that agree within a tolerance.

    Sorted times start a new group when they exceed the group's first member by more
    than ``max(absolute, relative * t)`` seconds, so 299.98, 300 and 300.1 are one
    group while 60 and 120 are two.

    Returns
    -------
    dict
        exposure time -> group label (:func:`exposure_label` of the median over the
        group's frames, so the most common exposure names it;
        more digits are used if two groups would share a label).
    """
    groups, current = [], []
    for t in sorted(times):
        if current and t - current[0] > max(absolute, relative * t):
            groups.append(current)
            current = []
        current.append(t)
    if current:
        groups.append(current)
    medians = [members[len(members) // 2] for members in groups]
    names = [exposure_label(t) for t in medians]
    digits = 1
    while len(set(names)) < len(names) and digits <= 20:
        # Groups sharing a label (299.5 and 300 both round to '300') get more digits.
        shared = {n for n in names if names.count(n) > 1}
        names = [
            f"{t:.{digits}f}".rstrip("0").rstrip(".") if n in shared else n
            for t, n in zip(medians, names, strict=True)
        ]
        digits += 1
    return {t: name for members, name in zip(groups, names, strict=True) for t in members}


def _walk(raw_dir, extensions, recursive):
    """Relative paths of candidate files, sorted; hidden files and folders skipped."""
    found = []
    stack = [(Path(raw_dir), "")]  # folder, its path relative to raw_dir ("a/b/")
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive:
                        stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.name.lower().endswith(extensions):
                    st = entry.stat()
                    found.append((prefix + entry.name, st.st_size, st.st_mtime_ns))
    return sorted(found)


def _fingerprint(path):
    """Content fingerprint (SHA-1 of the bytes): a re-copied file keeps it, an edit does not."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()[:16]


def _load_cache(path):
    try:
        with open(path, "rb") as f:
            cache = pickle.load(f)
        if cache.get("version") == _CACHE_VERSION:
            return cache["entries"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError):
        pass
    return {}


def _save_cache(path, entries):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "wb") as f:
        pickle.dump({"version": _CACHE_VERSION, "entries": entries}, f, protocol=5)
    os.replace(tmp, path)


def _read_entry(raw_dir, rel, size, mtime_ns):
    """Header (or error) and fingerprint of one file: the expensive part, cached."""
    path = Path(raw_dir) / rel
    try:
        header = quick_header(path)
    except FrameError as exc:
        return {"key": (size, mtime_ns), "error": (exc.reason, exc.detail)}
    except OSError as exc:
        return {"key": (size, mtime_ns), "error": ("unreadable", str(exc))}
    keep = {k: v for k, v in header.items() if k not in ("HISTORY", "COMMENT", "")}
    fingerprint = _fingerprint(path)
    if "DATASUM" in keep or "CHECKSUM" in keep:
        bad = _checksum_failure(path, keep["_HDU"], keep)
        if bad:
            return {"key": (size, mtime_ns), "error": ("checksum", bad)}
    return {"key": (size, mtime_ns), "header": keep, "fingerprint": fingerprint}


def _checksum_failure(path, hdu, header):
    """Which of DATASUM / CHECKSUM of HDU ``hdu`` does not match its bytes ('' if none).

    Reads the data unit: called only for headers that carry one of the two cards.
    """
    from astropy.io import fits

    with fits.open(path, checksum=False, memmap=False) as hdul:
        unit = hdul[hdu]
        checks = (("DATASUM", unit.verify_datasum), ("CHECKSUM", unit.verify_checksum))
        failed = [f"{k} = {header[k]!r}" for k, verify in checks if k in header and verify() == 0]
    if not failed:
        return ""
    return (
        f"{' and '.join(failed)} do(es) not match the file's bytes (HDU {hdu}): the file is"
        " corrupt; copy it again from the camera or the archive"
    )


def _lookup(header, aliases):
    """First alias present with a non-blank value: (keyword, value) or (None, None)."""
    for key in aliases:
        value = header.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return key, value
    return None, None


def _apply_rules(rel, values, rules, overrides):
    """Filename rules (fill or override) and per-file overrides, in that order."""
    name = rel.rsplit("/", 1)[-1]
    for rule in rules:
        pattern = rule.get("match", "*")
        if not (fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)):
            continue
        found = {}
        if rule.get("regex"):
            m = re.search(rule["regex"], name)
            if m is None:
                continue
            found.update({k: v for k, v in m.groupdict().items() if v is not None})
        found.update(rule.get("set", {}))
        for key, value in found.items():
            if rule.get("override", False) or values.get(key) in (None, ""):
                values[key] = value
    for pattern, fields in overrides.items():
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(name, pattern):
            values.update(fields)
    return values


def _number(value, what):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} = {value!r} is not finite")
    return number


def _binning(values, source):
    """(x, y) binning from XBINNING/YBINNING-style fields, else a combined CCDSUM-style
    field (``'2 2'``, ``'2x2'``, ``'2,2'``); 1 when neither is there."""
    combined = values.get("binning")
    pair = (None, None)
    if combined not in (None, ""):
        parts = re.split(r"[\sx,*]+", str(combined).strip().lower())
        if len(parts) != 2:
            what = source.get("binning") or "binning"
            raise ValueError("bad_value", f"{what} = {combined!r} is not 'X Y' binning")
        pair = parts
    xbin = values["xbinning"] if values["xbinning"] not in (None, "") else pair[0]
    ybin = values["ybinning"] if values["ybinning"] not in (None, "") else pair[1]
    out = []
    for value, name in ((xbin, "xbinning"), (ybin, "ybinning")):
        number = _number(1 if value is None else value, source.get(name) or name)
        if number < 1 or number != int(number):
            raise ValueError(
                "bad_value", f"{source.get(name) or name} = {value!r} is not a binning"
            )
        out.append(int(number))
    return tuple(out)


def _vocabulary(cfg):
    """IMAGETYP value (lower case) -> canonical type (the flat kinds' values are flats)."""
    out = {v.strip().lower(): "flat" for names in _flat_kinds(cfg).values() for v in names}
    for canonical, names in cfg["imagetyp_values"].items():
        out |= {v.strip().lower(): canonical for v in [*names, canonical]}
    return out


def _flat_kinds(cfg):
    """IMAGETYP value (lower case) -> flat kind, from ``inventory.flat_kinds``."""
    kinds = cfg.get("flat_kinds") or {}
    return {k: [v.strip().lower() for v in kinds.get(k, d)] for k, d in FLAT_KINDS.items()}


def flat_kind(raw_type, cfg):
    """``'sky'``, ``'dome'`` or ``'unspecified'``: the kind of a flat whose IMAGETYP (or
    filename-rule) value is ``raw_type`` (``inventory.flat_kinds``)."""
    value = str(raw_type).strip().lower()
    return next((k for k, vs in _flat_kinds(cfg).items() if value in vs), "unspecified")


def _check_ranges(values, source, detector):
    """Raise ValueError(reason, detail) for a header gain or read noise outside its sane
    range (:data:`DETECTOR_RANGES`), unless ``detector`` (config) gives the value or has
    it ``measured``."""
    for name, (key, range_key, default, unit) in DETECTOR_RANGES.items():
        value = values[name]
        if value is None or detector.get(key) not in (None, "header"):
            continue  # a configured number, or measured from frame pairs: header unused
        low, high = detector.get(range_key) or default
        if not low <= value <= high:
            aliases = "/".join(source["aliases"][name])
            raise ValueError(
                f"{key}_out_of_range",
                f"{source[name] or name} = {value:g} is outside the sane range {low:g}-{high:g}"
                f" {unit} (detector.{range_key}). If the header is wrong set detector.{key};"
                f" if another card holds the {unit}, put it first in inventory.keywords."
                f"{name} (now {aliases})",
            )


def _check_sections(record, header, overscan):
    """Raise ValueError('bad_section', detail) when the overscan or trim section of a
    frame cannot be resolved (:func:`ccdflow.sections.resolve_sections`)."""
    from ccdflow.sections import SectionError, resolve_sections

    try:
        resolve_sections(header, (record["ny"], record["nx"]), overscan, record["path"])
    except SectionError as exc:
        raise ValueError(
            "bad_section",
            f"{exc}. Set overscan.biassec / overscan.trimsec to literal sections "
            "[x1:x2,y1:y2] (1-based) or exclude the file (inventory.exclude)",
        ) from None


def _classify(rel, entry, cfg, vocabulary=None, detector=None):
    """Translate one header into a frame record, or raise ValueError(reason, detail).

    ``vocabulary`` (of :func:`_vocabulary`) may be passed in to build it once per scan;
    ``detector`` is the ``detector`` configuration (sane ranges, :func:`_check_ranges`).
    """
    header = entry["header"]
    values, source = {}, {}
    for name in FIELDS:
        key, value = _lookup(header, cfg["keywords"].get(name, []))
        values[name], source[name] = value, key
    values = _apply_rules(rel, values, cfg.get("filename_rules", []), cfg.get("overrides", {}))

    raw_type = values["imagetyp"]
    if raw_type in (None, ""):
        aliases = "/".join(cfg["keywords"]["imagetyp"])
        raise ValueError("missing_keyword", f"no {aliases} and no filename rule matched")
    if vocabulary is None:
        vocabulary = _vocabulary(cfg)
    imagetyp = vocabulary.get(str(raw_type).strip().lower())
    if imagetyp is None:
        raise ValueError(
            "unknown_imagetyp",
            f"{source['imagetyp'] or 'rule'} = {raw_type!r} is not in the imagetyp_values"
            " vocabulary (add it in config: inventory.imagetyp_values)",
        )
    try:
        if values["exptime"] in (None, ""):
            if imagetyp != "bias":
                aliases = "/".join(cfg["keywords"]["exptime"])
                raise ValueError("missing_keyword", f"{imagetyp} frame without {aliases}")
            exptime = 0.0
        else:
            exptime = _number(values["exptime"], source["exptime"] or "exptime")
            if exptime < 0:
                raise ValueError("bad_value", f"negative exposure time {exptime}")
        xbin, ybin = _binning(values, source)
        gain = None if values["gain"] in (None, "") else _number(values["gain"], "gain")
        rdnoise = None if values["rdnoise"] in (None, "") else _number(values["rdnoise"], "rn")
        sat = values["saturation"]
        saturation = None if sat in (None, "") else _number(sat, "saturation")
        temp = values["temperature"]
        temperature = None if temp in (None, "") else _number(temp, "temperature")
    except ValueError as exc:
        if len(exc.args) == 2:
            raise
        raise ValueError("bad_value", str(exc)) from None
    source["aliases"] = cfg["keywords"]
    _check_ranges({"gain": gain, "rdnoise": rdnoise}, source, detector or {})

    closed = imagetyp in CLOSED_SHUTTER
    filt = "" if closed or values["filter"] is None else str(values["filter"]).strip()
    # What a flat or light lacks: the plan names it if no master can calibrate the frame
    missing = {} if closed or filt else {"filter": "/".join(cfg["keywords"]["filter"]) or "filter"}
    obj = "" if imagetyp != "light" else str(values["object"] or "").strip()
    ny, nx = header["_SHAPE"]
    setup = f"{xbin}x{ybin}_{nx}x{ny}"
    if values["readout"] not in (None, ""):
        # '_' separates the parts of {setup}: the readout mode must not contain one
        setup += "_" + sanitize(values["readout"]).replace("_", "-")
    return {
        "path": rel,
        "imagetyp": imagetyp,
        "flat_kind": flat_kind(raw_type, cfg) if imagetyp == "flat" else "",
        "exptime": 0.0 if imagetyp == "bias" else exptime,
        "filter_name": filt,
        "object_name": obj or ("unknown" if imagetyp == "light" else ""),
        "setup": setup,
        "date": "" if values["date"] is None else str(values["date"]),
        "ny": ny,
        "nx": nx,
        "xbinning": xbin,
        "ybinning": ybin,
        "gain": gain,
        "rdnoise": rdnoise,
        "temperature": temperature,
        "readout": "" if values["readout"] is None else str(values["readout"]),
        "saturation": saturation,
        "datamax": _datamax(header),
        "hdu": header["_HDU"],
        "size": entry["key"][0],
        "fingerprint": entry["fingerprint"],
        "missing": missing,
    }


def _datamax(header):
    """Largest value the raw data type can hold (ADU), or None for float data."""
    bitpix = int(header.get("BITPIX", 0))
    if bitpix <= 0:
        return None
    bzero = float(header.get("BZERO", 0) or 0)
    bscale = float(header.get("BSCALE", 1) or 1)
    top = 255 if bitpix == 8 else 2 ** (bitpix - 1) - 1
    return float(top * bscale + bzero)


def _unique_names(raw_names):
    """raw value -> sanitised name, collisions ('a b' vs 'a_b') made unique.

    Values that are already safe keep their name (so 'a_b' is not renamed when an
    'a b' appears later); the others get a short hash of the raw value on a collision.
    """
    out, taken = {}, set()
    for raw in sorted(set(raw_names), key=lambda r: (sanitize(r) != r, r)):
        name = base = sanitize(raw) if raw else "none"
        digest, n = hashlib.sha1(raw.encode()).hexdigest(), 4
        while name in taken:
            name, n = f"{base}-{digest[:n]}", n + 1
        taken.add(name)
        out[raw] = name
    return out


def _frame_ids(paths):
    """Relative path -> frame id (path without extension, '/' -> '__', sanitised)."""
    ids, used = {}, set()
    for rel in paths:
        stem = rel
        for ext in (".fz", ".gz", ".bz2"):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
        stem = re.sub(r"\.[^./]*$", "", stem)
        base = sanitize(stem.replace("/", "__"))
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        ids[rel] = name
    return ids


def scan(
    raw_dir,
    cfg,
    cache_path=None,
    grouping=("object", "filter", "expgroup"),
    detector=None,
    overscan=None,
):
    """Inventory of ``raw_dir``.

    Parameters
    ----------
    raw_dir : path-like
        Directory of raw frames; read only, never written.
    cfg : dict
        The ``inventory`` section of the configuration (see ``config/config.yaml``).
    cache_path : path-like, optional
        Header cache; entries are reused while (size, mtime) of a file are unchanged.
        Rewritten only when it changes.
    grouping : sequence of str
        Frame-table columns whose values define a light frame's stack group.
    detector : dict, optional
        The ``detector`` section: header gain and read noise outside its sane ranges
        reject the frame (:data:`DETECTOR_RANGES` when not given).
    overscan : dict, optional
        The ``overscan`` section when it is enabled: a frame whose overscan or trim
        section (header keyword) is missing, not a section or does not fit its image is
        rejected (``bad_section``).

    Raises
    ------
    ccdflow.sections.SectionError
        When a literal section of ``overscan`` cannot be a section of any image.

    Returns
    -------
    Inventory
    """
    raw_dir = Path(raw_dir)
    if overscan:
        from ccdflow.sections import check_configured

        check_configured(overscan)
    extensions = tuple(e.lower() for e in cfg["extensions"])
    files = _walk(raw_dir, extensions, cfg.get("recursive", True))
    cache = _load_cache(cache_path) if cache_path else {}
    entries, changed = {}, False
    for rel, size, mtime_ns in files:
        entry = cache.get(rel)
        if entry is None or entry["key"] != (size, mtime_ns):
            entry = _read_entry(raw_dir, rel, size, mtime_ns)
            changed = True
        entries[rel] = entry
    if cache_path and (changed or len(entries) != len(cache)):
        _save_cache(cache_path, entries)

    frames, rejected = [], []
    excluded = cfg.get("exclude", [])
    first_with = {}  # fingerprint -> first path with that content
    vocabulary = _vocabulary(cfg)
    for rel, entry in entries.items():
        if any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(Path(rel).name, p) for p in excluded):
            rejected.append({"path": rel, "reason": "excluded", "detail": "inventory.exclude"})
            continue
        if "error" in entry:
            reason, detail = entry["error"]
            rejected.append({"path": rel, "reason": reason, "detail": detail})
            continue
        original = first_with.setdefault(entry["fingerprint"], rel)
        if original != rel:
            rejected.append(
                {
                    "path": rel,
                    "reason": f"duplicate_of:{original}",
                    "detail": f"same content (fingerprint {entry['fingerprint']}) as {original}",
                }
            )
            continue
        try:
            record = _classify(rel, entry, cfg, vocabulary, detector)
            if overscan:
                _check_sections(record, entry["header"], overscan)
            frames.append(record)
        except ValueError as exc:
            reason, detail = exc.args if len(exc.args) == 2 else ("bad_value", str(exc))
            rejected.append({"path": rel, "reason": reason, "detail": detail})

    tol = cfg.get("exptime_tolerance", {})
    by_setup = {}
    for f in frames:
        by_setup.setdefault(f["setup"], []).append(f)
    for members in by_setup.values():
        labels = group_exposures(
            [f["exptime"] for f in members if f["imagetyp"] != "bias"],
            absolute=tol.get("absolute", 0.05),
            relative=tol.get("relative", 0.001),
        )
        for f in members:
            f["expgroup"] = labels.get(f["exptime"], "0")
    filters = _unique_names(f["filter_name"] for f in frames if f["filter_name"])
    objects = _unique_names(f["object_name"] for f in frames if f["object_name"])
    ids = _frame_ids([f["path"] for f in frames])
    for f in frames:
        f["frame"] = ids[f["path"]]
        f["filter"] = filters.get(f["filter_name"], "") if f["filter_name"] else ""
        if f["imagetyp"] in ("flat", "light") and not f["filter"]:
            f["filter"] = "none"
        f["object"] = objects.get(f["object_name"], "") if f["object_name"] else ""
        # Sanitised again: 'date' or 'setup' may be among the grouping columns.
        group = "_".join(sanitize(f[k]) for k in grouping)
        f["group"] = group if f["imagetyp"] == "light" else ""
    return Inventory(frames=frames, rejected=rejected)


def future_mtimes(raw_dir, records, now=None):
    """Raw files whose modification time is later than now (a camera clock set wrong).

    Snakemake requires every output to be newer than its inputs, even ``ancient()`` ones,
    so a job whose raw input lies in the future fails after it ran. Such files are left
    out of the jobs' inputs (their content still counts: the fingerprint is a parameter).

    Parameters
    ----------
    raw_dir : path-like
        The raw directory.
    records : iterable of dict
        Inventory records (``path`` relative to ``raw_dir``).
    now : float, optional
        Current time (s since the epoch); default ``time.time()``.

    Returns
    -------
    dict
        Absolute path (str) -> modification time (s since the epoch), for the files in
        the future only.
    """
    import time

    now = time.time() if now is None else now
    out = {}
    for record in records:
        path = str(Path(raw_dir) / record["path"])
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        if mtime > now:
            out[path] = mtime
    return out


def rejection_summary(rejected):
    """One line on the rejected files: count per reason and the first detail of each.

    >>> rejection_summary([{"path": "a.fits", "reason": "checksum", "detail": "DATASUM ..."}])
    '1 rejected: checksum 1 (a.fits: DATASUM ...)'
    """
    first, counts = {}, {}
    for r in rejected:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        first.setdefault(r["reason"], f"{r['path']}: {r['detail']}")
    parts = [f"{reason} {n} ({first[reason]})" for reason, n in sorted(counts.items())]
    return f"{len(rejected)} rejected: " + "; ".join(parts) if rejected else "0 rejected"


def _tsv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value).replace("\t", " ").replace("\n", " ")


def write_tsv(path, rows, columns):
    """Write rows as a TSV table; the file is rewritten only if its content changes.

    Returns True when the file was (re)written.
    """
    path = Path(path)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_tsv_value(r.get(c)) for c in columns) for r in rows]
    text = "\n".join(lines) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True
