"""Where a training stands: epochs completed, the best val Dice so far, early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass


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
