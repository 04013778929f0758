"""The Slurm profile on a real Slurm cluster (DESIGN §9): a generated night reduced through
snakemake-executor-plugin-slurm with per-frame chains grouped into few Slurm jobs, giving
the same numbers as a local run.

Needs a running Slurm with accounting (``sacct``), e.g. the single-node cluster of
``../shared/tools/local-slurm-start.sh`` (partition ``debug``, account ``ci``; other names
via CCDFLOW_SLURM_PARTITION / CCDFLOW_SLURM_ACCOUNT). Skipped with a message otherwise.
"""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from astropy.io import fits

from ccdflow import demo
from conftest import REPO, read_tsv, snakemake

pytestmark = pytest.mark.integration

PARTITION = os.environ.get("CCDFLOW_SLURM_PARTITION", "debug")
ACCOUNT = os.environ.get("CCDFLOW_SLURM_ACCOUNT", "ci")


def _node_cpus():
    """CPUs of a node of the partition, or None when no usable Slurm is running."""
    if not (shutil.which("sinfo") and shutil.which("sacct") and shutil.which("sbatch")):
        return None
    proc = subprocess.run(
        ["sinfo", "-h", "-p", PARTITION, "-o", "%c %a"], capture_output=True, text=True
    )
    if proc.returncode != 0 or "up" not in proc.stdout:
        return None
    if subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode != 0:
        return None
    return int(proc.stdout.split()[0].rstrip("+"))


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    cpus = _node_cpus()
    if cpus is None:
        pytest.skip(
            f"no running Slurm with partition {PARTITION!r} and sacct "
            "(start one with: bash ../shared/tools/local-slurm-start.sh)"
        )
    base = tmp_path_factory.mktemp("slurm")
    night = demo.make_night(base / "night", preset="test", seed=21)
    work = base / "work"
    work.mkdir()
    args = [
        "--workflow-profile",
        str(REPO / "workflow/profiles/slurm"),
        "--default-resources",
        f"slurm_partition={PARTITION}",
        f"slurm_account={ACCOUNT}",
        "mem_mb=1000",
        "runtime=30",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--cores",
        str(cpus),
        "--jobs",
        "4",
    ]
    run = snakemake(work, *args, config={"raw_dir": night["raw_dir"]})
    again = snakemake(work, *args, "-n", config={"raw_dir": night["raw_dir"]})
    return {
        "work": work,
        "night": night,
        "run": run,
        "again": again,
        "log": run.stdout + run.stderr,
    }


def test_the_night_is_reduced_through_slurm(slurm_run):
    work, log = slurm_run["work"], slurm_run["log"]
    slurm_ids = set(re.findall(r"submitted with SLURM jobid (\d+)", log))
    assert slurm_ids, "no job went through Slurm"
    states = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(slurm_ids))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(states) == len(slurm_ids)
    assert all(s.endswith("|COMPLETED") for s in states), states
    qc = read_tsv(work / "results/qc/frames.tsv")
    assert len(qc) == 8 and {r["status"] for r in qc} == {"ok"}
    assert len(list((work / "results/stacks").glob("*.fits"))) == 4
    assert "Nothing to be done" in slurm_run["again"].stdout + slurm_run["again"].stderr


def test_per_frame_chains_are_bundled_into_few_slurm_jobs(slurm_run):
    # 8 frame jobs become one group job (up to 50 frames per Slurm job), so a big night
    # does not flood the queue
    log = slurm_run["log"]
    groups = re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/group_frames_", log)
    singles = re.findall(r"slurm_logs/rule_process_frame/", log)
    assert not singles
    # the frame jobs of a stack group are connected (through its reference file): at
    # most one group job per stack group, and group-components 50 lets them share one
    assert 1 <= len(groups) <= 4


def test_the_tables_and_the_report_run_locally_and_nothing_else_is_grouped(slurm_run):
    # the QC tables and the report read small records: no Slurm job (and no queue wait,
    # no status check) for them; the other rules' jobs go through Slurm one by one, so a
    # failing job never takes another job's outputs with it
    log = slurm_run["log"]
    logs = re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/(\S+?)/", log)
    singles = {name.removeprefix("rule_") for name in logs if name.startswith("rule_")}
    groups = {name for name in logs if name.startswith("group_")}
    assert groups == {"group_frames_choose_reference_process_frame"}, groups
    assert {"make_master_bias", "make_master_flat", "stack_group", "make_preview"} <= singles
    for rule in ("collect_qc", "collect_calibration_qc", "make_report"):
        assert f"localrule {rule}:" in log
        assert rule not in singles


def test_slurm_results_equal_a_local_run(slurm_run, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    target = "results/stacks/M13demo_V_60.fits"
    snakemake(local, target, config={"raw_dir": slurm_run["night"]["raw_dir"]})
    with fits.open(local / target) as a, fits.open(slurm_run["work"] / target) as b:
        for name in ("PRIMARY", "UNCERT", "MASK", "COVERAGE"):
            np.testing.assert_array_equal(a[name].data, b[name].data)
