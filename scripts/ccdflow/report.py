"""The night report: one self-contained HTML page of a run (``results/report/index.html``).

It reads only declared products: the frame records, the groups' selections, the QC and
index tables, the stack previews and the report's parts, and renders them with the Jinja2
template ``templates/night.html.j2``. Pictures are matplotlib PNGs embedded as ``data:``
URIs and downsampled to about 600 px, so the page opens from disk, needs no server and no
network, and stays a few MB. Links to products and logs are relative to the page.

The pictures are drawn by the jobs whose inputs they show, so that a new frame redraws
only its own group's (DESIGN §7):

- `write_preview` (rule ``make_preview``, one per group): the raw stack beside the
  calibrated stack, ``results/qc/previews/{group}.png``, which the page embeds as it is;
- `write_group_part` (rule ``report_group``, one per group): the group's frame quality
  against time, one calibrated frame with its cosmic rays and the calibration lineage
  graph, ``results/report/parts/groups/{group}.json``;
- `write_masters_part` (rule ``report_masters``): the masters and the bias profiles,
  ``results/report/parts/masters.json``;
- `write_report` (rule ``make_report``) only puts them on the page with the tables; it
  draws nothing and imports no matplotlib.
"""

__all__ = [
    "FRAME_COLUMNS",
    "MAX_IMAGE_PX",
    "downsample",
    "write_group_part",
    "write_masters_part",
    "write_preview",
    "write_report",
]

import base64
import csv
import io as _io
import json
import math
import os
from datetime import datetime
from pathlib import Path

import numpy as np

#: Longest side (pixels) of an image shown in the report.
MAX_IMAGE_PX = 600

#: (QC table column, heading) of the frame table, in order.
FRAME_COLUMNS = (
    ("frame", "frame"),
    ("group", "group"),
    ("date", "DATE-OBS"),
    ("status", "status"),
    ("reason", "reason"),
    ("detail", "detail"),
    ("n_stars", "stars"),
    ("fwhm_px", "FWHM (px)"),
    ("fwhm_arcsec", "FWHM (arcsec)"),
    ("ellipticity", "ellipticity"),
    ("transparency", "transparency"),
    ("sky", "sky"),
    ("sky_noise", "sky noise"),
    ("cosmic_fraction", "CR fraction"),
    ("saturated_fraction", "saturated fraction"),
    ("rms_residual", "align rms (px)"),
    ("seconds", "job (s)"),
)

#: (metric of the record, plot label, selection key of its group-relative gate or None).
_TIME_PLOTS = (
    ("fwhm_px", "FWHM (px)", "max_fwhm_ratio"),
    ("transparency", "transparency", "min_transparency_ratio"),
    ("sky_e", "sky (e-)", None),
)


def _read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def downsample(data, max_px=MAX_IMAGE_PX):
    """Block-average a 2-D image so that its longer side is at most ``max_px`` pixels
    (non-finite pixels are left out of their block's mean)."""
    data = np.asarray(data, dtype=np.float32)
    factor = max(1, math.ceil(max(data.shape) / max_px))
    if factor == 1:
        return data
    ny, nx = (s // factor * factor for s in data.shape)
    blocks = data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(blocks)
        total = np.where(finite, blocks, 0).sum(axis=(1, 3))
        count = finite.sum(axis=(1, 3))
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _png_bytes(fig, dpi=72):
    import matplotlib.pyplot as plt

    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(fig):
    return _data_uri(_png_bytes(fig))


def _figure(width, height):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), constrained_layout=True)


def _show(fig, ax, data, title, colorbar=True):
    from astropy.visualization import ZScaleInterval

    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    if data is None:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
        return
    small = downsample(data)
    finite = small[np.isfinite(small)]
    lo, hi = ZScaleInterval().get_limits(finite) if finite.size else (0, 1)
    im = ax.imshow(small, origin="lower", cmap="gray", vmin=lo, vmax=hi)
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.85)


def _image_data(path):
    from astropy.io import fits

    with fits.open(path) as hdul:
        header = hdul[0].header
        data = None if hdul[0].data is None else np.asarray(hdul[0].data, dtype=np.float32)
    return data, header


