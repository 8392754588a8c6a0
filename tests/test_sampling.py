"""The train sampler (tumour slices oversampled) and the one-cycle schedule, through the real training loop."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.model.devices import resolve_runtime, seed_everything
from lggseg.model.distributed import Group
from lggseg.training.recipe import make_loaders
from lggseg.training.sampling import TumorSampler

HAS_TUMOR = np.arange(3000) % 10 < 2  # 20% tumour slices


def test_tumour_slices_make_up_the_asked_share_of_an_epoch():
    sampler = TumorSampler(HAS_TUMOR, 0.6, seed=1)
    drawn = np.array(list(sampler))
    assert len(drawn) == len(sampler) == len(HAS_TUMOR)
    assert HAS_TUMOR[drawn].mean() == pytest.approx(0.6, abs=0.03)  # binomial sd 0.009
    assert len(np.unique(drawn[HAS_TUMOR[drawn]])) > 450  # not a few tumour slices over and over (600 exist)


def test_draws_repeat_for_an_epoch_and_change_between_epochs():
    first, again = TumorSampler(HAS_TUMOR, 0.5, seed=1), TumorSampler(HAS_TUMOR, 0.5, seed=1)
    first.set_epoch(3), again.set_epoch(3)
    assert list(first) == list(again)  # a resumed run sees the draws the interrupted one would have seen
    again.set_epoch(4)
    assert list(first) != list(again)


def test_ranks_share_one_epoch_of_draws():
    whole = TumorSampler(HAS_TUMOR, 0.5, seed=1)
    ranks = [TumorSampler(HAS_TUMOR, 0.5, seed=1, group=Group(rank=r, world_size=2, local_rank=r)) for r in (0, 1)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(HAS_TUMOR) // 2
    assert sorted(shards[0] + shards[1]) == sorted(list(whole))


@pytest.mark.parametrize("has_tumor", [np.zeros(10, bool), np.ones(10, bool)])
def test_a_split_with_one_kind_of_slice_is_refused(has_tumor):
    with pytest.raises(ValueError, match="train.tumor_fraction needs train slices with and without tumour"):
        TumorSampler(has_tumor, 0.5, seed=1)


@pytest.mark.parametrize("value", [0, 1, -0.2, "many"])
def test_tumor_fraction_outside_0_1_is_named(value):
    from lggseg.core.config import ConfigError

    with pytest.raises(ConfigError, match="train.tumor_fraction must be"):
        tiny_config(f"train.tumor_fraction={value}")


def test_the_train_loader_shows_the_asked_share_of_tumour_slices(prepared_project):
    table = pd.read_csv(prepared_project.processed_split("train") / "slices.csv")
    natural = table["has_tumor"].mean()
    cfg = tiny_config("train.tumor_fraction=0.8", "augment.enabled=false")
    train_loader, _ = make_loaders(cfg, prepared_project, resolve_runtime("cpu"), seed_everything(0))
    shown = torch.cat([batch["mask"].flatten(1).amax(1) for batch in train_loader]).numpy()
    assert natural < 0.6 and shown.mean() > 0.7  # the masks themselves, not the table, say tumour


def test_onecycle_warms_up_then_anneals_and_resumes_only_as_planned(tmp_path, prepared_project):
    root = tmp_path / "onecycle"
    shutil.copytree(prepared_project.processed, root / "data" / "processed")
    paths = Paths.at(root)
    settings = ("model.architectures=[unet]", "train.scheduler=onecycle", "train.tumor_fraction=0.5", "train.lr=0.004")
    pipeline.train(tiny_config("train.epochs=10", *settings), paths, "unet")
    lrs = pd.read_csv(paths.report_dir("unet") / "train_history.csv")["lr"].tolist()
    # the lr at each epoch's end: rising for the first 30% of the steps to train.lr, then falling to ~0
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2] == pytest.approx(0.004, rel=0.05)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.004 / 1000
    with pytest.raises(ValueError, match="planned over .* steps"):
        pipeline.train(tiny_config("train.epochs=12", "train.resume=true", *settings), paths, "unet")
