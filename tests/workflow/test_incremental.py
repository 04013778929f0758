"""DESIGN §7, the incremental acceptance table, row by row, with real Snakemake.

One generated night is reduced once; then each row changes raw_dir or the configuration
and compares the jobs a dry run plans with what the table allows, then runs them so the
next row starts from a reduced state. A row whose rerun set is larger or smaller than
the table says fails.

Night (test preset, 96x128): bias x5, darks at 60 s and 300 s (x5 each), flats V and R
(x5), lights V and R at 60 s and 120 s (x2 each). Held back, to arrive later: a third
V 60 s light, a sixth R flat, darks at 120 s, a sixth bias.
"""

import shutil
import time

import pytest
import yaml

from ccdflow import demo
from conftest import REPO, planned_jobs, read_tsv, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

LATER = ("light_M13demo_V_060s_003.fits", "flat_R_006.fits", "bias_006.fits")
DARKS_120 = [f"dark_120s_{i:03d}.fits" for i in range(1, 6)]
PER_FRAME = ("process_frame",)
PER_GROUP = ("select_frames", "stack_group", "stack_raw_group", "make_preview", "report_group")


def jobs(frames=0, groups=0, qc=True, **extra):
    """Expected job counts: per-frame chain x frames, per-group outputs x groups, and the
    night's QC table and report (which show every frame and every stack)."""
    out = {rule: frames for rule in PER_FRAME} | {rule: groups for rule in PER_GROUP}
    out["collect_qc"] = int(qc)
    out["make_report"] = int(qc)
    out.update(extra)
    return {k: v for k, v in out.items() if v}


def everything(night, references=0):
    """Every job of the night that depends on a calibration: what a new bias reruns;
    with ``references=4`` also the choice of the 4 groups' alignment references (which
    depend on raw lights only): what a library version change reruns."""
    n_lights = len(list(night.raw.glob("light_*.fits")))
    return jobs(
        choose_reference=references,
        frames=n_lights,
        groups=4,
        make_master_bias=1,
        make_master_dark=3,
        make_master_flat=2,
        make_bad_pixel_map=1,
        measure_detector=1,
        collect_calibration_qc=1,
        report_masters=1,
    )


class Night:
    """A raw directory that receives frames, and the working directory reducing it."""

    def __init__(self, tmp):
        self.source = tmp / "generated"
        demo.make_night(
            self.source,
            preset="test",
            seed=3,
            n_lights=3,
            n_bias=6,
            n_flats=6,
            dark_exptimes=(60.0, 300.0, 120.0),
        )
        self.raw = tmp / "raw"
        self.work = tmp / "work"
        self.raw.mkdir()
        self.work.mkdir()
        self.extra = []
        held = (
            set(LATER)
            | set(DARKS_120)
            | {
                f"{p.stem}.fits"
                for p in (self.source / "raw").glob("light_*_003.fits")
                if p.name != LATER[0]
            }
        )
        for path in sorted((self.source / "raw").iterdir()):
            if path.name not in held:
                shutil.copy2(path, self.raw / path.name)

    def add(self, name):
        shutil.copy2(self.source / "raw" / name, self.raw / name)

    def plan(self, *configfiles):
        """Dry run: rule -> number of jobs (without the 'all' target)."""
        args = self._configs(configfiles)
        proc = snakemake(self.work, "-n", *args, config={"raw_dir": self.raw})
        if "Nothing to be done" in proc.stdout + proc.stderr:
            return {}
        return {k: v for k, v in planned_jobs(proc.stdout).items() if k != "all"}

    def run(self, *configfiles):
        return snakemake(self.work, *self._configs(configfiles), config={"raw_dir": self.raw})

    def _configs(self, configfiles):
        # one --configfile with every file: given twice, Snakemake keeps only the last
        files = [str(c) for c in (*self.extra, *configfiles)]
        return ["--configfile", *files] if files else []


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    n = Night(tmp_path_factory.mktemp("incremental"))
    n.run()
    return n


def test_nothing_changed_reruns_nothing(night):
    assert night.plan() == {}


def test_recopied_file_with_same_bytes_reruns_nothing(night):
    for name in ("bias_001.fits", "light_M13demo_R_120s_001.fits", "flat_V_002.fits"):
        path = night.raw / name
        data = path.read_bytes()
        path.unlink()
        time.sleep(0.01)
        path.write_bytes(data)  # a new file: new mtime (newer than every product), same bytes
    assert night.plan() == {}


def test_new_light_frame_reruns_its_chain_and_its_stack_only(night):
    night.add(LATER[0])
    assert night.plan() == jobs(frames=1, groups=1)
    night.run()


def test_half_copied_frame_is_skipped_then_picked_up_when_complete(night):
    src = night.source / "raw" / "light_M13demo_R_060s_003.fits"
    dst = night.raw / src.name
    dst.write_bytes(src.read_bytes()[:5000])  # the copy is still running
    # nothing is recomputed; the night report is rebuilt to list the skipped file
    assert night.plan() == {"make_report": 1}
    rejected = read_tsv(night.work / "results/index/rejected.tsv")
    assert [(r["path"], r["reason"]) for r in rejected] == [(src.name, "truncated")]
    shutil.copy2(src, dst)  # the copy finished
    assert night.plan() == jobs(frames=1, groups=1)
    night.run()
    assert read_tsv(night.work / "results/index/rejected.tsv") == []


