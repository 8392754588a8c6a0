"""train.resume=true continues a run only under the settings it started with: data, preprocessing, augmentation,
model and optimisation as last.pt recorded them. A change is refused in one line naming each key with its old
and new value; what only decides where, how fast or how long it runs may change and is logged as such."""

from __future__ import annotations

import logging
import shutil

import pandas as pd
import pytest
import torch

from conftest import mlflow_client, tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.tracking.runs import read_run_pointer

ONE_EPOCH = ("model.architectures=[unet]", "train.epochs=1")


@pytest.fixture(scope="module")
def trained_one_epoch(tmp_path_factory, prepared_project) -> Paths:
    """A project whose unet has completed 1 epoch (read-only for the tests: copy it to resume it)."""
    paths = Paths.at(tmp_path_factory.mktemp("resume-guard"))
    shutil.copytree(prepared_project.processed, paths.processed)
    pipeline.train(tiny_config(*ONE_EPOCH), paths, "unet")
    return paths


def _copy(paths: Paths, tmp_path) -> Paths:
    copy = Paths.at(tmp_path / "copy")
    shutil.copytree(paths.root, copy.root)
    return copy


# one member of each class of what shapes a run: (override, how the refusal names it)
REFUSED = [
    ("data.synthetic.seed=8", "data.synthetic.seed 7 -> 8"),  # the data the pipeline is told to use
    ("split.seed=1", "split.seed 42 -> 1"),  # which patients train and validate
    ("preprocess.size=32", "preprocess.size 64 -> 32"),
    ("preprocess.channels=flair", "preprocess.channels all -> flair"),
    ("augment.hflip_p=0.9", "augment.hflip_p 0.5 -> 0.9"),
    ("model.encoder=resnet34", "model.encoder resnet18 -> resnet34"),
    ("train.lr=0.01", "train.lr 0.002 -> 0.01"),
    ("train.batch_size=8", "train.batch_size 16 -> 8"),
    ("train.loss=dice", "train.loss bce_dice -> dice"),
    ("train.weight_decay=0.001", "train.weight_decay 0.0 -> 0.001"),
    ("train.scheduler=plateau", "train.scheduler none -> plateau"),
    ("train.threshold=0.3", "train.threshold 0.5 -> 0.3"),  # the val Dice best.pt is chosen by
]


@pytest.mark.parametrize("override, named", REFUSED, ids=[o for o, _ in REFUSED])
def test_a_changed_setting_is_refused_naming_old_and_new_value(trained_one_epoch, override, named):
    last = trained_one_epoch.model_dir("unet") / "last.pt"
    before = last.read_bytes()
    with pytest.raises(ValueError) as refused:
        pipeline.train(tiny_config(*ONE_EPOCH, "train.epochs=2", "train.resume=true", override), trained_one_epoch, "unet")
    message = str(refused.value)
    assert named in message and "\n" not in message, message
    assert "train.resume: false" in message and "old value" in message, message
    assert last.read_bytes() == before  # nothing trained, nothing written
    history = pd.read_csv(trained_one_epoch.report_dir("unet") / "train_history.csv")
    assert history["epoch"].tolist() == [1]


def test_several_changes_are_named_in_one_line(trained_one_epoch):
    with pytest.raises(ValueError) as refused:
        pipeline.train(tiny_config(*ONE_EPOCH, "train.resume=true", "train.lr=0.01", "augment.enabled=false"),
                       trained_one_epoch, "unet")
    message = str(refused.value)
    assert "augment.enabled true -> false" in message and "train.lr 0.002 -> 0.01" in message
    assert "--set augment.enabled=true" in message and "--set train.lr=0.002" in message, message


def test_other_data_under_the_same_params_is_refused(trained_one_epoch, tmp_path):
    """data/processed re-made from other scans while params.yaml kept its values: the fingerprint tells."""
    paths = _copy(trained_one_epoch, tmp_path)
    other = Paths.at(tmp_path / "other-data")
    cfg = tiny_config("data.synthetic.seed=8")
    for stage in (pipeline.download, pipeline.index, pipeline.split, pipeline.preprocess):
        stage(cfg, other)
    shutil.rmtree(paths.processed)
    shutil.copytree(other.processed, paths.processed)
    with pytest.raises(ValueError, match=r"data/processed \(fingerprint\) \w+ -> \w+.*train\.resume: false"):
        pipeline.train(tiny_config(*ONE_EPOCH, "train.epochs=2", "train.resume=true"), paths, "unet")


def test_allowed_changes_resume_and_are_logged_as_what_they_are(trained_one_epoch, tmp_path, caplog):
    paths = _copy(trained_one_epoch, tmp_path)
    with caplog.at_level(logging.INFO, logger="lggseg.training"):
        pipeline.train(tiny_config(*ONE_EPOCH, "train.epochs=2", "train.resume=true", "train.early_stopping_patience=3",
                                   "train.device=cpu", "train.memory_format=contiguous"), paths, "unet")
    assert "changed on resume (allowed): train.epochs 1 -> 2" in caplog.text
    assert "train.early_stopping_patience 0 -> 3" in caplog.text and "train.device auto -> cpu" in caplog.text
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    assert history["epoch"].tolist() == [1, 2]
    run = mlflow_client(paths).get_run(read_run_pointer(paths.model_dir("unet") / "mlflow_run.json")["run_id"])
    assert run.data.tags["resumed.train.epochs"] == "2" and run.data.params["train.lr"] == "0.002"
    assert "resumed.train.lr" not in run.data.tags
    last = torch.load(paths.model_dir("unet") / "last.pt", weights_only=True)
    assert last["settings"]["train.epochs"] == 2 and last["settings"]["train.lr"] == 0.002  # what it ran with now


def test_a_cosine_schedule_cannot_stretch_to_more_epochs(tmp_path, prepared_project):
    """Like onecycle (RELIABILITY case 34): the cosine curve is planned over train.epochs; loading its state
    would keep the old plan while the params say otherwise."""
    paths = Paths.at(tmp_path)
    shutil.copytree(prepared_project.processed, paths.processed)
    pipeline.train(tiny_config(*ONE_EPOCH, "train.scheduler=cosine"), paths, "unet")
    with pytest.raises(ValueError, match=r"train.scheduler=cosine planned over 1 epochs, now 2"):
        pipeline.train(tiny_config(*ONE_EPOCH, "train.scheduler=cosine", "train.epochs=2", "train.resume=true"), paths, "unet")


def test_a_new_training_removes_the_previous_summary_and_keeps_the_last_good_model(trained_one_epoch, tmp_path):
    """A new run's best.pt never sits beside the previous run's train_summary.json (evaluate would take them
    for one run); a new run that fails before its first checkpoint keeps the previous run's model."""
    from lggseg.training.divergence import TrainingDiverged

    paths = _copy(trained_one_epoch, tmp_path)
    model_dir = paths.model_dir("unet")
    good = (model_dir / "best.pt").read_bytes()
    assert (model_dir / "train_summary.json").is_file()
    with pytest.raises(TrainingDiverged):
        pipeline.train(tiny_config(*ONE_EPOCH, "train.lr=1e30"), paths, "unet")
    assert not (model_dir / "train_summary.json").exists()
    assert (model_dir / "best.pt").read_bytes() == good
    with pytest.raises(FileNotFoundError, match="training of unet did not finish"):
        pipeline.evaluate(tiny_config(*ONE_EPOCH), paths, "unet")
