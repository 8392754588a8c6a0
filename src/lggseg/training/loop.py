"""The training loop: epochs, validation with per-patient Dice, best/last checkpoints, resume."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass

import pandas as pd
import segmentation_models_pytorch as smp
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from lggseg.core.atomic import write_csv, write_json
from lggseg.core.config import Config, TrainConfig, param_text
from lggseg.data.augment import build_augmentation
from lggseg.data.dataset import SliceDataset, seed_worker
from lggseg.data.preprocess import processed_manifest
from lggseg.data.split import check_no_leak
from lggseg.core.diskspace import DiskSpaceError
from lggseg.model import distributed
from lggseg.model.devices import Runtime, resolve_device, resolve_runtime, seed_everything
from lggseg.model.distributed import Group, ShardSampler
from lggseg.model.inference import predict_batches
from lggseg.metrics.segmentation import SliceCountAccumulator, segmentation_summary
from lggseg.model.networks import ModelSpec, create_model, load_checkpoint, save_checkpoint
from lggseg.core.paths import Paths
from lggseg.training.sampling import TumorSampler
from lggseg.core.stop_signals import StopRequested, signal_name, stop_quietly_in_loader_worker, stop_signal_of
from lggseg.tracking.runs import (Tracker, TrackingError, environment_tags, git_state, params_changed_tag, run_name,
                             save_run_pointer)

log = logging.getLogger(__name__)

TRAIN_SECTIONS = ("split", "preprocess", "augment", "model", "train")  # what a run depends on (split: which patients)
HISTORY_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_dice_slice", "val_dice_patient", "lr", "epoch_seconds",
    "train_images_per_second",
]
LOSS_CHECK_EVERY = 25  # batches between host syncs of the running loss (progress bar, divergence check)
ONECYCLE_WARMUP = 0.3  # share of the steps train.scheduler=onecycle spends warming up (torch's default)

# What shapes a run: these sections of params (which data and patients, its preprocessing, the augmentation, the
# model, the optimisation), plus the data/processed fingerprint and the number of processes. last.pt records
# them; train.resume=true refuses to continue under any other value, except for the keys below.
RESUME_SECTIONS = ("data", "split", "preprocess", "augment", "model", "train")
RESUME_MAY_CHANGE = frozenset({
    "train.resume",
    "train.epochs",  # continue for more (or fewer) epochs; not when the schedule is planned over them (cosine, onecycle)
    "train.early_stopping_patience",  # when to stop, not what is learned
    # where and how fast it runs, not what it computes (train.processes, the resolved count, must match)
    "train.device", "train.num_workers", "train.pin_memory", "train.compile", "train.memory_format", "train.nproc",
    "model.architectures",  # the list for the pipeline; the architecture trained is checked through the model spec
})


@dataclass
class TrainingState:
    """Where a training stands. Epochs count from 1 everywhere (console, train_history.csv, MLflow
    step, train_summary.json, figures); `epoch` is the number of epochs completed so far."""

    epoch: int = 0
    best_dice: float = -math.inf
    best_epoch: int = 0  # 0: no epoch completed yet
    epochs_without_improvement: int = 0
    history: list[dict] | None = None
    run_id: str | None = None

    def record(self, epoch: int, val_dice_patient: float) -> bool:
        """Note epoch `epoch`'s val Dice; True when it is a new best (strictly better)."""
        if val_dice_patient > self.best_dice:
            self.best_dice, self.best_epoch, self.epochs_without_improvement = val_dice_patient, epoch, 0
            return True
        self.epochs_without_improvement += 1
        return False

    def should_stop(self, patience: int) -> bool:
        """Early stopping: `patience` epochs in a row without a new best (0 disables it)."""
        return patience > 0 and self.epochs_without_improvement >= patience


class TrainingInterrupted(StopRequested):
    """Ctrl-C, SIGTERM or SIGHUP during training; the message says where it stopped and how to resume."""


class ResumeMismatch(ValueError):
    """train.resume=true with settings that differ from what last.pt was trained with."""


class TrainingDiverged(RuntimeError):
    """The loss, the weights or the model's outputs stopped being finite numbers."""


def build_loss(name: str) -> torch.nn.Module:
    """bce | dice | bce_dice, from smp.losses, all on logits."""
    bce = smp.losses.SoftBCEWithLogitsLoss()
    if name == "bce":
        return bce
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    if name == "dice":
        return dice

    class BceDice(torch.nn.Module):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return bce(logits, target) + dice(logits, target)

    return BceDice()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The lr schedule; `onecycle` steps every batch (ONECYCLE_WARMUP of the run rising to train.lr,
    then annealing to ~0), the others once per epoch."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=ONECYCLE_WARMUP)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    return None


