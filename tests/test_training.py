import json
import re
import shutil
import signal

import pandas as pd
import pytest
import torch

from conftest import TINY, TRAINED_EPOCHS, cli_args, mlflow_client, start_lggseg, tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.model.devices import resolve_runtime, seed_everything
from lggseg.model.networks import ModelSpec, create_model
from lggseg.tracking.runs import epoch_metrics, read_run_pointer
from lggseg.tracking.store import TrackingError
from lggseg.training.recipe import build_loss, make_loaders
from lggseg.training.validation import validate

# MLflow's names of the per-epoch numbers (sections train/ and val/ in its UI); TINY's lr is constant
# (scheduler none): not logged per epoch, it is the run's train.lr param
EPOCH_METRICS = {"train/loss", "val/loss", "val/dice_slice", "val/dice_patient", "train/epoch_seconds",
                 "train/images_per_second"}


def test_unet_learns_well_above_initialisation(trained_project):
    paths, cfg = trained_project
    runtime = resolve_runtime("cpu")
    generator = seed_everything(cfg.train.seed)
    _, val_loader = make_loaders(cfg, paths, runtime, generator)
    untrained = create_model(ModelSpec("unet", cfg.model.encoder, None, in_channels=3))
    at_init = validate(untrained, val_loader, build_loss(cfg.train.loss), runtime, cfg.train.threshold)
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    # epochs count from 1 everywhere: CSV, MLflow step, train_summary.json, console
    assert len(history) == TRAINED_EPOCHS and history["epoch"].tolist() == list(range(1, TRAINED_EPOCHS + 1))
    best = history["val_dice_patient"].max()
    assert best > 0.6 and best > at_init["val_dice_patient"] + 0.4, (best, at_init)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_model_dir_holds_rebuildable_checkpoints(trained_project):
    paths, cfg = trained_project
    for arch in cfg.model.architectures:
        model_dir = paths.model_dir(arch)
        assert {"best.pt", "last.pt", "model.json", "mlflow_run.json", "train_summary.json"} <= {
            p.name for p in model_dir.iterdir()}
        last = torch.load(model_dir / "last.pt", weights_only=True)
        assert last["state"]["epoch"] == TRAINED_EPOCHS and "optimizer" in last
        assert last["spec"] == {"arch": arch, "encoder": "resnet18", "encoder_weights": None, "in_channels": 3,
                                "classes": 1}
        # what predict needs to prepare new scans travels with the weights
        best = torch.load(model_dir / "best.pt", weights_only=True)
        assert best["preprocess"] == last["preprocess"] == {"size": 64, "channels": "all"}


def test_mlflow_holds_both_runs_with_params_tags_and_epoch_metrics(trained_project):
    paths, cfg = trained_project
    client = mlflow_client(paths)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(cfg.model.architectures) <= set(by_name)
    for arch in cfg.model.architectures:
        run = by_name[arch]
        assert run.info.run_id == read_run_pointer(paths.model_dir(arch) / "mlflow_run.json")["run_id"]
        assert run.data.params["train.epochs"] == str(TRAINED_EPOCHS)
        assert run.data.params["model.encoder"] == "resnet18" and run.data.params["train.loss"] == "bce_dice"
        assert run.data.params["train.architecture"] == arch
        tags = run.data.tags
        assert tags["device"] == "cpu" and tags["data_source"] == "synthetic" and len(tags["data_fingerprint"]) == 16
        assert "git_commit" in tags or not (paths.root / ".git").exists()
        assert EPOCH_METRICS <= set(run.data.metrics) and "train/lr" not in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "val/dice_patient")
        assert sorted(m.step for m in history) == list(range(1, TRAINED_EPOCHS + 1))
        csv = pd.read_csv(paths.report_dir(arch) / "train_history.csv")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(csv["val_dice_patient"].tolist())


def test_a_scheduled_lr_is_logged_per_epoch_and_a_constant_one_is_not():
    row = {"epoch": 3, "train_loss": 0.4, "val_loss": 0.5, "val_dice_slice": 0.6, "val_dice_patient": 0.7, "lr": 1e-3,
           "epoch_seconds": 9.0, "train_images_per_second": 30.0}
    scheduled = epoch_metrics(row, lr_scheduled=True)
    assert scheduled["train/lr"] == 1e-3 and scheduled["val/dice_patient"] == 0.7 and "epoch" not in scheduled
    assert set(epoch_metrics(row, lr_scheduled=False)) == set(scheduled) - {"train/lr"} == EPOCH_METRICS


