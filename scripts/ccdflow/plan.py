"""Calibration plan: which masters to make and which masters each frame uses.

Pure function of the inventory and the configuration, evaluated when the Snakefile is
parsed, so a dry run shows the whole job graph and every job lists its inputs.

Reject the frame, not the night (DESIGN §8): with ``calibration.missing_master:
exclude`` (the default) a light that no master can calibrate (no flat of its filter or
setup) and calibration frames too few for a master are left out with a reason code in
``Plan.rejected`` (``no_matching_master``, ``missing_keyword:FILTER``,
``too_few_frames``) and everything else is reduced. Only a step impossible for every
light (no light can get a flat while flats are required) raises :class:`PlanError`, with
one message that says what is missing and how to fix it; ``missing_master: error``
raises at the first such problem.
"""

__all__ = [
    "CALIBRATION_TABLE_COLUMNS",
    "FRAME_TABLE_COLUMNS",
    "REJECT_REASONS",
    "MasterSpec",
    "Plan",
    "PlanError",
    "bad_pixel_map_masters",
    "calibration_table",
    "candidates_text",
    "choose_dark",
    "detector",
    "detector_sources",
    "frame_table",
    "make_plan",
    "measured",
    "night_of",
    "reference_sets",
]

import datetime as _dt
from dataclasses import dataclass, field
from statistics import median

#: Columns the plan adds to frames.tsv (after the inventory's).
FRAME_TABLE_COLUMNS = (
    "night",
    "master",
    "bias",
    "dark",
    "dark_scale",
    "flat",
    "reference_set",
    "candidates",
)
#: Columns of calibration.tsv (one row per light frame).
CALIBRATION_TABLE_COLUMNS = (
    "frame",
    "night",
    "bias",
    "dark",
    "dark_scale",
    "flat",
    "reference_set",
    "candidates",
)

#: Reason codes of the frames the plan leaves out (``Plan.rejected``).
REJECT_REASONS = (
    "no_matching_master",
    "missing_keyword:<KEY>",
    "too_few_frames",
    "unspecified_flat_kind",
)
#: What to do with a frame no master can calibrate (``calibration.missing_master``).
MISSING_MASTER_DEFAULT = "exclude"


class PlanError(Exception):
    """A configuration or data problem that makes the requested reduction impossible."""


@dataclass
class MasterSpec:
    """One master to make: its kind, name (file stem), inputs and the masters it uses."""

    kind: str
    name: str
    setup: str
    frames: list
    exptime: float = 0.0
    expgroup: str = ""
    filter: str = ""
    bias: str | None = None
    dark: str | None = None
    dark_scales: list = field(default_factory=list)
    temperature: float | None = None
    night: str = ""
    library_path: str = ""
    flat_kind: str = ""
    components: dict = field(default_factory=dict)

    @property
    def path(self):
        """Where the master is: made by this run, or a file of the calibration library."""
        return self.library_path or f"results/masters/{self.name}.fits"

    def identity(self):
        """Header values that let a later run reuse this master (`ccdflow.library`).

        ``CALFKIND`` marks the sky or dome part of a combined flat (``components``), which
        no light uses directly."""
        return {
            "CCDSETUP": self.setup,
            "CALNIGHT": self.night,
            "CALFILT": self.filter,
            "CALEXPG": self.expgroup,
            "CALTEMP": None if self.temperature is None else round(float(self.temperature), 2),
            "CALFKIND": self.flat_kind,
        }


@dataclass
class Plan:
    """Masters by name, and per light frame (by frame id) the masters it uses.

    ``masters`` are made by this run; ``library`` holds the library masters in use
    (by name, which is their path); ``rejected`` the frames left out (rows of
    rejected.tsv: path, reason, detail).
    """

    masters: dict = field(default_factory=dict)
    lights: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    library: dict = field(default_factory=dict)
    rejected: list = field(default_factory=list)

    def spec(self, name):
        """The master called ``name``, made here or from the library."""
        return self.masters[name] if name in self.masters else self.library[name]

    def groups(self):
        """Stack group -> sorted list of light frame ids."""
        out = {}
        for frame, use in self.lights.items():
            out.setdefault(use["record"]["group"], []).append(frame)
        return {g: sorted(v) for g, v in sorted(out.items())}