def test_new_flat_reruns_that_filter_only(night):
    night.add(LATER[1])
    # master flat R; the 5 R lights (2 at 120 s, 3 at 60 s); the 2 R stacks
    # and the detector measurement (its flat pairs); the setup's bad-pixel map (for
    # people: no frame job reads it, so the V lights keep their jobs); the masters'
    # pictures of the night report
    assert night.plan() == jobs(
        frames=5,
        groups=2,
        make_master_flat=1,
        make_bad_pixel_map=1,
        measure_detector=1,
        collect_calibration_qc=1,
        report_masters=1,
    )
    night.run()


def test_new_dark_exposure_reruns_its_master_and_the_lights_that_use_it(night):
    for name in DARKS_120:
        night.add(name)
    # 120 s lights switch from the scaled 300 s dark to the new 120 s one; 60 s lights
    # and the flats keep the 60 s dark
    assert night.plan() == jobs(
        frames=4,
        groups=2,
        make_master_dark=1,
        make_bad_pixel_map=1,
        collect_calibration_qc=1,
        report_masters=1,
    )
    night.run()
    frames = read_tsv(night.work / "results/index/frames.tsv")
    assert any(f["expgroup"] == "120" and f["imagetyp"] == "dark" for f in frames)


def test_stack_parameter_reruns_stacks_only(night, tmp_path):
    cfg = tmp_path / "stack.yaml"
    cfg.write_text(yaml.safe_dump({"stack": {"sigma_high": 2.5}}))
    assert night.plan(cfg) == {"stack_group": 4, "make_preview": 4, "make_report": 1}
    night.extra.append(cfg)
    night.run()


def test_cosmic_ray_parameter_reruns_cleaning_and_everything_after_it(night, tmp_path):
    cfg = tmp_path / "cosmics.yaml"
    cfg.write_text(yaml.safe_dump({"cosmics": {"sigclip": 5.0}}))
    n_lights = len(list(night.raw.glob("light_*.fits")))
    # one job per frame: its (cheap) calibration is redone too (DESIGN §7)
    assert night.plan(cfg) == jobs(frames=n_lights, groups=4)
    night.extra.append(cfg)
    night.run()


def test_alignment_parameter_reruns_the_frame_jobs_and_stacks(night, tmp_path):
    cfg = tmp_path / "align.yaml"
    cfg.write_text(yaml.safe_dump({"align": {"max_residual": 0.6}}))
    n_lights = len(list(night.raw.glob("light_*.fits")))
    assert night.plan(cfg) == jobs(frames=n_lights, groups=4)
    night.extra.append(cfg)
    night.run()


def test_quality_threshold_reruns_selections_and_stacks_not_frame_jobs(night, tmp_path):
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(yaml.safe_dump({"selection": {"max_saturated_fraction": 0.2}}))
    assert night.plan(cfg) == jobs(groups=4)
    night.extra.append(cfg)
    night.run()


def test_flat_defect_threshold_reruns_the_flats_and_their_lights_not_bias_or_darks(
    night, tmp_path
):
    """A flat's DEAD / BAD_COLUMN threshold is a parameter of make_master_flat only: the
    flats, every light (all use a flat), the stacks and the bad-pixel map rerun; the bias
    and the darks, which get no flat bits, do not."""
    cfg = tmp_path / "badpix.yaml"
    cfg.write_text(yaml.safe_dump({"badpix": {"low_fraction": 0.6}}))
    n_lights = len(list(night.raw.glob("light_*.fits")))
    assert night.plan(cfg) == jobs(
        frames=n_lights,
        groups=4,
        make_master_flat=2,
        make_bad_pixel_map=1,
        collect_calibration_qc=1,
        report_masters=1,
    )
    night.extra.append(cfg)
    night.run()


def test_excluding_one_frame_reruns_its_group_only(night, tmp_path):
    cfg = tmp_path / "exclude.yaml"
    cfg.write_text(yaml.safe_dump({"selection": {"exclude": ["light_M13demo_V_060s_002*"]}}))
    assert night.plan(cfg) == jobs(groups=1)
    night.extra.append(cfg)
    night.run()
    qc = {r["frame"]: r for r in read_tsv(night.work / "results/qc/frames.tsv")}
    assert qc["light_M13demo_V_060s_002"]["reason"] == "excluded_by_config"
    assert [r["frame"] for r in qc.values() if r["status"] != "ok"] == ["light_M13demo_V_060s_002"]


def test_new_bias_reruns_everything_downstream(night):
    night.add(LATER[2])
    assert night.plan() == everything(night)
    night.run()
    assert night.plan() == {}


def test_library_version_change_reruns_what_it_affects(night, tmp_path):
    """STYLE 10: a library change that alters results bumps ccdflow.__version__, and the
    version is a parameter of every rule, so everything is recomputed."""
    copy = tmp_path / "ccdflow"
    shutil.copytree(
        REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "results", "logs", ".*cache")
    )
    init = copy / "scripts/ccdflow/__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.'))
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(copy / "Snakefile"),
            "-n",
            "--cores",
            "1",
            "--directory",
            str(night.work),
            *night._configs(()),
            "--config",
            f"raw_dir={night.raw}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    planned = {k: v for k, v in planned_jobs(proc.stdout).items() if k != "all"}
    assert planned == everything(night, references=4)
