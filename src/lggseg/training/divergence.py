"""Divergence checks: the loss, the weights and the model's outputs must stay finite numbers."""

from __future__ import annotations

import math

import torch

from lggseg.core.config import TrainConfig


class TrainingDiverged(RuntimeError):
    """The loss, the weights or the model's outputs stopped being finite numbers."""


def check_running_loss(value: float, epoch: int, batch_index: int, cfg: TrainConfig) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(f"training diverged in epoch {epoch} by batch {batch_index}: the train loss is "
                               f"{value}; lower train.lr (now {cfg.lr:g}), e.g. --set train.lr={cfg.lr / 10:g}")


def check_finite_epoch(model: torch.nn.Module, row: dict, epoch: int, cfg: TrainConfig) -> None:
    """After an epoch, before anything is saved: finite losses and finite weights, or TrainingDiverged."""
    bad = [k for k in ("train_loss", "val_loss") if not math.isfinite(row[k])]
    if not bad and not all(torch.isfinite(p).all() for p in model.parameters()):
        bad = ["weights"]
    if bad:
        raise TrainingDiverged(f"training diverged in epoch {epoch}: {', '.join(bad)} not finite; lower train.lr "
                               f"(now {cfg.lr:g}), e.g. --set train.lr={cfg.lr / 10:g}")


def check_finite_logits(logits: torch.Tensor) -> None:
    """Val logits must be finite: NaN logits threshold to empty masks, and empty slices score Dice 1,
    so refuse instead of a plausible-looking number."""
    if not torch.isfinite(logits).all():
        raise TrainingDiverged("the model outputs non-finite values on the val split")
