"""Shared test helpers: run real Snakemake in a temp dir, locate ../shared/data."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# astroscrappy's OpenMP threads spin while waiting; on a shared 2-core machine that
# slows everything else down (Snakemake sets OMP_NUM_THREADS per job anyway).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
#: Master combine parameters of the unit tests (the config defaults for biases and darks,
#: and the flats' clipped median).
COMBINE = {"method": "sigma_clip", "sigma_low": 3.0, "sigma_high": 3.0, "maxiters": 5}
FLAT_COMBINE = {**COMBINE, "method": "sigma_clip_median"}
M51 = SHARED_DATA / "phy241-m51"


def snakemake(workdir, *args, config=None, configfiles=(), check=True):
    """Run the ccdflow workflow with real Snakemake in ``workdir``; return the process.

    ``config`` is a dict of ``--config`` overrides; ``configfiles`` are layered on top
    of config/config.yaml. The files of ``config["raw_dir"]`` are checksummed before and
    after the run and must not change (DESIGN §8: raw files are never modified).
    """
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", "2", *args]
    for cf in configfiles:
        cmd += ["--configfile", str(cf)]
    if config:
        cmd += ["--config", *(f"{k}={v}" for k, v in config.items())]
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)
    raw = (config or {}).get("raw_dir")
    before = raw_digests(raw) if raw else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if raw:
        assert raw_digests(raw) == before, f"the run changed raw files in {raw}"
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}"
        )
    return proc


def snakemake_command(workdir, config):
    """The command line of :func:`snakemake`, for runs started with ``subprocess.Popen``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", "2", "--config"]
    return cmd + [f"{k}={v}" for k, v in config.items()]


def raw_digests(raw_dir):
    """Relative path -> (sha1, mtime_ns, mode) of every file under ``raw_dir``."""
    raw_dir = Path(raw_dir)
    out = {}
    for p in sorted(raw_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest = hashlib.sha1(p.read_bytes()).hexdigest()
            out[str(p.relative_to(raw_dir))] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def calibrate_light(raw, out_dir, *, bias=None, dark=None, flat=None, dark_scale=1.0, **detector):
    """Calibrate one raw light with the frame job (cosmic-ray cleaning off, the frame its
    own reference); return the path of the calibrated product. ``detector``: ``gain``,
    ``read_noise``, ``saturation``."""
    from ccdflow.framejob import process_frame

    out_dir = Path(out_dir)
    name = Path(raw).stem
    process_frame(
        raw,
        0,
        frame=name,
        group="test",
        calibrated_path=out_dir / f"{name}.calibrated.fits",
        aligned_path=out_dir / f"{name}.aligned.fits",
        record_path=out_dir / f"{name}.json",
        masters={"bias": bias, "dark": dark, "flat": flat},
        calibration={"dark_scale": dark_scale, **detector},
        cosmics={"enabled": False},
        align={},
    )
    return out_dir / f"{name}.calibrated.fits"


def read_tsv(path):
    """Rows of a TSV written by ccdflow as dicts of strings."""
    lines = Path(path).read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"), strict=True)) for line in lines[1:]]


def planned_jobs(stdout):
    """rule -> job count from the 'Job stats' table of a dry run."""
    table = stdout.split("Job stats:", 1)[1]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"
    }


@pytest.fixture(scope="session")
def m51_dir():
    """The real PHY241 M51 night; skipped with a clear message when ../shared is absent."""
    if not M51.is_dir():
        pytest.skip(f"real data not found at {M51} (../shared/data beside the repository)")
    return M51


#: The bad flats of issue 14, by the reason each must be left out of its master with.
BAD_FLATS = {
    "zero": "no_signal",
    "saturated": "saturated",
    "faint": "faint",
    "otherfilter": "wrong_pattern",
}


def write_bad_flats(truth, directory, filter_name="V", other="R"):
    """Write one bad flat of each kind of `BAD_FLATS` (headers of a good ``filter_name``
    flat) into ``directory``: all zero; 10 % of the pixels saturated; 200 times too faint;
    the data of an ``other`` filter's flat. Returns ``{kind: path}``."""
    import numpy as np
    from astropy.io import fits

    raw = Path(truth["raw_dir"])
    flats = [f for f in truth["frames"] if f["type"] == "flat"]
    good = next(f for f in flats if f["filter"] == filter_name)
    wrong = next(f for f in flats if f["filter"] == other)
    header = fits.getheader(raw / good["file"])
    data = fits.getdata(raw / good["file"]).astype(np.float64)
    saturation = truth["spec"]["saturation"]
    saturated = data.copy()
    saturated[np.random.default_rng(1).random(data.shape) < 0.1] = saturation
    other_data = fits.getdata(raw / wrong["file"]).astype(np.float64)
    other_data[0, 0] += 1  # not a byte copy of the other flat (that is a duplicate)
    frames = {
        "zero": np.zeros_like(data),
        "saturated": saturated,
        "faint": np.rint((data - truth["bias"]) / 200 + truth["bias"]),
        "otherfilter": other_data,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, values in frames.items():
        out[kind] = directory / f"flat_{filter_name}_bad_{kind}.fits"
        fits.writeto(out[kind], values.astype(np.uint16), header, overwrite=True)
    return out