def _master_picture(path):
    data, header = _image_data(path)
    fig = _figure(4.2, 3.2)
    unit = header.get("BUNIT", "")
    _show(fig, fig.add_subplot(), data, f"{Path(path).name} ({unit or 'relative'})")
    out = {
        "name": Path(path).name,
        "ncombine": header.get("NCOMBINE", ""),
        "method": header.get("COMBMETH", ""),
        "notes": _master_notes(header),
        "png": _png(fig),
        "profiles": None,
    }
    if data is not None and Path(path).name.startswith("bias"):
        out["profiles"] = _bias_profiles(data, Path(path).name, unit)
    return out


#: (header card, what it counts) of the detector defects a master flags (`ccdflow.badpix`).
_DEFECT_NOTES = (("NHOT", "hot"), ("NDEAD", "dead"), ("NBADCOL", "bad-column"))


def _master_notes(header):
    """What the caption adds to a master's frame count: the defect pixels it flags and,
    for a flat with an illumination model, the model's degree and residuals."""
    notes = [f"{header[card]} {what} pixels" for card, what in _DEFECT_NOTES if card in header]
    if "ILLDEG" in header:
        notes.append(
            f"illumination model degree {header['ILLDEG']}, residual rms "
            f"{100 * float(header.get('ILLRMS', float('nan'))):.2f} % "
            f"({100 * float(header.get('ILLBRMS', float('nan'))):.2f} % in blocks)"
        )
    if "ILLSKY" in header:
        sky, dome = header["ILLSKY"], header.get("ILLDOME", "")
        notes.append(f"sky shape of {sky} on the dome flat {dome}")
    return "; ".join(notes)


