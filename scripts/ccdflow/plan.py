"""Calibration plan: which masters to make and which masters each frame uses.

Pure function of the inventory and the configuration, evaluated when the Snakefile is
parsed, so a dry run shows the whole job graph and every job lists its inputs. An
impossible plan (a filter with lights but no flats, too few frames for a master)
raises :class:`PlanError` with one message that says what is missing and how to fix it.
"""

__all__ = [
    "MasterSpec",
    "Plan",
    "PlanError",
    "choose_dark",
    "choose_references",
    "detector",
    "make_plan",
]

from dataclasses import dataclass, field
from statistics import median


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

    @property
    def path(self):
        return f"results/masters/{self.name}.fits"


@dataclass
class Plan:
    """Masters by name, and per light frame (by frame id) the masters it uses."""

    masters: dict = field(default_factory=dict)
    lights: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

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


def _require(frames, kind, key, minimum, fix):
    if len(frames) < minimum:
        names = ", ".join(f["path"] for f in frames[:5]) + (" ..." if len(frames) > 5 else "")
        raise PlanError(
            f"{kind} {key}: {len(frames)} frame(s) ({names}) but calibration.min_frames.{kind}"
            f" is {minimum}. {fix}"
        )


def make_plan(inventory, cfg):
    """Build the plan.

    Parameters
    ----------
    inventory : ccdflow.inventory.Inventory
    cfg : dict
        The ``calibration`` section of the configuration.

    Returns
    -------
    Plan
    """
    plan = Plan()
    minimum = cfg["min_frames"]
    fix = "Add frames, lower the minimum, or exclude them (inventory.exclude)."
    setups = sorted({f["setup"] for f in inventory.frames})
    for setup in setups:
        frames = [f for f in inventory.frames if f["setup"] == setup]
        by_type = {t: [f for f in frames if f["imagetyp"] == t] for t in ("bias", "dark", "flat")}
        lights = [f for f in frames if f["imagetyp"] == "light"]

        bias = None
        if by_type["bias"] and cfg.get("use_bias", True):
            _require(by_type["bias"], "bias", f"(setup {setup})", minimum["bias"], fix)
            bias = MasterSpec("bias", f"bias_{setup}", setup, by_type["bias"])
            plan.masters[bias.name] = bias
        elif lights:
            why = "calibration.use_bias is false" if by_type["bias"] else "no bias frames"
            plan.warnings.append(f"setup {setup}: {why}, bias step skipped")

        darks = []
        if cfg.get("use_dark", True):
            groups = {}
            for f in by_type["dark"]:
                groups.setdefault(f["expgroup"], []).append(f)
            for label, members in sorted(groups.items()):
                _require(members, "dark", f"{label} s (setup {setup})", minimum["dark"], fix)
                d = MasterSpec(
                    "dark",
                    f"dark_{setup}_{label}s",
                    setup,
                    members,
                    exptime=median(f["exptime"] for f in members),
                    expgroup=label,
                    bias=bias.name if bias else None,
                )
                plan.masters[d.name] = d
                darks.append(d)
        scalable = bias is not None and cfg.get("dark_scaling", True)

        flats = {}
        for f in by_type["flat"] if cfg.get("use_flat", True) else []:
            flats.setdefault(f["filter"], []).append(f)
        for filt, members in sorted(flats.items()):
            _require(members, "flat", f"filter {filt} (setup {setup})", minimum["flat"], fix)
            spec = MasterSpec(
                "flat",
                f"flat_{setup}_{filt}",
                setup,
                members,
                filter=filt,
                bias=bias.name if bias else None,
            )
            picks = [choose_dark(f["exptime"], f["expgroup"], darks, scalable) for f in members]
            chosen = {p[0].name for p in picks if p[0] is not None}
            if chosen:
                # One dark for the whole master (the one most flats chose), each flat scaled
                # by its own exposure unless it sits in the dark's own exposure group.
                name = max(sorted(chosen), key=[p[0] and p[0].name for p in picks].count)
                dark = plan.masters[name]
                spec.dark = name
                spec.dark_scales = [
                    f["exptime"] / dark.exptime
                    if scalable and f["expgroup"] != dark.expgroup and dark.exptime > 0
                    else 1.0  # a dark that still holds the bias (no master bias) is not scaled
                    for f in members
                ]
            plan.masters[spec.name] = spec

        missing = sorted({f["filter"] for f in lights} - set(flats))
        if missing and cfg.get("use_flat", True) and cfg.get("require_flat", True):
            counts = ", ".join(
                f"{m} ({sum(f['filter'] == m for f in lights)} light frames)" for m in missing
            )
            raise PlanError(
                f"setup {setup}: no flat frames for filter(s) {counts}. Add flats of these "
                "filters to raw_dir, or set calibration.require_flat: false to calibrate "
                "them without a flat."
            )
        for f in lights:
            dark, scale = choose_dark(f["exptime"], f["expgroup"], darks, scalable)
            if dark is None and by_type["dark"] and cfg.get("use_dark", True):
                if bias is None:
                    why = "darks cannot be scaled without a bias"
                elif not cfg.get("dark_scaling", True):
                    why = "calibration.dark_scaling is false"
                else:
                    why = "zero-second darks cannot be scaled"
                plan.warnings.append(
                    f"{f['path']}: no usable dark (no dark of {f['expgroup']} s and {why});"
                    " dark step skipped"
                )
            flat = flats.get(f["filter"]) and f"flat_{setup}_{f['filter']}"
            plan.lights[f["frame"]] = {
                "record": f,
                "bias": bias.name if bias else None,
                "dark": dark.name if dark else None,
                "dark_scale": scale,
                "flat": flat if cfg.get("use_flat", True) else None,
            }
    return plan


def detector(record, cfg):
    """Gain (e-/ADU), read noise (e-) and saturation (ADU) for a frame.

    Configuration wins over the header; a read noise left as None is measured from the
    bias pairs of the master bias when the frame is calibrated.

    Parameters
    ----------
    record : dict
        The frame's row of the inventory.
    cfg : dict
        The ``detector`` section of the configuration.
    """

    def pick(key, field_name):
        value = cfg.get(key)
        return record.get(field_name) if value is None else value

    saturation = pick("saturation", "saturation")
    if saturation is None:
        saturation = record.get("datamax")
    return {
        "gain": pick("gain", "gain"),
        "read_noise": pick("read_noise", "rdnoise"),
        "saturation": saturation,
    }


def choose_references(lights, mode="object"):
    """Alignment reference of every light frame.

    The reference is the earliest frame (by DATE-OBS, then frame id) of the frame's
    stack group (``mode='group'``) or of its object across filters and exposures
    (``mode='object'``, so that stacks of one target are registered to each other).
    Frames that arrive later in the night never move it.

    Parameters
    ----------
    lights : dict
        ``Plan.lights``: frame id -> {"record": frames.tsv row, ...}.
    mode : {'object', 'group'}

    Returns
    -------
    dict
        frame id -> frame id of its reference.
    """
    key = "object" if mode == "object" else "group"
    setups = {}
    for frame, row in lights.items():
        r = row["record"]
        # frames of different setups (binning, size) cannot share a reference
        setups.setdefault((r[key], r["setup"]), []).append((r["date"], frame))
    first = {k: min(v)[1] for k, v in setups.items()}
    return {
        frame: first[(row["record"][key], row["record"]["setup"])] for frame, row in lights.items()
    }
