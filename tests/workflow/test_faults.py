"""DESIGN §8 faults with real Snakemake on a generated night: a run killed with kill -9, a
second run in the same directory, a read-only or full working directory, a raw file
modified in the future, .snakemake removed, a raw file deleted. Each one converges in one
plain re-run, and its products equal those of an uninterrupted run. The raw files are
checksummed around every run (conftest.snakemake)."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from astropy.io import fits

from ccdflow import demo
from conftest import planned_jobs, raw_digests, read_tsv, snakemake, snakemake_command

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

PRODUCTS = ("masters", "calibrated", "aligned", "stacks", "stacks/raw")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    return demo.make_night(base / "night", preset="test", seed=11)["raw_dir"]


@pytest.fixture(scope="module")
def reference(night, tmp_path_factory):
    """An uninterrupted run: what every fault must converge to."""
    work = tmp_path_factory.mktemp("reference")
    snakemake(work, config={"raw_dir": night})
    return work


@pytest.fixture
def raw_copy(night, tmp_path):
    """A copy of the night (same mtimes) that a test may change."""
    raw = tmp_path / "raw"
    shutil.copytree(night, raw)
    return raw


def assert_same_products(work, reference):
    """Every FITS product of ``reference`` exists in ``work`` with equal headers (but the
    reduction date) and data within float tolerance; the tables list the same frames."""
    names = []
    for kind in PRODUCTS:
        for ref in sorted((reference / "results" / kind).glob("*.fits")):
            other = work / "results" / kind / ref.name
            diff = fits.FITSDiff(
                str(ref), str(other), rtol=1e-6, atol=1e-6, ignore_keywords=["DATE-RED"]
            )
            assert diff.identical, diff.report()
            names.append(ref.name)
    assert len(names) > 20
    for table in ("results/qc/frames.tsv", "results/index/frames.tsv"):
        assert len(read_tsv(work / table)) == len(read_tsv(reference / table))


def assert_no_half_written(work):
    """Every file at a product path is complete: FITS parse to the end (a multiple of
    2880 bytes), JSON parses, PNG ends with its IEND chunk, TSV ends with a newline."""
    checked = 0
    for path in (work / "results").rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".fits":
            assert path.stat().st_size % 2880 == 0, path
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    _ = hdu.data
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            assert path.read_bytes()[-8:-4] == b"IEND", path
        elif path.suffix == ".tsv":
            assert path.read_text().endswith("\n"), path
        checked += 1
    return checked


def nothing_to_do(work, raw):
    proc = snakemake(work, "-n", config={"raw_dir": raw})
    return "Nothing to be done" in proc.stdout + proc.stderr


def start(work, raw):
    """Snakemake in its own process group (so the whole group can be killed)."""
    return subprocess.Popen(
        snakemake_command(work, {"raw_dir": raw}),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(condition, proc, timeout=180):
    t0 = time.monotonic()
    while not condition():
        assert proc.poll() is None, "the run ended before the point it was to be killed at"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_kill_9_then_one_plain_rerun_converges(night, reference, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    before = raw_digests(night)
    # killed twice: once among the masters, once among the frame jobs and stacks
    for glob in ("results/masters/*.fits", "results/stacks/*.fits"):
        proc = start(work, night)
        wait_for(lambda g=glob: any(work.glob(g)), proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert list((work / ".snakemake/locks").glob("*.lock")), "kill -9 left no lock?"
        assert assert_no_half_written(work)
    assert raw_digests(night) == before
    proc = snakemake(work, config={"raw_dir": night})
    assert "removed the lock and temporary files of an interrupted run" in proc.stderr
    assert nothing_to_do(work, night)
    assert_same_products(work, reference)
    assert not list((work / "results").rglob(".*.part"))


def test_second_run_is_refused_and_the_first_finishes(night, reference, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    first = start(work, night)
    try:
        wait_for(lambda: any((work / ".snakemake/locks").glob("*.lock")), first)
        second = snakemake(work, config={"raw_dir": night}, check=False)
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        rc = first.wait(timeout=300)
    assert second.returncode == 1
    assert f"another ccdflow run (pid {first.pid} on " in second.stderr
    assert str(work) in second.stderr
    assert "Traceback" not in second.stderr and "LockException" not in second.stderr
    assert rc == 0
    assert nothing_to_do(work, night)
    assert_same_products(work, reference)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs directory; skipped where mounting is not allowed."""
    mounted = []

    def mount(options):
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def assert_one_clear_error(proc, path, why):
    assert proc.returncode == 1
    assert f"cannot write in {path}: {why}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "OSError" not in proc.stderr, proc.stderr