def choose_dark(exptime, expgroup, darks, scalable=True):
    """Pick the master dark for an exposure and the scale to apply to it.

    Equal exposure group -> scale 1. Otherwise (only if ``scalable``, i.e. the darks are
    bias-subtracted) the nearest longer dark scaled by ``exptime / t_dark``; failing
    that, the nearest shorter one. Zero-second darks are never scaled.

    Parameters
    ----------
    exptime : float
        Exposure of the frame to correct (s).
    expgroup : str
        Its exposure-group label.
    darks : list of MasterSpec
        Candidate master darks of the same setup.

    Returns
    -------
    (MasterSpec, float) or (None, 0.0)
    """
    for d in darks:
        if d.expgroup == expgroup:
            return d, 1.0
    darks = [d for d in darks if d.exptime > 0]
    if not scalable or not darks:
        return None, 0.0
    longer = [d for d in darks if d.exptime > exptime]
    pick = min(longer, key=lambda d: d.exptime) if longer else max(darks, key=lambda d: d.exptime)
    return pick, exptime / pick.exptime


def _names(frames):
    return ", ".join(f["path"] for f in frames[:5]) + (" ..." if len(frames) > 5 else "")


def _missing_keyword(f):
    """``missing_keyword:FILTER`` for a flat or light the header gave no filter, else ''."""
    aliases = f.get("missing", {}).get("filter")
    return f"missing_keyword:{aliases.split('/')[0]}" if aliases else ""


def night_of(date, utc_offset_hours=0.0):
    """The night a DATE-OBS belongs to, as the date of its evening (``YYYYMMDD``).

    A night runs from local noon to local noon; local time = UTC + ``utc_offset_hours``.
    Returns ``''`` for a missing or unreadable date.
    """
    try:
        t = _dt.datetime.fromisoformat(str(date).strip().replace("Z", ""))
    except ValueError:
        return ""
    return (t + _dt.timedelta(hours=utc_offset_hours - 12)).strftime("%Y%m%d")


def _days(a, b):
    """Nights apart; an unknown night matches any other after all known ones."""
    if a == b:
        return 0
    if not a or not b:
        return 10**6
    fmt = "%Y%m%d"
    return abs((_dt.datetime.strptime(a, fmt) - _dt.datetime.strptime(b, fmt)).days)


def _nearest(options, night, max_days, label="night"):
    """(night, value) of ``options`` (night -> value) nearest to ``night`` within
    ``max_days`` (earlier night on ties), or (None, None); plus the candidates seen."""
    ranked = sorted((_days(n, night), n) for n in options)
    seen = [
        f"{label} {n} ({d} d)" if n and d < 10**6 else f"{label} {n}" if n else "one set"
        for d, n in ranked
    ]
    for d, n in ranked:
        if d <= max_days or not night or not n:
            return n, options[n], seen
    return None, None, seen


def _by_night(specs, warnings):
    """night -> library master (one per night: the first by path, the others reported)."""
    out = {}
    for spec in specs:
        if spec.night in out:
            warnings.append(
                f"library: {spec.library_path} duplicates {out[spec.night].library_path} "
                f"(same kind, setup and night); the first is used"
            )
        else:
            out[spec.night] = spec
    return out


