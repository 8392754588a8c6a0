"""The training loop: train_architecture runs the epochs (train step, validation, best/last checkpoints,
early stopping) of one architecture and writes its history and summary."""

from __future__ import annotations

import logging
import sys
import time

import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lggseg.core.atomic import write_csv, write_json
from lggseg.core.config import Config, TrainConfig
from lggseg.core.paths import Paths
from lggseg.data.preprocess import processed_manifest
from lggseg.data.provenance import training_data
from lggseg.model import distributed
from lggseg.model.checkpoint import save_checkpoint
from lggseg.model.devices import Runtime, resolve_device, resolve_runtime, seed_everything
from lggseg.model.distributed import Group
from lggseg.model.networks import ModelSpec, create_model
from lggseg.tracking.runs import Tracker, epoch_metrics
from lggseg.training.divergence import check_finite_epoch, check_running_loss
from lggseg.training.recipe import build_loss, build_optimizer, build_scheduler, make_loaders
from lggseg.training.resume import load_resumable, restore, resume_state, run_settings
from lggseg.training.run_record import log_missing_epochs, run_outcome, run_params, run_tags, start_run
from lggseg.training.state import TrainingState
from lggseg.training.validation import validate

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_dice_slice", "val_dice_patient", "lr", "epoch_seconds",
    "train_images_per_second",
]
LOSS_CHECK_EVERY = 25  # batches between host syncs of the running loss (progress bar, divergence check)


def training_runtime(tcfg: TrainConfig) -> tuple[Runtime, Group]:
    """The runtime of this process and its place in a torchrun job (rank 0 of 1 outside one)."""
    group = distributed.start(resolve_device(tcfg.device))
    index = group.local_rank if group.distributed and tcfg.device in ("auto", "cuda") else None
    runtime = resolve_runtime(tcfg.device, tcfg.precision, tcfg.memory_format, tcfg.pin_memory, index=index)
    return runtime, group


def train_architecture(cfg: Config, arch: str, paths: Paths) -> dict:
    """Train one architecture; writes models/<arch>/ and reports/arch/<arch>/train_history.csv.
    Under torchrun every rank calls this; rank 0 alone writes files and logs to MLflow."""
    runtime, group = training_runtime(cfg.train)
    try:
        return _train(cfg, arch, paths, runtime, group)
    finally:
        distributed.stop(group)


def _train(cfg: Config, arch: str, paths: Paths, runtime: Runtime, group: Group) -> dict:
    tcfg = cfg.train
    manifest = processed_manifest(paths)
    spec = ModelSpec(arch=arch, encoder=cfg.model.encoder, encoder_weights=cfg.model.encoder_weights,
                     in_channels=int(manifest["in_channels"]))
    # travels with the weights, so `lggseg predict` prepares new scans as this model was trained
    preprocess = {"size": int(manifest["size"]), "channels": str(manifest["channels"])}
    trained_on = training_data(manifest)  # so does what it was trained on: predict and the registry show it
    model_dir = paths.model_dir(arch)
    main = group.is_main
    if main:
        model_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = model_dir / "last.pt", model_dir / "best.pt"

    # rank 0 logs; it fails here, before any epoch, if the store is unreachable
    tracker = Tracker(cfg.mlflow, paths.root) if main else None
    generator = seed_everything(tcfg.seed)
    train_loader, val_loader = make_loaders(cfg, paths, runtime, generator, group)
    transform = train_loader.dataset.transform

    settings = run_settings(cfg, manifest, group)
    if tcfg.resume and last_path.is_file():
        model, checkpoint = load_resumable(last_path, spec, settings, arch)
        state = TrainingState(**checkpoint["state"])
    else:
        model, checkpoint, state = create_model(spec), None, TrainingState(history=[])
    model = _on_device(model, runtime)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, len(train_loader))
    batch_scheduler = scheduler if tcfg.scheduler == "onecycle" else None
    lr_scheduled = scheduler is not None  # a constant lr is the run's train.lr param, not a per-epoch metric
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.grad_scaler)
    forward = _training_forward(model, runtime, group, tcfg.compile)
    if checkpoint is not None:
        restore(checkpoint, optimizer, scheduler, generator, transform, last_path)
    loss_fn = build_loss(tcfg.loss)
    history_path = paths.report_dir(arch) / "train_history.csv"
    if main:  # every check passed: from here on this folder holds this run
        _clear_previous_summary(model_dir)
        start_run(tracker, cfg, arch, model_dir, state,
                  run_params(cfg, arch, len(train_loader.dataset), len(val_loader.dataset)),
                  run_tags(cfg, arch, paths.root, runtime, group, trained_on))
        write_json(model_dir / "model.json", spec.to_dict())
        if state.history:  # a resumed run: what a kill left unlogged after last.pt was written
            log_missing_epochs(tracker, state, lr_scheduled)
            write_csv(history_path, pd.DataFrame(state.history, columns=HISTORY_COLUMNS))

    with run_outcome(arch, state, tracker, last_path):
        while state.epoch < tcfg.epochs:
            epoch = state.epoch + 1
            row = run_epoch(model, forward, train_loader, val_loader, loss_fn, optimizer, scaler, runtime, tcfg,
                            epoch, group, batch_scheduler)
            check_finite_epoch(model, row, epoch, tcfg)
            state.history.append(row)
            improved = state.record(epoch, row["val_dice_patient"])  # the same on every rank: val is gathered
            if improved and main:
                save_checkpoint(best_path, model, spec, preprocess=preprocess, trained_on=trained_on, epoch=epoch,
                                val_dice_patient=row["val_dice_patient"])
            if scheduler is not None and batch_scheduler is None:
                scheduler.step(row["val_dice_patient"]) if tcfg.scheduler == "plateau" else scheduler.step()
            state.epoch = epoch
            if main:
                save_checkpoint(last_path, model, spec, preprocess=preprocess, trained_on=trained_on,
                                state=state.__dict__, settings=settings,
                                **resume_state(optimizer, scheduler, generator, transform))
                write_csv(history_path, pd.DataFrame(state.history, columns=HISTORY_COLUMNS))
                print(_epoch_line(arch, row, tcfg.epochs, improved), flush=True)
                # logged after last.pt holds the epoch: a kill in between (or a tracking store that stops
                # answering) is caught up on resume, so each epoch reaches MLflow exactly once
                tracker.log_metrics(state.run_id, epoch_metrics(row, lr_scheduled), step=epoch)
            if state.should_stop(tcfg.early_stopping_patience):
                if main:
                    print(f"{arch}: early stop after {state.epoch} epochs (no val improvement for "
                          f"{tcfg.early_stopping_patience})", flush=True)
                break
        if main:
            tracker.log_metrics(state.run_id, {"val/best_dice_patient": state.best_dice, "val/best_epoch": state.best_epoch})

    summary = {
        "architecture": arch, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
        "val_dice_patient": state.best_dice, "val_dice_slice": state.history[state.best_epoch - 1]["val_dice_slice"],
        "device": runtime.name, "run_id": state.run_id, "data_fingerprint": manifest["fingerprint"], "trained_on": trained_on,
        "processes": group.world_size, **{k: v for k, v in runtime.describe().items() if k != "device"},
    }
    if main:
        write_json(model_dir / "train_summary.json", summary)
    return summary


