"""The working directory: writable, held by one run, stale locks, orphaned products."""

import os
import time

import pytest

from ccdflow import inventory, workdir


def test_a_second_claim_is_refused_naming_the_first(tmp_path):
    first, removed, _ = workdir.claim(tmp_path)
    try:
        assert removed == []
        with pytest.raises(workdir.WorkdirError, match=f"pid {os.getpid()} on "):
            workdir.claim(tmp_path)
    finally:
        first.close()


def test_a_dead_runs_locks_and_temporary_files_are_removed(tmp_path):
    first, _, _ = workdir.claim(tmp_path)
    first.close()  # the process that held it is gone
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/x.fits\n")
    part = tmp_path / "results/stacks/.g.fits.abc.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half")
    keep = tmp_path / "results/stacks/g.fits"
    keep.write_bytes(b"whole")
    handle, removed, previous = workdir.claim(tmp_path)
    handle.close()
    assert sorted(removed) == sorted([locks / "0.output.lock", part])
    assert not part.exists() and keep.exists()
    assert previous.startswith(f"pid {os.getpid()} on ")


def test_check_writable_names_the_folder(tmp_path):
    (tmp_path / "results").write_text("a file where a folder should be")
    with pytest.raises(workdir.WorkdirError, match=f"cannot write in {tmp_path}/results"):
        workdir.check_writable(tmp_path)


def test_orphaned_products(tmp_path):
    for rel in (
        "results/calibrated/a.fits",
        "results/calibrated/gone.fits",
        "results/records/gone.json",
        "results/stacks/G.fits",
        "results/stacks/old.fits",
        "results/masters/bias_x.fits",
        "results/masters/bias_x.json",
        "results/masters/bias_y.fits",
        "results/masters/bias_y.json",
        "results/references/G.json",
        "results/references/old.json",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = workdir.orphaned_products(
        tmp_path, ["a"], ["G"], ["results/masters/bias_x.fits"], references=["G"]
    )
    assert found == [
        "results/calibrated/gone.fits",
        "results/masters/bias_y.fits",
        "results/masters/bias_y.json",
        "results/records/gone.json",
        "results/references/old.json",
        "results/stacks/old.fits",
    ]


def test_future_mtimes(tmp_path):
    for name in ("a.fits", "b.fits"):
        (tmp_path / name).write_bytes(b"")
    later = time.time() + 3600
    os.utime(tmp_path / "b.fits", (later, later))
    records = [{"path": "a.fits"}, {"path": "b.fits"}, {"path": "gone.fits"}]
    assert inventory.future_mtimes(tmp_path, records) == {str(tmp_path / "b.fits"): later}
