"""The working directory of a run: writable, and held by one run at a time.

Snakemake locks a working directory with files in ``.snakemake/locks/`` that it removes
when it exits. A run killed with ``kill -9`` (or a power cut) leaves them behind and the
next run stops with ``LockException`` until the user runs ``snakemake --unlock``. The
files alone cannot tell a dead run from a live one, so each ccdflow run also holds an
``flock`` on ``.snakemake/ccdflow.lock`` from the parse of the workflow until its process
ends. The kernel drops that lock when the process dies, however it dies, so a run that
can take it knows no other ccdflow run is alive in the directory and that Snakemake's
lock files, if any, are stale.
"""

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

__all__ = ["WorkdirError", "check_writable", "claim", "orphaned_products"]

LOCK_NAME = ".snakemake/ccdflow.lock"
#: Products per light frame and per stack group: folder under the workdir, suffix.
FRAME_PRODUCTS = (
    ("results/calibrated", ".fits"),
    ("results/aligned", ".fits"),
    ("results/records", ".json"),
)
GROUP_PRODUCTS = (
    ("results/selection", ".json"),
    ("results/stacks", ".fits"),
    ("results/stacks/raw", ".fits"),
    ("results/qc/previews", ".png"),
    ("results/report/parts/groups", ".json"),
)
SNAKEMAKE_LOCKS = ".snakemake/locks"


class WorkdirError(Exception):
    """The working directory cannot be used; the message names the path and the fix."""


def check_writable(workdir):
    """Stop before any work when ``workdir`` cannot take the run's files.

    Creates ``.snakemake`` and ``results`` in ``workdir`` and writes, syncs and removes a
    small probe file in each, so a read-only or full file system is caught here rather
    than half-way through the run.

    Parameters
    ----------
    workdir : path-like
        The working directory of the run (where ``results/`` goes).

    Raises
    ------
    WorkdirError
        Naming the directory that cannot be written and why (read-only, full, denied).
    """
    workdir = Path(workdir)
    for sub in (".snakemake", "results"):
        folder = workdir / sub
        probe = folder / f".ccdflow-probe.{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise WorkdirError(
                f"cannot write in {folder}: {exc.strerror}. Free space there or make it "
                "writable, or run somewhere else (snakemake --directory DIR), then re-run"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)


def _holder(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def claim(workdir):
    """Hold ``workdir`` for this process; clear the locks an interrupted run left behind.

    Takes a non-blocking exclusive ``flock`` on ``.snakemake/ccdflow.lock`` and keeps it
    until this process ends (keep the returned file object referenced). The file then
    names this process (pid, host, start time), for the message of a run that is refused.
    When the lock is taken, no other ccdflow run is alive in ``workdir``: Snakemake's
    lock files (``.snakemake/locks/*.lock``) and temporary product files are those of a
    dead run, and are removed.

    Parameters
    ----------
    workdir : path-like
        The working directory of the run.

    Returns
    -------
    handle : file object
        The open lock file; the lock lasts as long as it stays open.
    removed : list of pathlib.Path
        Snakemake lock files of a dead run that were removed, and the temporary files
        (``results/**/.*.part``) its killed jobs left.
    previous : str
        Who held ``workdir`` last (pid, host, start time), for the message; empty when
        no ccdflow run has.

    Raises
    ------
    WorkdirError
        When another live run holds ``workdir``; the message names it.
    """
    workdir = Path(workdir)
    path = workdir / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        holder = _holder(path) or "another process"
        raise WorkdirError(
            f"another ccdflow run ({holder}) is working in {workdir.resolve()}; this one "
            "stops and leaves it alone. Wait for it to finish (or stop it), then re-run"
        ) from None
    handle.seek(0)
    previous = handle.read().strip()
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"pid {os.getpid()} on {socket.gethostname()}, started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    handle.flush()
    removed = sorted((workdir / SNAKEMAKE_LOCKS).glob("*.lock"))
    removed += sorted((workdir / "results").rglob(".*.part"))
    for lock in removed:
        lock.unlink(missing_ok=True)
    return handle, removed, previous


def orphaned_products(workdir, frames, groups, masters, references=()):
    """Products of frames, groups, masters or reference sets that the current plan no
    longer has.

    A raw file deleted (or renamed) from ``raw_dir`` leaves its calibrated, aligned and
    record files behind, and perhaps a group or a master; they are not rebuilt and not
    used, and ccdflow does not delete them (they are the user's files).

    Parameters
    ----------
    workdir : path-like
        The working directory of the run.
    frames, groups : iterable of str
        Frame ids and stack group names of the current plan.
    masters : iterable of str
        Paths (relative to ``workdir``) of the masters the current plan makes (their
        JSON records beside them are theirs too).
    references : iterable of str
        Names of the current reference sets (``results/references/{set}.json``).

    Returns
    -------
    list of str
        Paths relative to ``workdir``, sorted.
    """
    workdir = Path(workdir)
    wanted = {(d, name) for d, _ in FRAME_PRODUCTS for name in frames}
    wanted |= {(d, name) for d, _ in GROUP_PRODUCTS for name in groups}
    made = {str(Path(m)) for m in masters} | {str(Path(m).with_suffix(".json")) for m in masters}
    found = []
    for folder, suffix in FRAME_PRODUCTS + GROUP_PRODUCTS:
        for path in (workdir / folder).glob(f"*{suffix}"):
            if (folder, path.name[: -len(suffix)]) not in wanted:
                found.append(f"{folder}/{path.name}")
    for path in (workdir / "results/masters").glob("*"):
        if path.suffix in (".fits", ".json") and f"results/masters/{path.name}" not in made:
            found.append(f"results/masters/{path.name}")
    sets = set(references)
    for path in (workdir / "results/references").glob("*.json"):
        if path.stem not in sets:
            found.append(f"results/references/{path.name}")
    return sorted(found)