def _bias_profiles(data, name, unit):
    """Row and column profiles (medians across the other axis) of a master bias."""
    fig = _figure(8.4, 2.4)
    for i, (axis, label) in enumerate(((0, "column"), (1, "row"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(np.nanmedian(data, axis=axis), lw=0.8)
        ax.set_xlabel(f"{label} (px)", fontsize=8)
        ax.set_ylabel(f"median ({unit or 'adu'})", fontsize=8)
        ax.set_title(f"{name}: {label} profile", fontsize=9)
        ax.tick_params(labelsize=7)
    return _png(fig)


def _cosmics_picture(group, path):
    """One calibrated frame of a group with its cosmic-ray-flagged pixels in red."""
    from astropy.io import fits

    from ccdflow import bits

    with fits.open(path) as hdul:
        data = hdul[0].data
        names = [h.name for h in hdul]
        mask = hdul["MASK"].data if "MASK" in names and data is not None else None
        data = None if data is None else np.asarray(data, dtype=np.float32)
    fig = _figure(4.6, 3.6)
    ax = fig.add_subplot()
    _show(fig, ax, data, f"{Path(path).stem}: cosmic rays", colorbar=False)
    n = 0
    if data is not None and mask is not None:
        y, x = np.nonzero(np.asarray(mask) & bits.COSMIC)
        n = len(x)
        factor = max(1, math.ceil(max(data.shape) / MAX_IMAGE_PX))
        ax.scatter(x / factor, y / factor, s=4, c="red", marker="s", linewidths=0)
    return {"group": group, "frame": Path(path).stem, "n": n, "png": _png(fig)}


def _detector_rows(records):
    """The detector values the frame jobs used, with their sources, and how many frames."""
    rows = {}
    for r in records:
        d = r.get("detector") or {}
        row = {}
        for name in ("gain", "read_noise", "saturation"):
            q = d.get(name) or {}
            value = q.get("value")
            row[name] = "" if value is None else f"{value:.4g} {q.get('unit', '')}"
            row[f"{name}_source"] = q.get("source", "")
        key = tuple(row.values())
        rows.setdefault(key, {**row, "n": 0})["n"] += 1
    return list(rows.values())


def _measured_rows(measured):
    """Per setup: gain and read noise measured from frame pairs, with uncertainties,
    beside the header's, and the warnings."""
    if not measured:
        return []

    def pm(value, err, digits=3):
        return "" if value is None else f"{value:.{digits}f} ± {err or 0:.{digits}f}"

    rows = []
    for setup, e in measured.get("setups", {}).items():
        header = e.get("header", {})
        rows.append(
            {
                "setup": setup,
                "gain": pm(e.get("gain"), e.get("gain_err")),
                "gain_header": "" if header.get("gain") is None else f"{header['gain']:.4g}",
                "read_noise": pm(e.get("read_noise_e"), e.get("read_noise_e_err")),
                "read_noise_adu": pm(e.get("read_noise_adu"), e.get("read_noise_adu_err")),
                "read_noise_header": ""
                if header.get("read_noise") is None
                else f"{header['read_noise']:.4g}",
                "pairs": f"{e.get('n_bias_pairs', 0)} bias, {e.get('n_flat_pairs', 0)} flat",
                "method": e.get("method", ""),
                "warnings": "; ".join(e.get("warnings", [])),
            }
        )
    return rows


def write_preview(stack, raw_stack, selection, output, *, title=""):
    """``results/qc/previews/{group}.png``: the raw stack (ADU) beside the calibrated
    stack, each with a zscale stretch; for a group without a stack, a picture that says so
    and why (from the group's selection). The night report shows this file as it is."""
    from ccdflow import io

    selection = _read_json(selection)
    fig = _figure(11.0, 4.4)
    for i, (path, label) in enumerate(
        (
            (raw_stack, "raw frames, aligned and averaged (ADU)"),
            (stack, "calibrated, cleaned, aligned stack"),
        )
    ):
        data, header = _image_data(path)
        unit = header.get("BUNIT", "") if path == stack else ""
        ax = fig.add_subplot(1, 2, i + 1)
        _show(fig, ax, data, f"{label} ({unit})" if unit else label)
        if data is None:
            why = [f"{e['frame']}: {e['reason']}" for e in selection["excluded"]][:10]
            ax.text(
                0.5,
                0.3,
                "\n".join(["every frame excluded", *why]),
                ha="center",
                va="center",
                fontsize=7,
                transform=ax.transAxes,
            )
    fig.suptitle(title, fontsize=10)
    png = _png_bytes(fig, dpi=80)
    io.write_atomic(output, lambda tmp: Path(tmp).write_bytes(png))
    return output


def _times(dates):
    """Hours since the first DATE-OBS, or the frame order when a date is missing."""
    parsed = []
    for d in dates:
        try:
            parsed.append(datetime.fromisoformat(d))
        except (TypeError, ValueError):
            return list(range(len(dates))), "frame order"
    start = min(parsed)
    return [(t - start).total_seconds() / 3600 for t in parsed], "hours since first frame"


def _judged(record, excluded):
    """Whether the group gates judge this frame (`ccdflow.select`): its job succeeded and
    it was not excluded by hand."""
    if record.get("status") != "ok":
        return False
    return excluded.get(record["frame"], {}).get("reason") != "excluded_by_config"


def _time_plot(group, records, dates, excluded, selection_cfg):
    """FWHM, transparency and sky of a group's frames against time; each frame's gate
    limit (the gate's factor times the median of the other judged frames) drawn as a tick,
    excluded frames marked."""
    records = sorted(records, key=lambda r: (dates.get(r["frame"], ""), r["frame"]))
    t, axis = _times([dates.get(r["frame"], "") for r in records])
    fig = _figure(8.4, 2.6)
    for i, (metric, label, key) in enumerate(_TIME_PLOTS):
        ax = fig.add_subplot(1, len(_TIME_PLOTS), i + 1)
        values = np.array(
            [
                np.nan if (r.get("metrics") or {}).get(metric) is None else r["metrics"][metric]
                for r in records
            ],
            dtype=float,
        )
        bad = np.array([r["frame"] in excluded for r in records])
        x = np.asarray(t, dtype=float)
        ax.plot(x[~bad], values[~bad], "o", color="tab:blue", label="stacked")
        if bad.any():
            ax.plot(x[bad], values[bad], "x", color="tab:red", ms=9, mew=2, label="excluded")
        factor = selection_cfg.get(key) if key else None
        good = values[np.isfinite(values)]
        if factor is not None and good.size:
            # each frame's own limit, as the gate computes it: the factor times the median
            # of the *other* frames the group gates judge (job ok, not excluded by hand)
            judged = np.isfinite(values) & np.array([_judged(r, excluded) for r in records])
            limits = np.full(values.shape, np.nan)
            for j in range(len(records)):
                others = values[judged & (np.arange(len(records)) != j)]
                if others.size:
                    limits[j] = factor * float(np.median(others))
            ax.plot(x, limits, "_", color="tab:orange", ms=14, mew=2,
                    label=f"gate: {factor:g} x median of the others")  # fmt: skip
        if not good.size:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(axis, fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(group, fontsize=10)
    return {"group": group, "png": _png(fig)}


def _counts(frames):
    counts = {}
    for r in frames:
        key = (r["imagetyp"], r["filter"] or "-", r["expgroup"])
        counts[key] = counts.get(key, 0) + 1
    return [
        {"type": k[0], "filter": k[1], "exposure": k[2], "n": n}
        for k, n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], float(kv[0][2])))
    ]


def _lineage(selections, calibration):
    """Per stack: every input frame, whether it was stacked, and its calibration."""
    out = []
    for sel in selections:
        rows = []
        for f in sel["selected"]:
            rows.append(
                {"frame": f["frame"], "used": "stacked", **calibration.get(f["frame"], {})}
            )
        for e in sel["excluded"]:
            rows.append(
                {
                    "frame": e["frame"],
                    "used": f"excluded: {e['reason']}",
                    **calibration.get(e["frame"], {}),
                }
            )
        out.append({"group": sel["group"], "reference": sel["reference"], "rows": rows})
    return out


def _lineage_graph(entry):
    """A small graph of one stack's lineage: masters -> sets of input frames calibrated
    alike (same masters and dark scale) -> the stack; excluded frames in grey."""
    sets = {}
    for r in entry["rows"]:
        stacked = r["used"] == "stacked"
        key = (
            stacked,
            r.get("bias", ""),
            r.get("dark", ""),
            r.get("dark_scale", ""),
            r.get("flat", ""),
        )
        sets.setdefault(key, []).append(r["frame"])
    masters = sorted({m for key in sets for m in (key[1], key[2], key[4]) if m})
    fig = _figure(8.4, 0.5 + 0.45 * max(len(masters), len(sets), 1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)

    def ys(n):
        return [1 - (i + 1) / (n + 1) for i in range(n)]

    box = {"boxstyle": "round", "fc": "#eef", "ec": "#88a"}
    where = dict(zip(masters, ys(len(masters)), strict=True))
    for name, y in where.items():
        ax.text(0.15, y, name, ha="center", va="center", fontsize=8, bbox=box)
    stack_y = 0.5
    ax.text(
        0.88,
        stack_y,
        f"stack {entry['group']}",
        ha="center",
        va="center",
        fontsize=8,
        bbox={**box, "fc": "#efe", "ec": "#8a8"},
    )
    for (stacked, bias, dark, scale, flat), y in zip(sets, ys(len(sets)), strict=True):
        frames = sets[(stacked, bias, dark, scale, flat)]
        label = f"{len(frames)} frame{'s' * (len(frames) > 1)}"
        label += f", dark x{float(scale):.3g}" if dark and scale not in ("", None) else ""
        colour = "#333" if stacked else "#999"
        ax.text(
            0.52,
            y,
            label if stacked else label + " (excluded)",
            ha="center",
            va="center",
            fontsize=8,
            color=colour,
            bbox={**box, "fc": "#fff" if stacked else "#eee"},
        )
        for m in (bias, dark, flat):
            if m:
                ax.annotate(
                    "",
                    (0.42, y),
                    (0.27, where[m]),
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 0.8},
                )
        if stacked:
            ax.annotate(
                "",
                (0.8, stack_y),
                (0.62, y),
                arrowprops={"arrowstyle": "->", "color": colour, "lw": 0.8},
            )
    return _png(fig)


def _link(path, page_dir):
    return {"name": str(path), "href": os.path.relpath(Path(path).resolve(), page_dir)}


def write_masters_part(output, masters):
    """``results/report/parts/masters.json``: each master (made by the run or taken from
    the calibration library) as a picture, with its frame count, combine method and, for
    a bias, its row and column profiles."""
    from ccdflow.framejob import write_json

    pictures = [_master_picture(p) | {"path": str(p)} for p in masters]
    return write_json(output, {"masters": pictures})


def write_group_part(output, *, group, records, selection, cosmics, frames, selection_cfg):
    """``results/report/parts/groups/{group}.json``: the pictures of one stack group.

    Parameters
    ----------
    output : path-like
    group : str
    records : sequence of path-like
        The records of the group's frames.
    selection : path-like
        The group's selection (``results/selection/{group}.json``).
    cosmics : path-like
        One calibrated frame of the group, shown with its cosmic-ray mask.
    frames : dict
        Frame id -> its row of ``results/index/calibration.tsv`` (night, masters, dark
        scale, how they were chosen) plus ``date`` (its DATE-OBS, for the time axis).
    selection_cfg : dict
        The ``selection`` configuration (the gates drawn on the quality plot).
    """
    from ccdflow.framejob import write_json

    records = [_read_json(p) for p in records]
    sel = _read_json(selection)
    excluded = {e["frame"]: e for e in sel["excluded"]}
    dates = {f: row.get("date", "") for f, row in frames.items()}
    part = {
        "group": group,
        "time_plot": _time_plot(group, records, dates, excluded, selection_cfg)["png"],
        "cosmics": _cosmics_picture(group, cosmics),
        "graph": _lineage_graph(_lineage([sel], frames)[0]),
    }
    return write_json(output, part)


def _file_uri(path):
    return _data_uri(Path(path).read_bytes())


def write_report(
    output,
    *,
    records,
    selections,
    qc_table,
    frames_table,
    rejected_table,
    calibration_table,
    masters_part,
    group_parts,
    previews,
    stacks,
    raw_stacks,
    config,
    version,
    logs_dir=None,
    detector=None,
):
    """Write the night report ``output`` (HTML) from a run's products.

    Parameters
    ----------
    output : path-like
        The page (``results/report/index.html``).
    records, selections : sequence of path-like
        Frame records (``results/records/{frame}.json``) and group selections
        (``results/selection/{group}.json``).
    qc_table, frames_table, rejected_table, calibration_table : path-like
        ``results/qc/frames.tsv``, ``results/index/frames.tsv``, ``rejected.tsv`` and
        ``calibration.tsv``.
    masters_part : path-like
        ``results/report/parts/masters.json`` (`write_masters_part`).
    group_parts, previews : sequence of path-like
        Per group, in the order of ``selections``: its part (`write_group_part`) and its
        preview (`write_preview`).
    stacks, raw_stacks : sequence of path-like
        Per group, in the order of ``selections``: its stack and its raw stack (linked).
    config : dict
        The run's configuration (shown as YAML).
    version : str
        Pipeline version.
    logs_dir : path-like or None
        Folder of the rules' logs (``logs/``): every ``*.log`` under it is linked.
    detector : path-like or None
        ``results/qc/detector.json`` (gain and read noise measured from frame pairs per
        setup, with uncertainties, beside the header's), when the night has biases.
    """
    import jinja2
    import yaml

    from ccdflow import io

    output = Path(output)
    page_dir = output.parent.resolve()
    records = [_read_json(p) for p in records]
    selections = [_read_json(p) for p in selections]
    parts = [_read_json(p) for p in group_parts]
    masters = _read_json(masters_part)["masters"]
    frames = _read_tsv(frames_table)
    dates = {r["frame"]: r["date"] for r in frames}
    calibration = {r["frame"]: r for r in _read_tsv(calibration_table)}
    qc_rows = _read_tsv(qc_table)
    for row in qc_rows:
        row["date"] = dates.get(row["frame"], "")
    logs = sorted(Path(logs_dir).rglob("*.log")) if logs_dir else []
    lineage = _lineage(selections, calibration)
    for entry, part in zip(lineage, parts, strict=True):
        entry["graph"] = part["graph"]
    context = {
        "version": version,
        "generated": datetime.now().astimezone().isoformat(timespec="seconds"),
        "raw_dir": config.get("raw_dir", ""),
        "counts": _counts(frames),
        "n_lights": len(qc_rows),
        "n_excluded": sum(r["status"] != "ok" for r in qc_rows),
        "n_stacks": sum(len(s["selected"]) > 0 for s in selections),
        "n_groups": len(selections),
        "masters": masters,
        "master_links": [_link(m["path"], page_dir) for m in masters],
        "columns": FRAME_COLUMNS,
        "frame_rows": qc_rows,
        "rejected": _read_tsv(rejected_table),
        "lineage": lineage,
        "stacks": [
            {"group": s["group"], "ncombine": len(s["selected"]), "png": _file_uri(p)}
            for s, p in zip(selections, previews, strict=True)
        ],
        "detector": _detector_rows(records),
        "measured": _measured_rows(_read_json(detector) if detector else None),
        "cosmics": [part["cosmics"] for part in parts],
        "time_plots": [{"group": part["group"], "png": part["time_plot"]} for part in parts],
        "product_links": [_link(p, page_dir) for p in (*stacks, *raw_stacks, qc_table)],
        "log_links": [_link(p, page_dir) for p in logs],
        "config_yaml": yaml.safe_dump(config, sort_keys=False, default_flow_style=False),
    }
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("night.html.j2").render(**context)

    def write(tmp):
        Path(tmp).write_text(html, encoding="utf-8")

    io.write_atomic(output, write)
    return output
