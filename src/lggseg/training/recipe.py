"""What a run trains with: the loss, the optimizer, the lr schedule and the train/val loaders (samplers)."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from lggseg.core.config import Config, TrainConfig
from lggseg.core.paths import Paths
from lggseg.core.stop_signals import stop_quietly_in_loader_worker
from lggseg.data.augment import build_augmentation
from lggseg.data.dataset import SliceDataset, seed_worker
from lggseg.data.split import check_no_leak
from lggseg.model import distributed
from lggseg.model.devices import Runtime
from lggseg.model.distributed import Group, ShardSampler
from lggseg.training.sampling import TumorSampler

ONECYCLE_WARMUP = 0.3  # share of the steps train.scheduler=onecycle spends warming up (torch's default)


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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam at train.lr with train.weight_decay."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


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