def make_loaders(cfg: Config, paths: Paths, runtime: Runtime, generator: torch.Generator,
                 group: Group = distributed.SINGLE) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled, augmented) and val loaders. Under DDP each rank gets its share: train through
    torch's DistributedSampler (train.batch_size is per process), val through a ShardSampler. With
    train.tumor_fraction the train slices are drawn by a TumorSampler instead (one process or several)."""
    transform = build_augmentation(cfg.augment, seed=cfg.train.seed + group.rank)
    train_set = SliceDataset(paths.processed, "train", transform=transform)
    val_set = SliceDataset(paths.processed, "val")
    check_no_leak({"train": train_set.patient_ids, "val": val_set.patient_ids})
    if len(val_set) == 0:
        raise ValueError("the val split is empty: model selection needs validation patients (split.val_fraction > 0)")
    common = dict(
        num_workers=cfg.train.num_workers, worker_init_fn=_init_loader_worker, persistent_workers=cfg.train.num_workers > 0,
        **runtime.loader_options(),
    )
    drop_last = len(train_set) > cfg.train.batch_size * group.world_size
    if cfg.train.tumor_fraction is not None:
        sampler = TumorSampler(train_set.table["has_tumor"].astype(bool).to_numpy(), cfg.train.tumor_fraction,
                               seed=cfg.train.seed, group=group)
    elif group.distributed:
        sampler = DistributedSampler(train_set, num_replicas=group.world_size, rank=group.rank, shuffle=True,
                                     seed=cfg.train.seed, drop_last=drop_last)
    else:
        sampler = RandomSampler(train_set, generator=generator)
    # the generator also seeds the workers' augmentation
    train_loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=drop_last,
                              generator=generator, **common)
    val_loader = DataLoader(val_set, batch_size=cfg.train.batch_size, sampler=ShardSampler(len(val_set), group),
                            **common)
    return train_loader, val_loader


def _init_loader_worker(worker_id: int) -> None:
    """worker_init_fn: seeded as seed_worker does; a stop signal to the process group ends it quietly."""
    seed_worker(worker_id)
    stop_quietly_in_loader_worker()


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
    model_dir = paths.model_dir(arch)
    main = group.is_main
    if main:
        model_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = model_dir / "last.pt", model_dir / "best.pt"

    # rank 0 logs; it fails here, before any epoch, if the store is unreachable
    tracker = Tracker(cfg.mlflow, paths.root) if main else None
    generator = seed_everything(tcfg.seed)
    train_loader, val_loader = make_loaders(cfg, paths, runtime, generator, group)

    state = TrainingState(history=[])
    settings = run_settings(cfg, manifest, group)
    if tcfg.resume and last_path.is_file():
        model, checkpoint = load_checkpoint(last_path)
        allowed = check_resumable(checkpoint.get("settings"), settings, last_path)
        if checkpoint["spec"] != spec.to_dict():  # what a last.pt without recorded settings can still be checked by
            raise ResumeMismatch(f"{last_path} was trained with {checkpoint['spec']}, not {spec.to_dict()}; "
                                 "set train.resume: false to start over")
        state = TrainingState(**checkpoint["state"])
        log.info("resuming %s at epoch %d%s", arch, state.epoch + 1,
                 f"; changed on resume (allowed): {_changes_text(allowed)}" if allowed else "")
    else:
        model = create_model(spec)
        checkpoint = None
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scheduler = build_scheduler(optimizer, tcfg, len(train_loader))
    batch_scheduler = scheduler if tcfg.scheduler == "onecycle" else None
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.grad_scaler)
    forward = model  # what the training step calls; `model` itself is what is validated and saved
    if group.distributed:
        forward = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if tcfg.compile:
        forward = torch.compile(forward)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler"):
            _check_resumable_schedule(checkpoint["scheduler"], scheduler, last_path)
            scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        generator.set_state(checkpoint["loader_rng"])
        _set_augmentation_rng(train_loader.dataset.transform, checkpoint.get("augmentation_rng"))
    loss_fn = build_loss(tcfg.loss)
    if main:  # every check passed: from here on this folder holds this run
        _clear_previous_summary(model_dir)

    tags = {
        **git_state(paths.root), **environment_tags(), **params_changed_tag(cfg, paths.root), "architecture": arch, "data_fingerprint": manifest["fingerprint"],
        "device": runtime.name, "data_source": cfg.data.source, "stage": "train", "processes": str(group.world_size),
        **{f"runtime.{k}": v for k, v in runtime.describe().items() if k != "device"},
    }
    params = {**cfg.flat(TRAIN_SECTIONS), "data.source": cfg.data.source, "train.architecture": arch,
              "data.train_slices": len(train_loader.dataset), "data.val_slices": len(val_loader.dataset)}
    history_path = paths.report_dir(arch) / "train_history.csv"
    if main:
        # under this folder's lock: a RUNNING run of it, other than the one resumed here, lost its process
        tracker.end_interrupted_run(model_dir / "mlflow_run.json", "trained", resuming=state.run_id)
        state.run_id = tracker.start_run(run_name(arch), params, tags, run_id=state.run_id)
        save_run_pointer(model_dir / "mlflow_run.json", state.run_id, tracker.uri, cfg.mlflow.experiment)
        write_json(model_dir / "model.json", spec.to_dict())
        if state.history:  # a resumed run: what a kill left unlogged after last.pt was written
            _log_missing_epochs(tracker, state)
            write_csv(history_path, pd.DataFrame(state.history, columns=HISTORY_COLUMNS))

    status = "FAILED"
    try:
        while state.epoch < tcfg.epochs:
            epoch = state.epoch + 1
            row = _run_epoch(model, forward, train_loader, val_loader, loss_fn, optimizer, scaler, runtime, tcfg,
                             epoch, group, batch_scheduler)
            _check_finite_epoch(model, row, epoch, tcfg)
            state.history.append(row)
            improved = state.record(epoch, row["val_dice_patient"])  # the same on every rank: val is gathered
            if improved and main:
                save_checkpoint(best_path, model, spec, preprocess=preprocess, epoch=epoch,
                                val_dice_patient=row["val_dice_patient"])
            if scheduler is not None and batch_scheduler is None:
                scheduler.step(row["val_dice_patient"]) if tcfg.scheduler == "plateau" else scheduler.step()
            state.epoch = epoch
            if main:
                save_checkpoint(
                    last_path, model, spec, preprocess=preprocess, state=state.__dict__, settings=settings,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler is not None else None,
                    torch_rng=torch.get_rng_state(), loader_rng=generator.get_state(),
                    augmentation_rng=_augmentation_rng(train_loader.dataset.transform),
                )
                write_csv(history_path, pd.DataFrame(state.history, columns=HISTORY_COLUMNS))
                print(_epoch_line(arch, row, tcfg.epochs, improved), flush=True)
                # logged after last.pt holds the epoch: a kill in between (or a tracking store that stops
                # answering) is caught up on resume, so each epoch reaches MLflow exactly once
                tracker.log_metrics(state.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if state.should_stop(tcfg.early_stopping_patience):
                if main:
                    print(f"{arch}: early stop after {state.epoch} epochs (no val improvement for "
                          f"{tcfg.early_stopping_patience})", flush=True)
                break
        if main:
            tracker.log_metrics(state.run_id, {"best_val_dice_patient": state.best_dice, "best_epoch": state.best_epoch})
        status = "FINISHED"
    except TrainingDiverged as exc:
        kept = (f"best.pt and last.pt keep the last finite state (epoch {state.epoch})" if state.epoch
                else "nothing was saved")
        if main:
            with contextlib.suppress(TrackingError):  # the divergence is the news; a store failure is logged
                tracker.set_tags(state.run_id, {"failure_reason": str(exc)[:5000]})
        raise TrainingDiverged(f"{arch}: {exc}; {kept}") from None
    except KeyboardInterrupt as exc:
        status = "KILLED"
        signum = stop_signal_of(exc)
        how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal_name(signum)}"
        done = f"{state.epoch} epoch(s) completed and saved in {last_path}" if state.epoch else "no epoch completed"
        raise TrainingInterrupted(signum, f"{arch}: {how} in epoch {state.epoch + 1} ({done}); "
                                          "resume with train.resume=true") from None
    except DiskSpaceError as exc:  # a checkpoint, the history or the summary did not fit: the run ends FAILED
        raise DiskSpaceError(_disk_full_message(arch, exc, state, tracker if main else None, last_path),
                             exc.path) from None
    except TrackingError as exc:
        status = None  # the store does not answer: marking the run would wait as long again
        raise TrackingError(_store_lost_message(arch, exc, state, last_path)) from None
    finally:
        if main and status is not None:
            _end_run(tracker, state, status, last_path, arch)

    summary = {
        "architecture": arch, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
        "val_dice_patient": state.best_dice, "val_dice_slice": state.history[state.best_epoch - 1]["val_dice_slice"],
        "device": runtime.name, "run_id": state.run_id, "data_fingerprint": manifest["fingerprint"],
        "processes": group.world_size, **{k: v for k, v in runtime.describe().items() if k != "device"},
    }
    if main:
        write_json(model_dir / "train_summary.json", summary)
    return summary


def run_settings(cfg: Config, manifest: dict, group: Group = distributed.SINGLE) -> dict:
    """What shapes this run, as last.pt records it: `{"train.lr": 0.0001, ..., "data.fingerprint": ...}`."""
    return {**cfg.flat(RESUME_SECTIONS), "data.fingerprint": str(manifest["fingerprint"]),
            "train.processes": group.world_size}


def check_resumable(recorded: dict | None, now: dict, last_path) -> dict[str, tuple]:
    """Refuse (ResumeMismatch, one line naming every key with its old and new value) a resume whose settings
    differ from what last.pt was trained with, but for RESUME_MAY_CHANGE; returns those allowed changes."""
    if recorded is None:
        log.warning("%s was written before lggseg recorded the settings of a run: only its model is checked "
                    "against the params now", last_path)
        return {}
    changed = {k: (recorded[k], v) for k, v in now.items() if k in recorded and recorded[k] != v}
    refused = {k: change for k, change in changed.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        back = " ".join(f"--set {k}={param_text(old)}" for k, (old, _) in refused.items() if not k.startswith(
            ("data.fingerprint", "train.processes")))
        raise ResumeMismatch(
            f"{last_path} was trained with other settings, and resuming would mix two runs: {_changes_text(refused)}. "
            "Put the old value(s) back" + (f" ({back})" if back else "") + ", or set train.resume: false to start over")
    return {k: change for k, change in changed.items() if k in RESUME_MAY_CHANGE}


def _changes_text(changes: dict[str, tuple]) -> str:
    """`preprocess.size 32 -> 64, train.lr 0.0001 -> 0.01`; the data fingerprint names data/processed."""
    names = {"data.fingerprint": "data/processed (fingerprint)", "train.processes": "processes (train.nproc)"}
    return ", ".join(f"{names.get(k, k)} {param_text(old)} -> {param_text(new)}" for k, (old, new) in changes.items())


def _clear_previous_summary(model_dir) -> None:
    """A new run must not leave another run's summary beside its own best.pt: the previous train_summary.json
    goes before this run writes a checkpoint (it is written again when this run finishes, and evaluate refuses
    a folder without one). The previous checkpoints stay until this run's own replace them (atomically), so a
    run that fails before its first epoch keeps the last good model."""
    summary = model_dir / "train_summary.json"
    if summary.is_file():
        summary.unlink()
        log.info("removed the previous run's %s", summary)


def _store_lost_message(arch: str, exc: TrackingError, state: TrainingState, last_path) -> str:
    saved = f"epochs 1-{state.epoch} are saved in {last_path}" if state.epoch else "no epoch was saved"
    return (f"{arch}: training stopped after epoch {state.epoch} because MLflow did not take its record: {exc} "
            f"{saved}; the MLflow run stays RUNNING until it is resumed: when the store answers again, run with "
            "train.resume=true (the epochs it missed are logged then)")


def _disk_full_message(arch: str, exc: DiskSpaceError, state: TrainingState, tracker: Tracker | None,
                       last_path) -> str:
    """The full disk in one line: what is kept, and whether the MLflow run could be given the reason (a store
    on the same full disk cannot take it: the run then stays RUNNING until a resume)."""
    # the write that failed left its target as it was: say what is on disk, not what the loop had reached
    kept = (f"{last_path.name} keeps the last epoch it held (resume with train.resume=true once there is space)"
            if last_path.is_file() else f"no {last_path.name} was saved")
    record = ""
    if tracker is not None and state.run_id:
        try:
            tracker.set_tags(state.run_id, {"failure_reason": str(exc)[:5000]})
        except TrackingError:
            record = (f"; the MLflow run {state.run_id} could not be marked FAILED either (its store cannot be "
                      "written) and stays RUNNING: resume with train.resume=true once there is space")
    return f"{arch}: {exc}; {kept}{record}"


def _end_run(tracker: Tracker, state: TrainingState, status: str, last_path, arch: str) -> None:
    """Mark the run; when the store fails here, a finished training says how to complete its record, and an
    interrupted or failed one keeps its own message (the store's failure is logged)."""
    try:
        tracker.end_run(state.run_id, status=status)
    except TrackingError as exc:
        if status == "FINISHED":
            raise TrackingError(_store_lost_message(arch, exc, state, last_path)) from None
        log.warning("could not mark MLflow run %s %s: %s", state.run_id, status, exc)


def _run_epoch(model, forward, train_loader, val_loader, loss_fn, optimizer, scaler, runtime: Runtime,
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
            _check_running_loss(running.item() / seen, epoch, batch_index, cfg)
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


def _check_resumable_schedule(saved: dict, scheduler, last_path) -> None:
    """One-cycle and cosine schedules are planned over the whole run (onecycle in batches, cosine in epochs):
    they cannot stretch to more epochs or batches (loading the state would keep the old plan silently)."""
    for key, name, unit in (("total_steps", "onecycle", "steps"), ("T_max", "cosine", "epochs")):
        planned, now = saved.get(key), getattr(scheduler, key, None)
        if planned is not None and now is not None and planned != now:
            raise ResumeMismatch(f"{last_path} was trained with train.scheduler={name} planned over {planned} {unit}, "
                                 f"now {now}: resume with the train.epochs, batch size and data it started with, or "
                                 "set train.resume: false to start over")


def _check_running_loss(value: float, epoch: int, batch_index: int, cfg: TrainConfig) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(f"training diverged in epoch {epoch} by batch {batch_index}: the train loss is "
                               f"{value}; lower train.lr (now {cfg.lr:g}), e.g. --set train.lr={cfg.lr / 10:g}")


def validate(model, loader: DataLoader, loss_fn, runtime: Runtime, threshold: float,
             group: Group = distributed.SINGLE) -> dict:
    """Val loss, mean per-slice Dice and mean per-patient (3-D volume) Dice. Under DDP each rank scores
    its shard and the per-slice counts of all ranks are gathered: the same numbers as one process."""
    counts = SliceCountAccumulator()
    total_loss, seen = 0.0, 0
    for logits, probs, batch in predict_batches(model, loader, runtime):
        if not torch.isfinite(logits).all():
            # NaN logits threshold to empty masks, and empty slices score Dice 1: refuse instead of a
            # plausible-looking number
            raise TrainingDiverged("the model outputs non-finite values on the val split")
        total_loss += loss_fn(logits, batch["mask"]).item() * len(logits)
        seen += len(logits)
        counts.add((probs > threshold).long(), batch["mask"].long(), batch["patient_id"], batch["slice"].tolist())
    table = counts.table()
    if group.distributed:
        table = pd.concat(distributed.all_gather(table, group)).sort_values(["patient_id", "slice"], ignore_index=True)
        total_loss, seen = distributed.all_sum([total_loss, seen], group, runtime.device)
    summary = segmentation_summary(table)
    return {"val_loss": total_loss / max(seen, 1), "val_dice_slice": summary["dice_slice_mean"],
            "val_dice_patient": summary["dice_patient_mean"]}


def _check_finite_epoch(model: torch.nn.Module, row: dict, epoch: int, cfg: TrainConfig) -> None:
    """After an epoch, before anything is saved: finite losses and finite weights, or TrainingDiverged."""
    bad = [k for k in ("train_loss", "val_loss") if not math.isfinite(row[k])]
    if not bad and not all(torch.isfinite(p).all() for p in model.parameters()):
        bad = ["weights"]
    if bad:
        raise TrainingDiverged(f"training diverged in epoch {epoch}: {', '.join(bad)} not finite; lower train.lr "
                               f"(now {cfg.lr:g}), e.g. --set train.lr={cfg.lr / 10:g}")


def _log_missing_epochs(tracker: Tracker, state: TrainingState) -> None:
    logged = {m.step for m in tracker.client.get_metric_history(state.run_id, "val_dice_patient")}
    for row in state.history:
        if row["epoch"] not in logged:
            tracker.log_metrics(state.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _augmentation_rng(transform) -> list[dict] | None:
    """The augmentation's random state: albumentations gives the pipeline and each transform in it a
    numpy and a python generator of their own."""
    if transform is None:
        return None
    return [{"numpy": t.random_generator.bit_generator.state, "python": t.py_random.getstate()}
            for t in (transform, *transform.transforms)]


def _set_augmentation_rng(transform, states: list[dict] | None) -> None:
    if transform is None or states is None:
        return
    for t, state in zip((transform, *transform.transforms), states, strict=True):
        t.random_generator.bit_generator.state = state["numpy"]
        t.py_random.setstate(state["python"])


def _epoch_line(arch: str, row: dict, epochs: int, improved: bool) -> str:
    return (f"{arch} epoch {row['epoch']}/{epochs}: train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val Dice slice {row['val_dice_slice']:.3f}  patient {row['val_dice_patient']:.3f}  "
            f"{row['train_images_per_second']:.1f} img/s  {row['epoch_seconds']:.1f}s" + ("  *best" if improved else ""))
