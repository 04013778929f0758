# The working directory, checked and claimed before anything else runs or logs (on a full
# disk Snakemake's own log file fails at its first message): one clear message for a
# read-only or full directory, a refusal while another run works here, and the lock of a
# run killed with kill -9 removed. The logic lives in scripts/ccdflow/workdir.py.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from ccdflow import workdir as ccd_workdir

if workflow.is_main_process:  # not in jobs that re-read the workflow (cluster)
    try:
        ccd_workdir.check_writable(Path.cwd())
    except ccd_workdir.WorkdirError as exc:
        # not a WorkflowError: Snakemake's log file could not take its message
        print(f"ccdflow: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        _WORKDIR_LOCK, _stale, _previous = ccd_workdir.claim(Path.cwd())
    except ccd_workdir.WorkdirError as exc:
        raise WorkflowError(str(exc)) from None
    if _stale:
        print(
            f"ccdflow: removed the lock and temporary files of an interrupted run"
            f" ({_previous or 'unknown'}); its unfinished outputs are rebuilt",
            file=sys.stderr,
        )