def test_summary_and_console_name_the_same_best_epoch(trained_project, capsys):
    paths, cfg = trained_project
    summary = json.loads((paths.model_dir("unet") / "train_summary.json").read_text())
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    best = history.loc[history["val_dice_patient"].idxmax()]
    assert summary["best_epoch"] == int(best["epoch"]) and summary["val_dice_patient"] == pytest.approx(best["val_dice_patient"])
    checkpoint = torch.load(paths.model_dir("unet") / "best.pt", weights_only=True)
    assert checkpoint["epoch"] == summary["best_epoch"]
    client = mlflow_client(paths)
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["val/best_epoch"] == summary["best_epoch"]
    steps = {m.step: m.value for m in client.get_metric_history(summary["run_id"], "val/dice_patient")}
    assert steps[summary["best_epoch"]] == pytest.approx(summary["val_dice_patient"])


def test_validation_and_test_data_are_never_augmented(prepared_project):
    cfg = tiny_config()
    train_loader, val_loader = make_loaders(cfg, prepared_project, resolve_runtime("cpu"), seed_everything(0))
    assert train_loader.dataset.transform is not None and val_loader.dataset.transform is None


def test_resume_continues_the_interrupted_run(tmp_path, prepared_project):
    root = tmp_path / "resume"
    shutil.copytree(prepared_project.processed, root / "data" / "processed")
    paths = Paths.at(root)
    pipeline.train(tiny_config("train.epochs=1", "model.architectures=[unet]"), paths, "unet")
    first_run = read_run_pointer(paths.model_dir("unet") / "mlflow_run.json")["run_id"]
    pipeline.train(tiny_config("train.epochs=2", "train.resume=true"), paths, "unet")
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert read_run_pointer(paths.model_dir("unet") / "mlflow_run.json")["run_id"] == first_run
    client = mlflow_client(paths)
    assert sorted(m.step for m in client.get_metric_history(first_run, "train/loss")) == [1, 2]
    run = client.get_run(first_run)
    assert run.data.params["train.epochs"] == "1" and run.data.tags["resumed.train.epochs"] == "2"
    with pytest.raises(ValueError, match="set train.resume: false"):
        pipeline.train(tiny_config("train.epochs=3", "train.resume=true", "model.encoder=resnet34"), paths, "unet")


def test_unreachable_tracking_server_fails_before_training(tmp_path, prepared_project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:hunter2@127.0.0.1:9")
    paths = Paths.at(tmp_path)
    shutil.copytree(prepared_project.processed, paths.processed)
    with pytest.raises(TrackingError, match="not reachable") as err:
        pipeline.train(tiny_config(), paths, "unet")
    assert "hunter2" not in str(err.value)
    assert not (paths.model_dir("unet") / "last.pt").exists()


def test_leaky_processed_data_stops_training(tmp_path, prepared_project):
    paths = Paths.at(tmp_path)
    shutil.copytree(prepared_project.processed, paths.processed)
    val = pd.read_csv(paths.processed_split("val") / "slices.csv")
    train = pd.read_csv(paths.processed_split("train") / "slices.csv")
    val.loc[0, "patient_id"] = train.loc[0, "patient_id"]
    val.to_csv(paths.processed_split("val") / "slices.csv", index=False)
    with pytest.raises(Exception, match="patient leakage"):
        pipeline.train(tiny_config(), paths, "unet")


def test_early_stopping_counts_epochs_without_a_new_best():
    from lggseg.training.state import TrainingState

    state = TrainingState()
    outcomes = []
    for epoch, dice in enumerate([0.2, 0.5, 0.5, 0.4, 0.6, 0.1, 0.1], start=1):
        outcomes.append((state.record(epoch, dice), state.should_stop(patience=2), state.should_stop(patience=0)))
    assert [o[0] for o in outcomes] == [True, True, False, False, True, False, False]
    assert [o[1] for o in outcomes] == [False, False, False, True, False, False, True]
    assert not any(o[2] for o in outcomes)
    assert (state.best_dice, state.best_epoch) == (0.6, 5)


def test_ctrl_c_prints_one_line_exits_130_and_marks_the_run_killed(tmp_path, prepared_project):
    """A real `lggseg train` process gets SIGINT (what Ctrl-C sends) once its first epoch is saved."""
    root = tmp_path / "interrupted"
    shutil.copytree(prepared_project.processed, root / "data" / "processed")
    process = start_lggseg(cli_args("train", root, *TINY, "train.epochs=50", arch="unet"))
    try:
        for line in process.stdout:  # wait until epoch 1 is done and saved
            if line.startswith("unet epoch 1/50"):
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    message = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(message) == 1 and "resume with train.resume=true" in message[0], stderr
    assert re.search(r"interrupted in epoch [2-9]\d* \(\d+ epoch\(s\) completed and saved", message[0]), message
    run_id = read_run_pointer(root / "models" / "unet" / "mlflow_run.json")["run_id"]
    assert mlflow_client(Paths.at(root)).get_run(run_id).info.status == "KILLED"
    assert torch.load(root / "models" / "unet" / "last.pt", weights_only=True)["state"]["epoch"] >= 1
