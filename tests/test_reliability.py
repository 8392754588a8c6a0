"""What happens to a long training run when things go wrong: divergence, two writers, a broken or
missing MLflow store, a kill -9 and a resume. Each test reproduces a failure users saw."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import PARAMS, TINY, cli_args, mlflow_client, start_lggseg, tiny_config
from lggseg import pipeline
from lggseg.cli import main
from lggseg.core.config import MlflowConfig
from lggseg.core.locks import architecture_lock
from lggseg.core.paths import Paths
from lggseg.model.devices import resolve_runtime, seed_everything
from lggseg.model.networks import ModelSpec, create_model
from lggseg.tracking.runs import Tracker, read_run_pointer
from lggseg.tracking.store import TrackingError
from lggseg.training.divergence import TrainingDiverged
from lggseg.training.recipe import build_loss, make_loaders
from lggseg.training.run_record import log_missing_epochs
from lggseg.training.state import TrainingState
from lggseg.training.validation import validate


def _project_with_data(tmp_path: Path, prepared_project: Paths, name: str = "project") -> Paths:
    paths = Paths.at(tmp_path / name)
    shutil.copytree(prepared_project.processed, paths.processed)
    return paths


def _cli_args(paths: Paths, stage: str, *settings: str) -> list[str]:
    arch = "unet" if stage in ("train", "evaluate") else None
    return cli_args(stage, paths.root, *TINY, "model.architectures=[unet]", *settings, arch=arch)


# ------------------------------------------------------------------------------------------ divergence


def test_a_diverging_training_stops_saves_nothing_broken_and_fails_the_run(tmp_path, prepared_project, capsys):
    paths = _project_with_data(tmp_path, prepared_project)
    assert main(_cli_args(paths, "train", "train.epochs=1")) == 0  # a good model first
    best = paths.model_dir("unet") / "best.pt"
    good = best.read_bytes()

    assert main(_cli_args(paths, "train", "train.epochs=2", "train.lr=1.0e+30")) == 1
    err = capsys.readouterr().err
    assert "training diverged in epoch 1 by batch" in err and "lower train.lr" in err and "Traceback" not in err
    assert best.read_bytes() == good  # the last finite model survives
    run_id = read_run_pointer(paths.model_dir("unet") / "mlflow_run.json")["run_id"]
    run = mlflow_client(paths).get_run(run_id)
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["failure_reason"]


def test_a_model_with_nan_weights_does_not_get_a_plausible_val_dice(prepared_project):
    cfg = tiny_config()
    runtime = resolve_runtime("cpu")
    _, val_loader = make_loaders(cfg, prepared_project, runtime, seed_everything(0))
    model = create_model(ModelSpec("unet", cfg.model.encoder, None, in_channels=3))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite values on the val split"):
        validate(model, val_loader, build_loss(cfg.train.loss), runtime, cfg.train.threshold)


def test_non_finite_metrics_are_logged_not_dropped(tmp_path):
    tracker = Tracker(MlflowConfig(experiment="nan"), tmp_path)
    run_id = tracker.start_run("nan", {}, {})
    tracker.log_metrics(run_id, {"train_loss": float("nan"), "val_loss": float("inf")}, step=1)
    metrics = tracker.client.get_run(run_id).data.metrics
    assert math.isnan(metrics["train_loss"]) and metrics["val_loss"] > 1e300


# ------------------------------------------------------------------------------------ one writer


def test_a_second_writer_of_the_same_model_folder_fails_at_once_naming_the_first(tmp_path, prepared_project):
    paths = _project_with_data(tmp_path, prepared_project)
    with architecture_lock(paths, "unet", "trained"):
        second = start_lggseg(_cli_args(paths, "train", "train.epochs=1"))
        _, err = second.communicate(timeout=120)
    assert second.returncode == 1
    assert f"models/unet is being trained by process {os.getpid()} since" in err
    assert not (paths.model_dir("unet") / "last.pt").exists()
    with architecture_lock(paths, "unet", "evaluated"):  # released: the lock can be taken again
        pass


def test_first_runs_on_a_fresh_sqlite_store_at_the_same_time_both_succeed(tmp_path):
    code = ("import sys; from pathlib import Path; from lggseg.core.config import MlflowConfig; "
            "from lggseg.tracking.runs import Tracker; Tracker(MlflowConfig(experiment=sys.argv[1]), Path(sys.argv[2]))")
    processes = [subprocess.Popen([sys.executable, "-c", code, f"exp{i}", str(tmp_path)], stderr=subprocess.PIPE,
                                  text=True) for i in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert all(rc == 0 for rc, _ in results), results


# ------------------------------------------------------------------------------------ store errors


def test_a_corrupt_store_is_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(TrackingError) as err:
        Tracker(MlflowConfig(), tmp_path)
    message = str(err.value)
    assert str(tmp_path / "mlruns" / "mlflow.db") in message and "\n" not in message


def test_evaluate_checks_the_training_run_before_writing_anything(tmp_path, prepared_project):
    paths = _project_with_data(tmp_path, prepared_project)
    cfg = tiny_config("train.epochs=1", "model.architectures=[unet]")
    pipeline.train(cfg, paths, "unet")
    pipeline.evaluate(cfg, paths, "unet")
    reports = {p: p.read_bytes() for p in paths.report_dir("unet").rglob("*") if p.is_file()}
    shutil.move(paths.mlruns / "mlflow.db", tmp_path / "moved-away.db")  # the store is gone
    # a new process, as a user's next command would be (MLflow caches open stores per process)
    evaluate = start_lggseg(_cli_args(paths, "evaluate", "train.epochs=1"))
    _, err = evaluate.communicate(timeout=300)
    assert evaluate.returncode == 1 and "Traceback" not in err
    assert re.search(r"models/unet/mlflow_run\.json points at MLflow run \w+, which the tracking store", err), err
    assert "mlflow.register: false" in err
    assert {p: p.read_bytes() for p in paths.report_dir("unet").rglob("*") if p.is_file()} == reports

    evaluate = start_lggseg(_cli_args(paths, "evaluate", "train.epochs=1", "mlflow.register=false"))
    _, err = evaluate.communicate(timeout=300)
    assert evaluate.returncode == 0, err
    assert '"registered": false' in (paths.report_dir("unet") / "mlflow_model.json").read_text()


# ------------------------------------------------------------------------------------ kill and resume


def test_a_run_killed_and_resumed_repeats_the_uninterrupted_one(tmp_path, prepared_project):
    """SIGKILL after an epoch, then train.resume=true: the same history as a run never killed (CPU,
    num_workers 0: model, optimizer, loader order and augmentation random state are all restored), and
    each epoch once in MLflow and in train_history.csv."""
    epochs = ("train.epochs=3",)
    straight = _project_with_data(tmp_path, prepared_project, "straight")
    pipeline.train(tiny_config(*epochs, "model.architectures=[unet]"), straight, "unet")

    killed = _project_with_data(tmp_path, prepared_project, "killed")
    process = start_lggseg(_cli_args(killed, "train", *epochs))
    for line in process.stdout:
        if line.startswith("unet epoch 1/3"):
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    completed = torch.load(killed.model_dir("unet") / "last.pt", weights_only=True)["state"]["epoch"]
    assert 1 <= completed < 3
    pipeline.train(tiny_config(*epochs, "model.architectures=[unet]", "train.resume=true"), killed, "unet")

    reference = pd.read_csv(straight.report_dir("unet") / "train_history.csv")
    resumed = pd.read_csv(killed.report_dir("unet") / "train_history.csv")
    assert resumed["epoch"].tolist() == [1, 2, 3]
    columns = ["train_loss", "val_loss", "val_dice_slice", "val_dice_patient"]
    pd.testing.assert_frame_equal(resumed[columns], reference[columns], rtol=1e-5, atol=1e-6)
    run_id = read_run_pointer(killed.model_dir("unet") / "mlflow_run.json")["run_id"]
    steps = [m.step for m in mlflow_client(killed).get_metric_history(run_id, "val/dice_patient")]
    assert sorted(steps) == [1, 2, 3]


def test_epochs_saved_but_not_logged_before_a_kill_are_logged_once_on_resume(tmp_path):
    tracker = Tracker(MlflowConfig(experiment="catch-up"), tmp_path)
    state = TrainingState(epoch=2, history=[{"epoch": 1, "val_dice_patient": 0.5}, {"epoch": 2, "val_dice_patient": 0.6}])
    state.run_id = tracker.start_run("unet", {}, {})
    tracker.log_metrics(state.run_id, {"val/dice_patient": 0.5}, step=1)  # the kill came before step 2
    log_missing_epochs(tracker, state, lr_scheduled=True)
    log_missing_epochs(tracker, state, lr_scheduled=True)  # and again: nothing twice
    history = tracker.client.get_metric_history(state.run_id, "val/dice_patient")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.6)]


# ------------------------------------------------------------------------------------ data at odd paths


def test_non_ascii_paths_run_through_the_data_stages(tmp_path, synthetic_tree):
    source = tmp_path / "Données IRM ü" / "kaggle_3m"
    shutil.copytree(synthetic_tree, source)
    paths = Paths.at(tmp_path / "prøjekt med mellomrom")
    cfg = tiny_config("data.source=local", f"data.local_path={source.parent}")
    for stage in (pipeline.download, pipeline.index, pipeline.split, pipeline.preprocess):
        stage(cfg, paths)
    slices = pd.read_csv(paths.slices_csv)
    assert slices["patient_id"].nunique() == 8 and (paths.processed / "manifest.json").is_file()


def test_kaggle_credentials_are_never_written_anywhere(tmp_path, monkeypatch, capsys):
    secret = "kaggle-secret-4f2a9c"
    monkeypatch.setenv("KAGGLE_USERNAME", "lggseg-user")
    monkeypatch.setenv("KAGGLE_KEY", secret)
    paths = Paths.at(tmp_path / "project")
    assert main(["download", "--params", str(PARAMS), "--root", str(paths.root), "--set", "data.source=kaggle"]) == 1
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert written == []
