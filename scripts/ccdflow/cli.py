"""The ``ccdflow`` command: a demo night end to end, and a summary of a run.

``ccdflow demo``     generate a synthetic night with known truth, reduce it with the
                     workflow (real Snakemake), print a summary against the truth;
``ccdflow night``    only generate a night (see ``ccdflow.demo``);
``ccdflow inspect``  what a run would do with a raw directory: the classified frames,
                     the masters, the alignment reference sets, and the masters and
                     reference set of every light frame;
``ccdflow summary``  summarise the results of a run in a working directory.
"""

__all__ = ["main"]

import argparse
import subprocess
import sys
from pathlib import Path

#: The workflow this library belongs to (the repository root holds the Snakefile).
WORKFLOW = Path(__file__).resolve().parents[2]


def _run_workflow(workdir, raw_dir, cores, extra=()):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(WORKFLOW / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", str(cores)]
    cmd += ["--config", f"raw_dir={Path(raw_dir).resolve()}", *extra]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def _demo(args):
    from ccdflow import demo, summary

    workdir = Path(args.workdir).resolve()
    night = workdir / "night"
    if (night / "truth" / "truth.json").exists() and not args.regenerate:
        print(f"using the generated night in {night} (--regenerate to make it anew)")
        truth = demo.load_truth(night)
    else:
        print(f"generating a '{args.preset}' night (seed {args.seed}) in {night} ...")
        truth = demo.make_night(night, preset=args.preset, seed=args.seed)
    rc = _run_workflow(workdir, night / "raw", args.cores)
    if rc != 0:
        print(f"the workflow failed (exit {rc}); see the messages above", file=sys.stderr)
        return rc
    print()
    print(summary.format_summary(workdir, truth))
    print(f"\nnight report: {workdir / 'results/report/index.html'} (open it in a browser)")
    return 0


def _summary(args):
    from ccdflow import demo, summary

    truth = demo.load_truth(args.truth) if args.truth else None
    print(summary.format_summary(args.workdir, truth))
    return 0


def _night(args):
    from ccdflow import demo

    return demo.main(args.rest)


def _inspect(args):
    from ccdflow import config as ccd_config
    from ccdflow import inventory, library, plan
    from ccdflow.sections import SectionError

    try:
        cfg = ccd_config.load(args.configfile, {"raw_dir": str(args.raw_dir)})
    except ccd_config.ConfigError as exc:  # one line: the key, value and what is expected
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:  # an unreadable config file: say which, no traceback
        print(f"configuration error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    if not Path(args.raw_dir).is_dir():
        print(
            f"{args.raw_dir} is not a directory: give the folder of your frames", file=sys.stderr
        )
        return 2
    overscan = cfg["overscan"] if cfg["overscan"]["enabled"] else None
    try:
        inv = inventory.scan(
            args.raw_dir,
            cfg["inventory"],
            grouping=cfg["group_by"],
            detector=cfg["detector"],
            overscan=overscan,
        )
    except SectionError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(inv.frames)} frames in {args.raw_dir}, {len(inv.rejected)} rejected")
    counts = {}
    for f in inv.frames:
        key = (f["setup"], f["imagetyp"], f["filter"] or "-", f["expgroup"])
        counts[key] = counts.get(key, 0) + 1
    print(f"\n  {'setup':16s} {'type':6s} {'filter':10s} {'exposure':>9s} {'n':>5s}")
    for (setup, t, filt, exp), n in sorted(counts.items()):
        print(f"  {setup:16s} {t:6s} {filt:10s} {exp:>8s}s {n:5d}")
    for r in inv.rejected:
        print(f"  rejected {r['path']}: {r['reason']} {r['detail']}")
    if not inv.frames:
        print(
            f"\nevery file was rejected ({inventory.rejection_summary(inv.rejected)}): nothing"
            " to reduce. Check inventory.extensions, the keywords and the values above.",
            file=sys.stderr,
        )
        return 1
    try:
        lib, skipped = library.scan_library(
            cfg["calibration"]["library"],
            overscan=overscan is not None,
            utc_offset_hours=cfg["calibration"]["night_utc_offset_hours"],
        )
        p = plan.make_plan(inv, cfg["calibration"], overscan, lib)
    except (plan.PlanError, FileNotFoundError) as exc:
        print(f"\nthe reduction is impossible: {exc}", file=sys.stderr)
        return 1
    for r in p.rejected:
        print(f"  rejected {r['path']}: {r['reason']} {r['detail']}")
    try:
        refs, sets, chosen = plan.reference_sets(
            p.lights, cfg["align"]["reference"], cfg["align"]["reference_frames"]
        )
    except plan.PlanError as exc:
        print(f"\nconfiguration error: {exc}", file=sys.stderr)
        return 2
    print("\nmasters to make:" if p.masters else "\nmasters to make: none")
    for m in p.masters.values():
        extra = f" (bias {m.bias}" + (f", dark {m.dark})" if m.dark else ")") if m.bias else ""
        if m.components:  # calibration.illumination: a sky/dome combination
            parts = f"shape of {m.components['sky']}, pixels of {m.components['dome']}"
            print(f"  {m.name:36s} combined: {parts}")
            continue
        print(f"  {m.name:36s} from {len(m.frames):3d} frames{extra}")
    if lib or skipped:
        print(f"\ncalibration library: {len(lib)} masters, {len(p.library)} used")
        for m in sorted(p.library.values(), key=lambda m: m.name):
            print(f"  {m.kind:5s} {m.name}")
        for r in skipped:
            print(f"  skipped {r['path']}: {r['detail']}")
    _print_objects_and_groups(p)
    n = cfg["align"]["reference_candidates"]
    print(f"\nalignment reference sets (align.reference: {cfg['align']['reference']}):")
    for name, members in sets.items():
        how = (
            f"reference {chosen[name]} (align.reference_frames)"
            if name in chosen
            else f"reference chosen for quality among {min(n, len(members))} earliest"
        )
        print(f"  {name:36s} {len(members):4d} frames; {how}")
    print("  (a set reduced before keeps the reference of its results/references/{set}.json)")
    print("\nlight frames -> bias, dark (scale), flat; alignment reference set:")

    def short(name):
        return f"library:{Path(name).stem}" if name in p.library else name

    for frame, use in sorted(p.lights.items()):
        bias, flat = short(use["bias"]) or "no bias", short(use["flat"]) or "no flat"
        dark = f"{short(use['dark'])} x{use['dark_scale']:.4g}" if use["dark"] else "no dark"
        print(f"  {frame:32s} {bias}, {dark}, {flat}; ref set {refs[frame]}")
    for w in p.warnings:
        print(f"warning: {w}")
    return 0


def _print_objects_and_groups(p):
    """Objects (with their raw OBJECT names) and stack groups of the planned lights."""
    objects = {}
    for use in p.lights.values():
        r = use["record"]
        objects.setdefault(r["object"], set()).add(r.get("object_name", r["object"]))
    print(f"\nobjects: {len(objects)}")
    for obj, names in sorted(objects.items()):
        print(f"  {obj:24s} (OBJECT {', '.join(repr(n) for n in sorted(names))})")
    groups = p.groups()
    print(f"stack groups: {len(groups)}")
    for group, frames in groups.items():
        print(f"  {group:36s} {len(frames):4d} frames")


def main(argv=None):
    """Entry point of the ``ccdflow`` command."""
    parser = argparse.ArgumentParser(prog="ccdflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="generate a night with known truth and reduce it")
    p.add_argument("--workdir", default="demo", help="where night/ and results/ go (demo)")
    p.add_argument("--preset", default="demo", choices=["test", "demo", "benchmark"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", default="2", help="snakemake --cores (2)")
    p.add_argument("--regenerate", action="store_true", help="make the night anew")
    p.set_defaults(func=_demo)
    p = sub.add_parser("night", help="only generate a night (python -m ccdflow.demo)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_night)
    p = sub.add_parser("inspect", help="show what a run would do with a raw directory")
    p.add_argument("raw_dir", type=Path)
    p.add_argument("--configfile", action="append", default=[], help="config layer(s)")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("summary", help="summarise the results in a working directory")
    p.add_argument("--workdir", default=".")
    p.add_argument("--truth", help="folder of a generated night (holds truth/)")
    p.set_defaults(func=_summary)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
