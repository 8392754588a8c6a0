"""Validation on the val split: val loss, mean per-slice Dice and mean per-patient (3-D volume) Dice."""

from __future__ import annotations

import pandas as pd
from torch.utils.data import DataLoader

from lggseg.metrics.segmentation import SliceCountAccumulator, segmentation_summary
from lggseg.model import distributed
from lggseg.model.devices import Runtime
from lggseg.model.distributed import Group
from lggseg.model.inference import predict_batches
from lggseg.training.divergence import check_finite_logits


def validate(model, loader: DataLoader, loss_fn, runtime: Runtime, threshold: float,
             group: Group = distributed.SINGLE) -> dict:
    """Val loss, mean per-slice Dice and mean per-patient (3-D volume) Dice. Under DDP each rank scores
    its shard and the per-slice counts of all ranks are gathered: the same numbers as one process."""
    counts = SliceCountAccumulator()
    total_loss, seen = 0.0, 0
    for logits, probs, batch in predict_batches(model, loader, runtime):
        check_finite_logits(logits)
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
