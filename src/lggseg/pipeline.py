"""One function per DVC stage: read inputs, call the library, write outputs. The CLI and
`stages/<name>.py` both call these."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence

import pandas as pd

from lggseg.core.atomic import write_csv, write_json
from lggseg.core.config import Config, ConfigError
from lggseg.core.paths import SPLITS, Paths
from lggseg.data.acquire import acquire
from lggseg.data.dataset_layouts import index_dataset
from lggseg.data.layout import detect_layout
from lggseg.data.preprocess import preprocess_dataset
from lggseg.data.split import make_splits, split_summary

log = logging.getLogger(__name__)


def download(cfg: Config, paths: Paths) -> None:
    dataset = acquire(cfg.data, paths.dataset, paths.default_archive)
    layout = detect_layout(dataset)
    what = f"{sum(1 for p in dataset.iterdir() if p.is_dir())} patient folders" if layout == "kaggle" else f"{layout} layout"
    print(f"data set ready: {dataset} ({what})")


def index(cfg: Config, paths: Paths) -> None:
    slices, dropped = index_dataset(paths.dataset, cfg.data)
    write_csv(paths.slices_csv, slices)
    write_csv(paths.dropped_csv, dropped)
    print(f"indexed {len(slices)} slices of {slices['patient_id'].nunique()} patients "
          f"({int(slices['has_tumor'].sum())} with tumor) -> {paths.slices_csv}"
          + (f"; dropped {len(dropped)} file(s), see {paths.dropped_csv}" if len(dropped) else ""))


def read_slices(paths: Paths) -> pd.DataFrame:
    if not paths.slices_csv.is_file():
        raise FileNotFoundError(f"{paths.slices_csv} is missing (run the index stage)")
    return pd.read_csv(paths.slices_csv)


def read_splits(paths: Paths) -> dict:
    if not paths.splits_json.is_file():
        raise FileNotFoundError(f"{paths.splits_json} is missing (run the split stage)")
    return json.loads(paths.splits_json.read_text())


def split(cfg: Config, paths: Paths) -> None:
    slices = read_slices(paths)
    splits = make_splits(slices, cfg.split)
    summary = split_summary(slices, splits)
    write_json(paths.splits_json, splits)
    write_json(paths.split_summary, summary)
    print(pd.DataFrame(summary).T.to_string())


def preprocess(cfg: Config, paths: Paths) -> None:
    manifest = preprocess_dataset(read_slices(paths), read_splits(paths), paths.dataset, paths.processed, cfg.preprocess,
                                  data=cfg.data)
    counts = ", ".join(f"{s} {manifest['splits'][s]['slices']}" for s in SPLITS)
    print(f"preprocessed to {cfg.preprocess.size}x{cfg.preprocess.size}x{manifest['in_channels']} uint8 ({counts}) "
          f"-> {paths.processed}")


def check_architecture(cfg: Config, arch: str) -> None:
    """`--arch` must be one of `model.architectures`: DVC generates train@/evaluate@ stages from that
    list, and the run logs it, so an architecture outside it would train with params that lie."""
    if arch not in cfg.model.architectures:
        raise ConfigError(f"--arch {arch} is not in model.architectures ({', '.join(cfg.model.architectures)}); "
                          f"add it there, e.g. --set model.architectures=[{', '.join((*cfg.model.architectures, arch))}]")


def train(cfg: Config, paths: Paths, arch: str, cli_args: Sequence[str] = ()) -> None:
    """Train `arch`. With train.nproc > 1 (or `auto` and several GPUs) this process relaunches
    `lggseg <cli_args>` under torchrun and waits; under torchrun each rank trains its share."""
    check_architecture(cfg, arch)
    from lggseg.core.locks import architecture_lock
    from lggseg.model import distributed
    from lggseg.training.loop import train_architecture  # imports torch: only after the config is known to be good

    if distributed.under_torchrun():
        # the ranks of `lggseg train`'s own launch: the launcher holds the lock; by hand, rank 0 takes it
        own_launch = os.environ.get(distributed.LAUNCHED_BY_LGGSEG) == "1"
        rank0 = os.environ.get("RANK", "0") == "0"
        with contextlib.nullcontext() if own_launch or not rank0 else architecture_lock(paths, arch, "trained"):
            summary = train_architecture(cfg, arch, paths)
        if not rank0 or own_launch:
            return  # the launcher prints the summary
    else:
        nproc = distributed.processes(cfg.train.nproc, cfg.train.device)
        with architecture_lock(paths, arch, "trained"):
            if nproc > 1:
                if not cli_args:
                    raise ConfigError(f"train.nproc={nproc} needs the command line to relaunch under torchrun; "
                                      "run `lggseg train` or torchrun")
                distributed.launch(nproc, cli_args)
                summary = json.loads((paths.model_dir(arch) / "train_summary.json").read_text())
            else:
                summary = train_architecture(cfg, arch, paths)
    print(f"{arch}: best val per-patient Dice {summary['val_dice_patient']:.4f} at epoch {summary['best_epoch']} "
          f"of {summary['epochs_run']} (MLflow run {summary['run_id']}, {summary['processes']} process(es))")


def evaluate(cfg: Config, paths: Paths, arch: str) -> None:
    check_architecture(cfg, arch)
    from lggseg.core.locks import architecture_lock
    from lggseg.evaluation.evaluate import evaluate_architecture

    with architecture_lock(paths, arch, "evaluated"):
        metrics = evaluate_architecture(cfg, arch, paths)
    auc = metrics["detection_auc"]
    print(f"{arch}: test per-patient Dice {metrics['dice_patient_mean']:.4f} (median {metrics['dice_patient_median']:.4f}, "
          f"{metrics['n_patients']} patients), per-slice {metrics['dice_slice_mean']:.4f}, "
          f"detection AUC {'n/a' if auc is None else f'{auc:.3f}'}")


def compare(cfg: Config, paths: Paths) -> None:
    from lggseg.evaluation.champion import compare_architectures

    result = compare_architectures(cfg, paths)
    columns = ["architecture", "val_dice_patient", "dice_patient_mean", "dice_slice_mean", "detection_auc"]
    print(result["table"][columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"champion (best val per-patient Dice): {result['champion']} -> {result['markdown']}")


def check_champion(cfg: Config, paths: Paths) -> None:
    from lggseg.evaluation.champion import check_champion as check

    result = check(cfg, paths)
    print(f"champion {result['architecture']}: reloaded from its checkpoint, {result['slices']} test slices, "
          f"per-patient Dice {result['dice_patient_mean']:.4f} as recorded")
    print(result["registry"])
