"""The selection step of a stack group: which frames go into its stack, and why not.

It reads the records of the group's frames (``results/records/{frame}.json``) and
decides in order: a frame the frame job could not use keeps the job's reason; a frame
named by ``selection.exclude`` is ``excluded_by_config``; then the quality gates of
:data:`ccdflow.metrics.GATES` (rules as data: a new criterion is one row there, with the
key of ``selection`` that sets its threshold) judge the remaining frames on their
records' ``metrics``, some against the median of the group's other frames (clouds,
seeing, star count). The first gate a frame fails excludes it with that gate's reason
code, the value measured and the threshold it was held to. Because the decisions are
made here and not in the frame jobs, a changed threshold reruns the selection and the
stacks, never a frame job; and a group-relative decision can never change another
frame's job.

The selection (``results/selection/{group}.json``) is the stack's and the raw stack's
only source of which frames to use and how each was transformed.
"""

__all__ = ["gate_thresholds", "group_config", "select_group"]

import fnmatch
from pathlib import Path

from ccdflow import metrics


def gate_thresholds(cfg, gates=metrics.GATES):
    """``reason -> threshold`` of the quality gates from the ``selection`` configuration
    (a key left out takes the gate's default; None switches the gate off)."""
    return {g.reason: cfg.get(g.key, g.threshold) for g in gates if g.key}


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
        names it) and the thresholds of the gates (`gate_thresholds`).
    frames : dict
        frame id -> ``{"aligned": path, "raw": path, "hdu": int}``.

    Returns
    -------
    dict
        ``group``, ``selected`` (per frame: ``frame``, ``aligned``, ``raw``, ``hdu``,
        ``matrix`` source -> reference, ``masters``, ``cosmics`` method), ``shape`` of the
        reference grid, ``reference``, and ``excluded`` (per frame, by frame id:
        ``frame``, ``step``, ``reason``, ``detail``, ``value`` and ``threshold`` in the
        metric's unit, None for a frame the frame job or the configuration left out;
        ``failed``: every gate it failed, for the gates).
    """
    selected, excluded = [], []
    shape = None
    reference = None
    records = sorted(records, key=lambda r: r["frame"])
    candidates = []
    for record in records:
        reference = reference or record.get("reference")
        decision = _decide(record, cfg)
        if decision is not None:
            excluded.append({"frame": record["frame"], **decision})
        else:
            candidates.append(record)
    verdicts = metrics.gate_group([r["metrics"] for r in candidates], gate_thresholds(cfg))
    keys = {g.reason: g.key for g in metrics.GATES}
    for record, verdict in zip(candidates, verdicts, strict=True):
        if verdict["status"] != "ok":
            excluded.append(
                {
                    "frame": record["frame"],
                    "step": "selection",
                    "reason": verdict["reason"],
                    "detail": f"{verdict['detail']} (selection.{keys[verdict['reason']]})",
                    "value": verdict["value"],
                    "threshold": verdict["threshold"],
                    "failed": verdict["failed"],
                }
            )
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
    excluded.sort(key=lambda e: e["frame"])
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
    """None to hand the frame to the quality gates, else why it is left out."""
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
    return None
