"""`train.nproc: 2` on CPU: DistributedDataParallel over gloo, launched by `lggseg train` through torchrun."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import TINY, cli_args, mlflow_client, start_lggseg, tiny_config
from lggseg.core.paths import Paths
from lggseg.model.checkpoint import load_checkpoint
from lggseg.model.devices import resolve_runtime
from lggseg.model.distributed import Group, ShardSampler
from lggseg.training.recipe import build_loss, make_loaders
from lggseg.training.validation import validate

DDP = (*TINY, "model.architectures=[unet]", "train.nproc=2", "train.device=cpu", "train.epochs=2", "train.batch_size=8",
       "train.precision=fp32")


def test_shards_cover_every_item_once_without_padding():
    shards = [list(ShardSampler(11, Group(rank, 3, rank))) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11)) and [len(s) for s in shards] == [4, 4, 3]


@pytest.mark.slow
def test_two_gloo_processes_train_one_run_one_checkpoint_and_exact_val_dice(tmp_path, prepared_project):
    root = tmp_path / "ddp"
    shutil.copytree(prepared_project.processed, root / "data" / "processed")
    paths = Paths.at(root)
    process = start_lggseg(cli_args("train", root, *DDP, arch="unet"))
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    assert "training with 2 processes" in out and ", 2 process(es))" in out

    # one MLflow run, from rank 0, that says it ran on two processes
    client = mlflow_client(paths)
    runs = client.search_runs([client.get_experiment_by_name("lggseg-tests").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["processes"] == "2" and runs[0].data.params["train.nproc"] == "2"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val/dice_patient")) == [1, 2]
    # one checkpoint set, written by rank 0 alone
    assert sorted(p.name for p in paths.model_dir("unet").iterdir()) == [
        "best.pt", "last.pt", "mlflow_run.json", "model.json", "train_summary.json"]

    # the last epoch's val Dice, gathered over two shards, is a single process's validation of last.pt
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    assert history["epoch"].tolist() == [1, 2]
    cfg = tiny_config(*DDP)
    model, checkpoint = load_checkpoint(paths.model_dir("unet") / "last.pt")
    assert checkpoint["state"]["epoch"] == 2
    runtime = resolve_runtime("cpu", "fp32", "auto", "auto")
    _, val_loader = make_loaders(cfg, paths, runtime, torch.Generator())
    single = validate(model.to(memory_format=torch.channels_last), val_loader, build_loss(cfg.train.loss), runtime,
                      cfg.train.threshold)
    last = history.iloc[-1]
    assert last["val_dice_patient"] == pytest.approx(single["val_dice_patient"], abs=1e-9)
    assert last["val_dice_slice"] == pytest.approx(single["val_dice_slice"], abs=1e-9)
    # (val_loss is not compared: bce_dice's Dice term is computed per batch, and the shards batch differently)


def test_torchrun_failure_is_one_clear_error(tmp_path, prepared_project):
    """A worker that fails (here: no processed data) fails the launch with its exit code named."""
    result = subprocess.run([sys.executable, "-m", "lggseg.cli", *cli_args("train", tmp_path, *DDP, arch="unet")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "manifest.json is missing" in result.stderr + result.stdout
    assert "torchrun with 2 processes failed" in result.stderr
