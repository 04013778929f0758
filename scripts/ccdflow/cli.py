"""The ``ccdflow`` command: a demo night end to end, and a summary of a run.

``ccdflow demo``     generate a synthetic night with known truth, reduce it with the
                     workflow (real Snakemake), print a summary against the truth;
``ccdflow night``    only generate a night (see ``ccdflow.demo``);
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
    return 0


def _summary(args):
    from ccdflow import demo, summary

    truth = demo.load_truth(args.truth) if args.truth else None
    print(summary.format_summary(args.workdir, truth))
    return 0


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
    p.set_defaults(func=lambda a: __import__("ccdflow.demo").demo.main(a.rest))
    p = sub.add_parser("summary", help="summarise the results in a working directory")
    p.add_argument("--workdir", default=".")
    p.add_argument("--truth", help="folder of a generated night (holds truth/)")
    p.set_defaults(func=_summary)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