def _sky_and_dome(members, cfg, minimum, where, plan):
    """``{'sky': [...], 'dome': [...]}`` when the flats of one master are to be made as a
    sky and a dome master and combined (``calibration.illumination.enabled`` and at least
    ``minimum`` flats of each kind), else None (one master of all of them).

    Flats of neither kind among them are left out of both, with the reason
    ``unspecified_flat_kind`` in ``plan.rejected``. Sky and dome flats mixed in one master
    (the option off, or too few of one kind) is a warning."""
    kinds = {k: [f for f in members if f.get("flat_kind") == k] for k in ("sky", "dome")}
    if not (kinds["sky"] and kinds["dome"]):
        return None
    counts = f"{len(kinds['sky'])} sky and {len(kinds['dome'])} dome flats"
    if not cfg.get("illumination", {}).get("enabled", False):
        plan.warnings.append(
            f"{where}: {counts} go into one master flat, though their illuminations "
            "differ (the flat gates may leave one kind out as wrong_pattern); "
            "calibration.illumination.enabled: true makes a master of each and gives the "
            "lights the sky's low-order shape with the dome's pixel structure"
        )
        return None
    if min(len(v) for v in kinds.values()) < minimum:
        plan.warnings.append(
            f"{where}: {counts}, fewer than calibration.min_frames.flat ({minimum}) of one "
            "kind: one master of all of them, not the sky/dome combination"
        )
        return None
    for f in members:
        if f.get("flat_kind") not in kinds:
            plan.rejected.append(
                {
                    "path": f["path"],
                    "reason": "unspecified_flat_kind",
                    "detail": f"{where} has sky and dome flats, combined "
                    "(calibration.illumination); this flat is neither: name its IMAGETYP "
                    "value in inventory.flat_kinds",
                }
            )
    return kinds


