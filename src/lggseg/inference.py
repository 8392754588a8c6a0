"""Running a network over slices: shared by validation, evaluation and prediction."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from lggseg.devices import Runtime


@torch.inference_mode()
def predict_batches(model: torch.nn.Module, loader: DataLoader, runtime: Runtime) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Yield (logits float32 (B, 1, H, W) on CPU, probabilities likewise, the batch) in loader order."""
    model.eval()
    for batch in loader:
        with runtime.autocast():
            logits = model(runtime.to_device(batch["image"]))
        logits = logits.float().cpu()
        yield logits, torch.sigmoid(logits), batch