def _on_device(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _training_forward(model: torch.nn.Module, runtime: Runtime, group: Group, compile: bool) -> torch.nn.Module:
    """What the training step calls: the model, wrapped for DDP and/or torch.compile; `model` itself is what
    is validated and saved."""
    forward = model
    if group.distributed:
        forward = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if compile:
        forward = torch.compile(forward)
    return forward


def _clear_previous_summary(model_dir) -> None:
    """A new run must not leave another run's summary beside its own best.pt: the previous train_summary.json
    goes before this run writes a checkpoint (it is written again when this run finishes, and evaluate refuses
    a folder without one). The previous checkpoints stay until this run's own replace them (atomically), so a
    run that fails before its first epoch keeps the last good model."""
    summary = model_dir / "train_summary.json"
    if summary.is_file():
        summary.unlink()
        log.info("removed the previous run's %s", summary)


def run_epoch(model, forward, train_loader, val_loader, loss_fn, optimizer, scaler, runtime: Runtime,
              cfg: TrainConfig, epoch: int, group: Group = distributed.SINGLE, batch_scheduler=None) -> dict:
    """One epoch: train through `forward` (the model, or its DDP / compiled wrapper), then validate `model`.
    The running loss stays on the device; the host reads it every LOSS_CHECK_EVERY batches only."""
    started = time.perf_counter()
    model.train()
    if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler, TumorSampler: draws per (seed, epoch)
        train_loader.sampler.set_epoch(epoch)
    running, seen = torch.zeros((), dtype=torch.float64, device=runtime.device), 0
    bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None if group.is_main else True,
               file=sys.stderr)
    for batch_index, batch in enumerate(bar, start=1):
        images, masks = runtime.to_device(batch["image"]), runtime.to_device(batch["mask"])
        running += train_step(forward, images, masks, loss_fn, optimizer, scaler, runtime) * len(images)
        if batch_scheduler is not None:
            batch_scheduler.step()
        seen += len(images)
        if batch_index % LOSS_CHECK_EVERY == 0 or batch_index == len(train_loader):
            check_running_loss(running.item() / seen, epoch, batch_index, cfg)
            bar.set_postfix(loss=f"{running.item() / seen:.4f}")
    train_seconds = time.perf_counter() - started
    total_loss, seen_all = distributed.all_sum([running.item(), seen], group, runtime.device)
    val = validate(model, val_loader, loss_fn, runtime, cfg.threshold, group)
    return {
        "epoch": epoch, "train_loss": total_loss / max(seen_all, 1), **val,
        "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - started,
        "train_images_per_second": seen_all / max(train_seconds, 1e-9),
    }


def train_step(forward, images: torch.Tensor, masks: torch.Tensor, loss_fn, optimizer, scaler, runtime: Runtime) -> torch.Tensor:
    """One optimisation step on a batch already on the device; returns the loss, detached, on the device
    (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with runtime.autocast():
        logits = forward(images)
    loss = loss_fn(logits.float(), masks)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _epoch_line(arch: str, row: dict, epochs: int, improved: bool) -> str:
    return (f"{arch} epoch {row['epoch']}/{epochs}: train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val Dice slice {row['val_dice_slice']:.3f}  patient {row['val_dice_patient']:.3f}  "
            f"{row['train_images_per_second']:.1f} img/s  {row['epoch_seconds']:.1f}s" + ("  *best" if improved else ""))
