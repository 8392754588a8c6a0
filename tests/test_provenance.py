"""What a data set records of where it came from, what a model records of what it was trained on, and the git state a
run records (code changes only)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.data.provenance import (
    SOURCE_RECORD,
    input_source,
    provenance_warnings,
    recorded_source,
    registered_name,
    training_data,
)
from lggseg.model.checkpoint import read_checkpoint
from lggseg.tracking.runs import git_state


def test_a_synthetic_tree_records_its_source_for_its_patients_and_slices(synthetic_tree, tmp_path):
    assert recorded_source(synthetic_tree) == "synthetic"
    patient = next(p for p in sorted(synthetic_tree.iterdir()) if p.is_dir())
    for path in (synthetic_tree, patient, next(patient.glob("*_1.tif"))):
        assert input_source(path) == "synthetic", path
    copied = Path(shutil.copytree(patient, tmp_path / "elsewhere" / patient.name))
    assert input_source(copied) is None  # out of its data set, nothing says it is synthetic


def test_the_download_stage_records_the_resolved_source(real_sample, tmp_path):
    paths = Paths.at(tmp_path / "project")
    pipeline.download(tiny_config("data.source=auto", f"data.local_path={real_sample}"), paths)
    assert json.loads((paths.dataset / SOURCE_RECORD).read_text())["data_source"] == "local"  # `auto` resolved
    assert not (real_sample / SOURCE_RECORD).exists()  # the user's copy is left as it was


def test_checkpoints_and_the_preprocess_manifest_say_what_the_model_saw(trained_project):
    paths, _ = trained_project
    manifest = json.loads((paths.processed / "manifest.json").read_text())
    assert manifest["data_source"] == "synthetic"
    for arch in ("unet", "fpn"):
        for name in ("best.pt", "last.pt"):
            assert read_checkpoint(paths.model_dir(arch) / name)["trained_on"] == training_data(manifest), (arch, name)


def test_only_a_synthetic_model_on_scans_not_recorded_as_synthetic_is_warned_about():
    synthetic = {"data_source": "synthetic", "patients": {"train": 8, "val": 2, "test": 2}, "slices": {"train": 80, "val": 20},
                 "data_fingerprint": "0123456789abcdef", "input_size": 64, "channels": "all"}
    real = {**synthetic, "data_source": "kaggle"}
    assert provenance_warnings(synthetic, "synthetic") == []
    assert provenance_warnings(real, None) == [] and provenance_warnings(None, None) == []
    for scans, said in ((None, "no synthetic-data record"), ("kaggle", "recorded as kaggle data")):
        (warning,) = provenance_warnings(synthetic, scans)
        assert "SYNTHETIC data only" in warning and said in warning and "8 train / 2 val / 2 test patients" in warning


def test_models_trained_on_synthetic_data_have_their_own_registry_names():
    assert registered_name("segmentation", {"data_source": "synthetic"}) == "lgg-synthetic-segmentation"
    assert registered_name("unet", {"data_source": "synthetic"}) == "lgg-synthetic-unet"
    for trained_on in ({"data_source": "kaggle"}, {"data_source": "local"}, None):  # None: an older lggseg's model
        assert registered_name("segmentation", trained_on) == "lgg-segmentation"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True)


def test_git_dirty_means_code_changes_not_params_the_lock_file_or_stage_outputs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "reports/arch/unet").mkdir(parents=True)
    for name, text in (("params.yaml", "train:\n  lr: 0.001\n"), ("dvc.lock", "schema: '2.0'\n"), ("src/model.py", "x = 1\n"),
                       ("reports/arch/unet/metrics.json", "{}\n")):
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "baseline")
    # what `dvc exp run -S train.lr=0.01` does to its copy of the repository: params and lock file change
    (repo / "params.yaml").write_text("train:\n  lr: 0.01\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "reports/arch/unet/metrics.json").write_text('{"dice_patient_mean": 0.8}\n')  # a committed stage output
    (repo / "notes.txt").write_text("untracked\n")
    state = git_state(repo / "src")
    assert state["git_dirty"] == "false" and "git_dirty_files" not in state and len(state["git_commit"]) == 40
    (repo / "src/model.py").write_text("x = 2\n")
    state = git_state(repo)
    assert state["git_dirty"] == "true" and state["git_dirty_files"] == "src/model.py"
