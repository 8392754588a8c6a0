"""kill -9 in the middle of a stage: the stage's output is unchanged, its staging folder stays behind, and the
next run of the same stage removes it and finishes. Real `lggseg` processes, really killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TINY, cli_args, start_lggseg, tiny_config
from lggseg import pipeline
from lggseg.core.paths import SPLITS, Paths
from lggseg.data.preprocess import load_split

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and PIDs in temporary names are POSIX")

DOWNLOAD = ("data.source=synthetic", "data.synthetic.patients=40", "data.synthetic.slices_min=10",
            "data.synthetic.slices_max=12", "data.synthetic.seed=7")
PREPROCESS = (*TINY, "data.synthetic.patients=24", "preprocess.size=256")  # enough slices to be caught at work


def _lggseg(stage: str, root: Path, overrides: tuple[str, ...], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return start_lggseg(cli_args(stage, root, *overrides), cwd=root, stdout=out, stderr=subprocess.STDOUT,
                            text=False)


def _kill_when_staging_appears(process: subprocess.Popen, folder: Path, pattern: str, timeout_s: float = 15) -> Path:
    """SIGKILL `process` as soon as a staging folder matching `pattern` exists in `folder`; return that folder."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        found = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()  # reaped, so its PID is no longer alive
            return found[0]
        time.sleep(0.005)
    process.kill()
    process.wait()
    pytest.fail(f"no {pattern} in {folder} while the process ran (exit code {process.returncode})")


def _finish(stage: str, root: Path, overrides: tuple[str, ...], log: Path) -> str:
    process = _lggseg(stage, root, overrides, log)
    assert process.wait(timeout=60) == 0, log.read_text()
    return log.read_text()


def test_download_killed_mid_way_is_cleaned_up_by_the_next_run(tmp_path):
    paths = Paths.at(tmp_path)
    process = _lggseg("download", tmp_path, DOWNLOAD, tmp_path / "killed.log")
    staging = _kill_when_staging_appears(process, paths.raw, ".kaggle_3m.staging.*")

    assert process.returncode == -signal.SIGKILL
    assert staging.is_dir() and f".staging.{process.pid}." in staging.name  # the killed run's, left behind
    assert not paths.dataset.exists()

    output = _finish("download", tmp_path, DOWNLOAD, tmp_path / "rerun.log")
    assert f"removed stale {staging}" in output
    assert [p.name for p in paths.raw.iterdir()] == ["kaggle_3m"]
    cfg = tiny_config(*DOWNLOAD)
    pipeline.index(cfg, paths)  # strict: every patient folder, image, mask and data.csv row is whole
    assert len(pipeline.read_slices(paths)["patient_id"].unique()) == 40


def test_preprocess_killed_mid_way_keeps_old_output_and_is_cleaned_up_by_the_next_run(tmp_path):
    paths = Paths.at(tmp_path)
    cfg = tiny_config(*PREPROCESS)
    for stage in (pipeline.download, pipeline.index, pipeline.split, pipeline.preprocess):
        stage(cfg, paths)
    old_output = {str(p.relative_to(paths.processed)): p.stat().st_mtime_ns for p in paths.processed.rglob("*")}

    process = _lggseg("preprocess", tmp_path, PREPROCESS, tmp_path / "killed.log")
    staging = _kill_when_staging_appears(process, paths.processed.parent, ".processed.staging.*")

    assert process.returncode == -signal.SIGKILL
    assert staging.is_dir() and f".staging.{process.pid}." in staging.name
    assert {str(p.relative_to(paths.processed)): p.stat().st_mtime_ns for p in paths.processed.rglob("*")} == old_output

    output = _finish("preprocess", tmp_path, PREPROCESS, tmp_path / "rerun.log")
    assert f"removed stale {staging}" in output
    assert sorted(p.name for p in paths.processed.parent.iterdir()) == ["interim", "processed", "raw"]
    for split in SPLITS:
        images, masks, table = load_split(paths.processed, split)
        assert len(images) == len(masks) == len(table) > 0
