"""Results travel: push once to a DVC remote, pull everywhere, retrain nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from dvc_project import make_dvc_repo, run, set_params, stages_run
from lggseg.data.dataset import SliceDataset
from lggseg.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pushed_and_pulled(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """Repo A runs the pipeline, commits dvc.lock and pushes to a local remote; B is a git clone of A
    that pulled. Both log into one MLflow store, as a team's tracking server would be shared."""
    tmp = tmp_path_factory.mktemp("remote")
    team = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'team-mlflow' / 'mlflow.db'}"}
    (tmp / "team-mlflow").mkdir()
    first = make_dvc_repo(tmp / "first")
    run(["dvc", "remote", "add", "-d", "storage", str(tmp / "dvc-store")], first)
    set_params(first, *TINY, "data.synthetic.patients=10", "train.epochs=2")
    run(["dvc", "repro"], first, env=team)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "pipeline results"], first)
    run(["dvc", "push", "--run-cache"], first, env=team)
    second = tmp / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp)
    run(["dvc", "pull"], second, env=team)
    return first, second, team


def test_a_pulled_clone_is_up_to_date_and_reruns_nothing(pushed_and_pulled):
    first, second, team = pushed_and_pulled
    # the shared sqlite store keeps its artifacts beside the database, not in the folder a stage ran in
    store = Path(team["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent
    assert any((store / "artifacts").rglob("metrics.json")) and not (first / "mlruns").exists()
    assert "up to date" in run(["dvc", "status"], second, env=team).stdout
    assert stages_run(run(["dvc", "repro"], second, env=team).stdout) == []
    for path in ("reports/comparison.md", "reports/comparison.png", "reports/arch/unet/figures/roc.png",
                 "models/fpn/best.pt", "data/processed/test/images.npy"):
        assert (second / path).read_bytes() == (first / path).read_bytes(), path
    metrics_diff = json.loads(run(["dvc", "metrics", "diff", "--json"], second, env=team).stdout or "{}")
    assert not any(metrics_diff.get("diff", metrics_diff).values())  # same numbers as the commit


def test_the_pulled_model_loads_and_predicts(pushed_and_pulled):
    _, second, _ = pushed_and_pulled
    model, checkpoint = load_checkpoint(second / "models" / "unet" / "best.pt")
    test = SliceDataset(second / "data" / "processed", "test")
    with torch.inference_mode():
        logits = model(test[0]["image"][None])
    assert logits.shape == (1, 1, *test[0]["image"].shape[1:]) and np.isfinite(logits.numpy()).all()
    assert checkpoint["spec"]["arch"] == "unet"


def test_an_evaluate_param_change_in_the_clone_reruns_evaluate_and_compare_only(pushed_and_pulled):
    _, second, team = pushed_and_pulled
    set_params(second, "evaluate.threshold=0.4")
    assert set(stages_run(run(["dvc", "repro"], second, env=team).stdout)) == {
        "evaluate@unet", "evaluate@fpn", "compare"}
    assert "up to date" in run(["dvc", "status"], second, env=team).stdout


def test_check_champion_reproduces_the_recorded_dice_from_pulled_files(pushed_and_pulled):
    _, second, team = pushed_and_pulled
    result = run(["lggseg", "check-champion"], second, env=team)
    assert "as recorded" in result.stdout
    # a checkpoint that does not match its metrics is caught
    champion = result.stdout.split()[1].rstrip(":")
    metrics_path = second / "reports" / "arch" / champion / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "dice_patient_mean": metrics["dice_patient_mean"] / 2 + 0.01}))
    failed = run(["lggseg", "check-champion"], second, env=team, check=False)
    metrics_path.write_text(json.dumps(metrics))
    assert failed.returncode == 1 and f"models/{champion}/best.pt gives test per-patient Dice" in failed.stderr