def make_plan(inventory, cfg, overscan=None, library=()):
    """Build the plan.

    Without ``by_night`` every setup has one calibration set. With it, calibration
    frames form one set per night (DATE-OBS, local noon to noon), and each frame uses,
    for each step, the set of its own night if it has that master, else the nearest
    night's within ``max_night_gap`` days (earlier night on ties); darks can also be
    required to match the frame's temperature within ``dark_max_temp_diff``.

    ``library`` masters (`ccdflow.library.scan_library`) are used for a step only when
    the raw directory offers no master for it: same setup, nearest night (within
    ``max_night_gap`` when ``by_night``), darks by exposure group and temperature, flats
    by filter.

    Parameters
    ----------
    inventory : ccdflow.inventory.Inventory
    cfg : dict
        The ``calibration`` section of the configuration.
    overscan : dict, optional
        The ``overscan`` section when it is enabled: without ``bias_after_overscan`` the
        bias frames are not used (subtracting both removes the bias level twice).

    Returns
    -------
    Plan
    """
    plan = Plan()
    library = list(library)
    if overscan and not overscan.get("bias_after_overscan", False) and cfg.get("use_bias", True):
        cfg = {**cfg, "use_bias": False}
        if any(f["imagetyp"] == "bias" for f in inventory.frames):
            plan.warnings.append(
                "overscan is subtracted and overscan.bias_after_overscan is false: "
                "bias frames are not used"
            )
    minimum = cfg["min_frames"]
    fix = "Add frames, lower the minimum, or exclude them (inventory.exclude)."
    policy = cfg.get("missing_master", MISSING_MASTER_DEFAULT)
    problems = []  # what stops the plan with missing_master: error

    def problem(message, frames, reason):
        """Stop (policy 'error') or leave ``frames`` out with ``reason(frame)``."""
        if policy == "error":
            raise PlanError(message)
        problems.append(message)
        for f in frames:
            aliases = f.get("missing", {}).get("filter")
            why = f"no {aliases} in its header (filter 'none'); " if aliases else ""
            plan.rejected.append({"path": f["path"], "reason": reason(f), "detail": why + message})

    def enough(members, kind, key):
        """Are there enough frames for a master? If not, a problem."""
        if len(members) >= minimum[kind]:
            return True
        message = (
            f"{kind} {key}: {len(members)} frame(s) ({_names(members)}) but "
            f"calibration.min_frames.{kind} is {minimum[kind]}. {fix}"
        )
        problem(message, members, lambda f: _missing_keyword(f) or "too_few_frames")
        return False

    flat_setups = {}  # filter -> setups with flats of it (for the messages)
    for f in inventory.frames:
        if f["imagetyp"] == "flat":
            flat_setups.setdefault(f["filter"], set()).add(f["setup"])
    by_night = cfg.get("by_night", False)
    offset = cfg.get("night_utc_offset_hours", 0.0)
    gap = cfg.get("max_night_gap", 30) if by_night else 10**9
    max_dt = cfg.get("dark_max_temp_diff")

    def night(f):
        return night_of(f.get("date", ""), offset) if by_night else ""

    def lib_night(f):
        # the library is searched by date even without by_night (nearest master first)
        return night_of(f.get("date", ""), offset)

    def with_library(local, lib, f, n=None):
        """(master, candidates seen): the local pick, else the library's nearest."""
        _, spec, seen = _nearest(local, night(f) if n is None else n, gap)
        if spec is None and lib:
            _, spec, more = _nearest(lib, lib_night(f), gap, label="library night")
            seen = seen + more
            if spec is not None:
                plan.library[spec.name] = spec
        return spec, seen

    def tag(setup, n):
        return f"{setup}_{n or 'undated'}" if by_night else setup

    for setup in sorted({f["setup"] for f in inventory.frames}):
        warnings_before = len(plan.warnings)
        frames = [f for f in inventory.frames if f["setup"] == setup]
        of = {t: [f for f in frames if f["imagetyp"] == t] for t in ("bias", "dark", "flat")}
        lights = [f for f in frames if f["imagetyp"] == "light"]
        nights = sorted({night(f) for f in frames})
        mine = [s for s in library if s.setup == setup]
        lib_bias = _by_night([s for s in mine if s.kind == "bias"], plan.warnings)
        if not cfg.get("use_bias", True):
            lib_bias = {}

        biases = {}
        if cfg.get("use_bias", True):
            for n in nights:
                members = [f for f in of["bias"] if night(f) == n]
                if members and enough(members, "bias", f"(setup {tag(setup, n)})"):
                    spec = MasterSpec("bias", f"bias_{tag(setup, n)}", setup, members, night=n)
                    biases[n] = plan.masters[spec.name] = spec
        if lights and not biases and not lib_bias:
            why = "calibration.use_bias is false" if of["bias"] else "no bias frames"
            plan.warnings.append(f"setup {setup}: {why}, bias step skipped")

        darks = {}
        for n in nights if cfg.get("use_dark", True) else []:
            groups = {}
            for f in of["dark"]:
                if night(f) == n:
                    groups.setdefault(f["expgroup"], []).append(f)
            for label, members in sorted(groups.items()):
                if not enough(members, "dark", f"{label} s (setup {tag(setup, n)})"):
                    continue
                bias = with_library(biases, lib_bias, members[0], n)[0]
                temps = [f["temperature"] for f in members if f.get("temperature") is not None]
                d = MasterSpec(
                    "dark",
                    f"dark_{tag(setup, n)}_{label}s",
                    setup,
                    members,
                    exptime=median(f["exptime"] for f in members),
                    expgroup=label,
                    bias=bias.name if bias else None,
                    night=n,
                )
                d.temperature = median(temps) if temps else None
                plan.masters[d.name] = d
                darks.setdefault(n, []).append(d)

        lib_darks = {}
        for d in mine if cfg.get("use_dark", True) else []:
            if d.kind == "dark":
                lib_darks.setdefault(d.night, []).append(d)

        def usable(f, by_night_darks):
            """night -> darks of a matching temperature."""
            pool = {}
            for n, ds in by_night_darks.items():
                ok = [
                    d
                    for d in ds
                    if max_dt is None
                    or f.get("temperature") is None
                    or d.temperature is None
                    or abs(d.temperature - f["temperature"]) <= max_dt
                ]
                if ok:
                    pool[n] = ok
            return pool

        def pick_dark(f, darks=darks, lib_darks=lib_darks):
            """Nearest night with darks (of a matching temperature), then choose_dark;
            the library's only when the raw directory has none."""
            _, ds, seen = _nearest(usable(f, darks), night(f), gap)
            if ds is None and lib_darks:
                _, ds, more = _nearest(usable(f, lib_darks), lib_night(f), gap, "library night")
                seen = seen + more
            if ds is None:
                return None, 0.0, seen
            scalable = ds[0].bias is not None and cfg.get("dark_scaling", True)
            d, scale = choose_dark(f["exptime"], f["expgroup"], ds, scalable)
            if d is not None and d.library_path:
                plan.library[d.name] = d
            return d, scale, seen

        flats = {}
        for f in of["flat"] if cfg.get("use_flat", True) else []:
            flats.setdefault((night(f), f["filter"]), []).append(f)
        flat_specs = {}

        def flat_master(name, members, n, filt, kind="", setup=setup, biases=biases, lib=lib_bias):
            bias = with_library(biases, lib, members[0], n)[0]
            spec = MasterSpec(
                "flat",
                name,
                setup,
                members,
                filter=filt,
                bias=bias.name if bias else None,
                night=n,
                flat_kind=kind,
            )
            picks = [pick_dark(f)[:2] for f in members]
            chosen = {p[0].name for p in picks if p[0] is not None}
            if chosen:
                # One dark for the whole master (the one most flats chose), each flat scaled
                # by its own exposure unless it sits in the dark's own exposure group.
                name = max(sorted(chosen), key=[p[0] and p[0].name for p in picks].count)
                dark = plan.spec(name)
                scalable = dark.bias is not None and cfg.get("dark_scaling", True)
                spec.dark = name
                spec.dark_scales = [
                    f["exptime"] / dark.exptime
                    if scalable and f["expgroup"] != dark.expgroup and dark.exptime > 0
                    else 1.0  # a dark that still holds the bias (no master bias) is not scaled
                    for f in members
                ]
            plan.masters[spec.name] = spec
            return spec

        for (n, filt), members in sorted(flats.items()):
            where = f"filter {filt} (setup {tag(setup, n)})"
            if not enough(members, "flat", where):
                continue
            name = f"flat_{tag(setup, n)}_{filt}"
            parts = _sky_and_dome(members, cfg, minimum["flat"], where, plan)
            if parts is None:
                flat_specs.setdefault(filt, {})[n] = flat_master(name, members, n, filt)
                continue
            sky, dome = (flat_master(f"{name}_{k}", parts[k], n, filt, k) for k in ("sky", "dome"))
            combined = MasterSpec("flat", name, setup, [], filter=filt, night=n)
            combined.components = {"sky": sky.name, "dome": dome.name}
            plan.masters[name] = flat_specs.setdefault(filt, {})[n] = combined

        lib_flats = {}
        for spec in mine if cfg.get("use_flat", True) else []:
            if spec.kind == "flat":
                lib_flats.setdefault(spec.filter, []).append(spec)
        lib_flats = {k: _by_night(v, plan.warnings) for k, v in lib_flats.items()}

        missing = {}
        for f in lights:
            bias, bias_seen = with_library(biases, lib_bias, f)
            dark, scale, dark_seen = pick_dark(f)
            flat, flat_seen = with_library(
                flat_specs.get(f["filter"], {}), lib_flats.get(f["filter"], {}), f
            )
            if flat is None and cfg.get("use_flat", True):
                missing.setdefault(f["filter"], []).append(f)
            if dark is None and (of["dark"] or lib_darks) and cfg.get("use_dark", True):
                if not any(d.bias for ds in [*darks.values(), *lib_darks.values()] for d in ds):
                    why = "darks cannot be scaled without a bias"
                elif not cfg.get("dark_scaling", True):
                    why = "calibration.dark_scaling is false"
                elif by_night or max_dt is not None:
                    why = "no dark within the night gap / temperature limit"
                else:
                    why = "zero-second darks cannot be scaled"
                plan.warnings.append(
                    f"{f['path']}: no usable dark (no dark of {f['expgroup']} s and {why});"
                    " dark step skipped"
                )
            plan.lights[f["frame"]] = {
                "record": f,
                "night": night(f),
                "bias": bias.name if bias else None,
                "dark": dark.name if dark else None,
                "dark_scale": scale,
                "flat": flat.name if flat is not None else None,
                "candidates": {"bias": bias_seen, "dark": dark_seen, "flat": flat_seen},
            }
        if missing and cfg.get("use_flat", True) and cfg.get("require_flat", True):
            counts = ", ".join(f"{m} ({len(v)} light frames)" for m, v in sorted(missing.items()))
            within = f" within {gap} nights" if by_night else ""
            elsewhere = sorted({s for m in missing for s in flat_setups.get(m, ())} - {setup})
            problem(
                f"setup {setup}: no flat frames{within} for filter(s) {counts}"
                + (f" (flats of them exist for setup {', '.join(elsewhere)})" if elsewhere else "")
                + ". Add flats of these filters to raw_dir, or set calibration.require_flat: "
                "false to calibrate them without a flat.",
                [f for v in missing.values() for f in v],
                lambda f: _missing_keyword(f) or "no_matching_master",
            )
            for v in missing.values():
                for f in v:
                    del plan.lights[f["frame"]]
            if lights and not any(f["frame"] in plan.lights for f in lights):
                del plan.warnings[warnings_before:]  # about a setup that is not reduced
    if problems and not plan.lights and any(f["imagetyp"] == "light" for f in inventory.frames):
        raise PlanError("no light frame can be calibrated: " + " ".join(problems))
    return plan


