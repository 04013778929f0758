"""The selection step of a stack group: which frames go into its stack, and why not.

It reads the records of the group's frames (``results/records/{frame}.json``) and
applies the gates in order; the first gate a frame fails excludes it with that gate's
reason code, the value measured and the threshold. A gate is one row of
:data:`FRAME_GATES` (rules as data): a new criterion is a new row and a config key in
``selection``. Because the decisions are made here and not in the frame jobs, a changed
threshold reruns the selection and the stacks, never a frame job; and a decision that
depends on the whole group (group-relative gates) can never change another frame's job.

The selection (``results/selection/{group}.json``) is the stack's and the raw stack's
only source of which frames to use and how each was transformed.
"""

__all__ = ["FRAME_GATES", "group_config", "select_group"]

import fnmatch
from pathlib import Path


def _saturated_fraction(record):
    shape = record.get("shape")
    if not shape:
        return None
    return record.get("saturated_pixels", 0) / float(shape[0] * shape[1])


#: Frame gates: (config key of ``selection``, reason code, metric of a record, limit
#: kind, what it means). A limit of None switches the gate off.
FRAME_GATES = (
    (
        "max_saturated_fraction",
        "saturated",
        _saturated_fraction,
        "max",
        "fraction of the frame's pixels flagged saturated",
    ),
)


def group_config(cfg, frames):
    """The ``selection`` configuration as one group sees it.

    ``exclude`` is narrowed to ``{frame id: pattern}`` of this group's frames, so that
    excluding a frame changes the parameters (and reruns the selection) of its own group
    only. ``frames``: frame id -> raw path of the group's frames.
    """
    patterns = cfg.get("exclude") or []
    exclude = {}
    for frame, raw in sorted(frames.items()):
        names = (frame, Path(raw).name)
        hit = next((p for p in patterns for n in names if fnmatch.fnmatchcase(n, p)), None)
        if hit is not None:
            exclude[frame] = hit
    return {**cfg, "exclude": exclude}


def select_group(group, records, cfg, frames):
    """Decide which frames of one group are stacked.

    Parameters
    ----------
    group : str
        The stack group.
    records : sequence of dict
        The records of the group's frames (`ccdflow.framejob.read_record`).
    cfg : dict
        The group's `group_config`: ``exclude`` (frame id -> the configured pattern that
        names it) and one limit per row of :data:`FRAME_GATES`.
    frames : dict
        frame id -> ``{"aligned": path, "raw": path, "hdu": int}``.

    Returns
    -------
    dict
        ``group``, ``selected`` (per frame: ``frame``, ``aligned``, ``raw``, ``hdu``,
        ``matrix`` source -> reference, ``masters``, ``cosmics`` method), ``shape`` of the
        reference grid, ``reference``, and ``excluded`` (per frame: ``frame``, ``step``,
        ``reason``, ``detail``, ``value``, ``threshold``).
    """
    selected, excluded = [], []
    shape = None
    reference = None
    for record in sorted(records, key=lambda r: r["frame"]):
        reference = reference or record.get("reference")
        decision = _decide(record, cfg)
        if decision is not None:
            excluded.append({"frame": record["frame"], **decision})
            continue
        files = frames[record["frame"]]
        alignment = record["alignment"]
        shape = shape or _grid_shape(record)
        selected.append(
            {
                "frame": record["frame"],
                "aligned": files["aligned"],
                "raw": files["raw"],
                "hdu": files["hdu"],
                "matrix": alignment["matrix"],
                "masters": record.get("masters", {}),
                "cosmics": record.get("cosmics", {}).get("method", "none"),
                "unit": record.get("unit"),
            }
        )
    return {
        "group": group,
        "reference": reference,
        "shape": shape,
        "selected": selected,
        "excluded": excluded,
    }


def _grid_shape(record):
    # the aligned frame is on the reference's grid; for the reference that is its own
    return record.get("reference_shape") or record["shape"]


def _decide(record, cfg):
    """None to stack the frame, else why not."""
    if record["status"] != "ok":
        return {
            "step": record.get("failed_step", ""),
            "reason": record["reason"],
            "detail": record.get("detail", ""),
            "value": None,
            "threshold": None,
        }
    pattern = (cfg.get("exclude") or {}).get(record["frame"])
    if pattern is not None:
        return {
            "step": "selection",
            "reason": "excluded_by_config",
            "detail": f"selection.exclude has {pattern!r}",
            "value": None,
            "threshold": None,
        }
    for key, reason, metric, kind, meaning in FRAME_GATES:
        limit = cfg.get(key)
        value = metric(record)
        if limit is None or value is None:
            continue
        failed = value > limit if kind == "max" else value < limit
        if failed:
            word = "above" if kind == "max" else "below"
            return {
                "step": "selection",
                "reason": reason,
                "detail": f"{meaning} {value:.4g} is {word} selection.{key} = {limit:g}",
                "value": value,
                "threshold": limit,
            }
    return None