def test_read_only_workdir_is_one_clear_error(night, tmpfs):
    work = tmpfs("ro,size=1m")
    proc = snakemake(work, config={"raw_dir": night}, check=False)
    assert_one_clear_error(proc, work / ".snakemake", "Read-only file system")


def test_full_workdir_is_one_clear_error_and_converges_once_freed(night, reference, tmpfs):
    work = tmpfs("size=16m")
    filler = work / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    proc = snakemake(work, config={"raw_dir": night}, check=False)
    assert_one_clear_error(proc, work / ".snakemake", "No space left on device")
    assert not (work / "results/masters").exists(), "work started on a full disk"
    filler.unlink()
    snakemake(work, config={"raw_dir": night})
    assert nothing_to_do(work, night)
    assert_same_products(work, reference)


def test_raw_file_modified_in_the_future(raw_copy, reference, tmp_path):
    future = raw_copy / "light_M13demo_V_060s_001.fits"
    flat = raw_copy / "flat_R_002.fits"
    for path in (future, flat):
        os.utime(path, (time.time() + 86400, time.time() + 86400))
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, config={"raw_dir": raw_copy})
    assert f"ccdflow: {future} was modified in the future" in proc.stderr
    assert f"ccdflow: {flat} was modified in the future" in proc.stderr
    assert nothing_to_do(work, raw_copy)
    assert_same_products(work, reference)


def test_rm_snakemake_dir_rebuilds_nothing(night, reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(reference, work, ignore=shutil.ignore_patterns(".snakemake"))
    mtimes = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*.fits")}
    proc = snakemake(work, config={"raw_dir": night})
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_deleted_raw_file_rebuilds_its_group_and_reports_orphans(raw_copy, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    snakemake(work, config={"raw_dir": raw_copy})
    frame = "light_M13demo_R_120s_002"
    (raw_copy / f"{frame}.fits").unlink()
    orphans = [
        f"results/aligned/{frame}.fits",
        f"results/calibrated/{frame}.fits",
        f"results/records/{frame}.json",
    ]
    dry = snakemake(work, "-n", config={"raw_dir": raw_copy})
    assert "ccdflow: 3 products belong to no frame of" in dry.stderr
    assert ", ".join(orphans) in dry.stderr
    jobs = planned_jobs(dry.stdout)
    assert not {j for j in jobs if j.startswith("make_master")}
    assert jobs.get("process_frame", 0) <= 1  # the other frame, if the deleted was its reference
    for rule in (
        "select_frames",
        "stack_group",
        "stack_raw_group",
        "make_preview",
        "report_group",
    ):
        assert jobs[rule] == 1, jobs
    snakemake(work, config={"raw_dir": raw_copy})
    assert all((work / p).exists() for p in orphans), "user files were deleted"
    with fits.open(work / "results/stacks/M13demo_R_120.fits") as hdul:
        assert hdul[0].header["NCOMBINE"] == 1
    qc = {r["frame"] for r in read_tsv(work / "results/qc/frames.tsv")}
    assert frame not in qc and "light_M13demo_R_120s_001" in qc
    assert nothing_to_do(work, raw_copy)