def _configured(cfg, key):
    """``detector.<key>`` as the number it sets, or None (``header``, ``measured``, null)."""
    value = cfg.get(key)
    return None if value is None or isinstance(value, str) else value


def measured(cfg):
    """The detector values (``'gain'``, ``'read_noise'``) the configuration wants measured
    from frame pairs (``results/qc/detector.json``) rather than read from the header."""
    return tuple(k for k in ("gain", "read_noise") if cfg.get(k) == "measured")


def detector(record, cfg):
    """Gain (e-/ADU), read noise (e-) and saturation (ADU) for a frame.

    A number in the configuration wins over the header; ``header`` or null take the
    header's value; ``measured`` gives None here (the frame job takes the value from
    ``results/qc/detector.json``). A read noise left as None is measured from the bias
    pairs of the master bias when the frame is calibrated.

    Parameters
    ----------
    record : dict
        The frame's row of the inventory.
    cfg : dict
        The ``detector`` section of the configuration.
    """

    def pick(key, field_name):
        if cfg.get(key) == "measured":
            return None
        value = _configured(cfg, key)
        return record.get(field_name) if value is None else value

    saturation = pick("saturation", "saturation")
    if saturation is None:
        saturation = record.get("datamax")
    return {
        "gain": pick("gain", "gain"),
        "read_noise": pick("read_noise", "rdnoise"),
        "saturation": saturation,
    }


def detector_sources(record, cfg):
    """Where each value of :func:`detector` comes from: ``'config'``, ``'header'``,
    ``'measured'`` (resolved by the frame job), ``'header:DATAMAX'`` / ``'data type'``
    (saturation), or ``'none'``."""

    def source(key, field_name):
        if cfg.get(key) == "measured":
            return "measured"
        if _configured(cfg, key) is not None:
            return "config"
        return "header" if record.get(field_name) is not None else "none"

    sources = {"gain": source("gain", "gain"), "read_noise": source("read_noise", "rdnoise")}
    sources["saturation"] = source("saturation", "saturation")
    if sources["saturation"] == "none" and record.get("datamax") is not None:
        sources["saturation"] = "header or data type"
    return sources


def reference_sets(lights, mode="group", frames=()):
    """The reference sets of the light frames: which frames share one alignment reference.

    A set is the frames of one stack group (``mode='group'``) or of one object across
    filters and exposures (``mode='object'``, so that stacks of one target are
    registered to each other), of one detector setup (frames of different binning or
    size cannot share a reference). Its name is the group or object, with ``+{setup}``
    when the group or object spans several setups. `ccdflow.reference` chooses the
    reference of each set among its earliest frames.

    Parameters
    ----------
    lights : dict
        ``Plan.lights``: frame id -> {"record": frames.tsv row, ...}.
    mode : {'group', 'object'}
    frames : sequence of str
        ``align.reference_frames``: frame ids or raw file names, each the reference of
        its set.

    Returns
    -------
    (dict, dict, dict)
        frame id -> set name; set name -> its frame ids, earliest first (DATE-OBS, then
        id); set name -> the frame id named by ``frames``.

    Raises
    ------
    PlanError
        A name of ``frames`` that is no light frame, or two for one set.
    """
    key = "object" if mode == "object" else "group"
    setups = {}
    for row in lights.values():
        r = row["record"]
        setups.setdefault(r[key], set()).add(r["setup"])
    of, members = {}, {}
    for frame, row in sorted(lights.items(), key=lambda kv: (kv[1]["record"]["date"], kv[0])):
        r = row["record"]
        name = r[key] if len(setups[r[key]]) == 1 else f"{r[key]}+{r['setup']}"
        of[frame] = name
        members.setdefault(name, []).append(frame)
    by_name = {}
    for frame, row in lights.items():
        by_name[frame] = by_name[row["record"]["path"]] = frame
        by_name[row["record"]["path"].rsplit("/", 1)[-1]] = frame
    overrides = {}
    for name in frames:
        if name not in by_name:
            raise PlanError(
                f"align.reference_frames: {name!r} is no light frame that can be reduced"
                " (give a frame id or raw file name from results/index/frames.tsv)"
            )
        frame = by_name[name]
        if of[frame] in overrides and overrides[of[frame]] != frame:
            raise PlanError(
                f"align.reference_frames: {overrides[of[frame]]!r} and {frame!r} are both in"
                f" reference set {of[frame]!r}; name one reference per set"
            )
        overrides[of[frame]] = frame
    return of, members, overrides


def candidates_text(row, informative_only=False):
    """The calibration candidates of a light (``Plan.lights`` row) as one line.

    ``informative_only``: ``''`` when every step had just the one set of a single-night run.
    """
    seen = {k: v for k, v in row["candidates"].items() if v}
    if informative_only and all(v == ["one set"] for v in seen.values()):
        return ""
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in seen.items())


def calibration_table(plan, references):
    """Rows of calibration.tsv: per light frame, its night, masters and the candidates,
    and its reference set (``references``: frame id -> set name, `reference_sets`; the
    frame chosen is in ``results/references/{set}.json``)."""
    return [
        {
            "frame": frame,
            "night": row["night"],
            "bias": row["bias"] or "",
            "dark": row["dark"] or "",
            "dark_scale": round(row["dark_scale"], 6),
            "flat": row["flat"] or "",
            "reference_set": references[frame],
            "candidates": candidates_text(row),
        }
        for frame, row in sorted(plan.lights.items())
    ]


def frame_table(frames, plan, references, utc_offset_hours=0.0):
    """Rows of frames.tsv: the inventory's columns plus what the plan does with each frame.

    Frames the plan left out are not listed (they are in ``plan.rejected``).
    ``night`` is the night of every frame (DATE-OBS, local noon to noon, whether or not
    calibrations are matched by night); ``master`` the master a calibration frame goes
    into; a light frame gets the columns of :func:`calibration_table`.
    """
    into = {f["path"]: m.name for m in plan.masters.values() for f in m.frames}
    lights = {row["frame"]: row for row in calibration_table(plan, references)}
    left_out = {r["path"] for r in plan.rejected}
    out = []
    for f in frames:
        if f["path"] in left_out:
            continue  # in rejected.tsv instead
        row = {**f, "night": night_of(f.get("date", ""), utc_offset_hours)}
        row["master"] = into.get(f["path"], "")
        use = lights.get(f["frame"], {})
        row |= {k: use.get(k, "") for k in FRAME_TABLE_COLUMNS[2:]}
        out.append(row)
    return out


def bad_pixel_map_masters(plan):
    """Setup -> paths of the master darks and flats (made by the run or from the
    library) whose defect bits its ``results/masters/bpm_{setup}.fits`` unites."""
    out = {}
    for _name, spec in sorted((plan.library | plan.masters).items()):
        if spec.kind in ("dark", "flat"):
            out.setdefault(spec.setup, []).append(spec.path)
    return out
