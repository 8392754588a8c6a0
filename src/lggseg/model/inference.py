"""Running a network over slices: shared by validation, evaluation and prediction."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from lggseg.data.preprocess import to_model_input
from lggseg.model.devices import Runtime


@dataclass(frozen=True)
class InferenceSettings:
    """How a trained model is applied to new scans; written by evaluation (reports/arch/<arch>/inference.json),
    logged with the MLflow model (its metadata and extra_files/), read by `lggseg predict`."""

    spec: dict  # ModelSpec fields: arch, encoder, in_channels...
    preprocess: dict  # size, channels: as the preprocess stage prepared the training slices
    threshold: float = 0.5
    largest_component: bool = False  # keep only the largest 3-D component per patient
    precision: str = "auto"
    chosen_on: str = ""  # why largest_component is what it is
    tta: bool = False  # average each slice's prediction with its left-right mirror's (evaluate.tta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str) -> InferenceSettings:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = [k for k in ("spec", "preprocess") if k not in known]
        if missing or not {"size", "channels"} <= set(known.get("preprocess") or {}):
            raise ValueError(f"{source}: inference settings without {', '.join(missing) or 'preprocess size/channels'}")
        return cls(**known)


def prepare_for_inference(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """`model` ready for fast inference on `runtime`: eval mode, on its device, channels_last where the
    runtime asks, and on CPU with bf16 the weights themselves in bf16 (faster than autocast, which
    casts them on every call). The caller's model is left as it is (it may still be logged in fp32)."""
    prepared = copy.deepcopy(model).eval().to(runtime.device)
    if runtime.device.type == "cpu" and runtime.amp_dtype is not None:
        prepared = prepared.to(runtime.amp_dtype)
    if runtime.channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


def _forward(model: torch.nn.Module, images: torch.Tensor, runtime: Runtime, tta: bool = False) -> torch.Tensor:
    """Logits float32 (B, 1, H, W) on CPU for a float32 (B, C, H, W) batch; with `tta` the mean of the
    logits of the batch and of its left-right mirror (mirrored back)."""
    images = runtime.to_device(images).to(next(model.parameters()).dtype)
    with runtime.autocast():
        logits = model(images).float()
        if tta:
            logits = (logits + model(images.flip(-1)).float().flip(-1)) / 2
    return logits.cpu()


@torch.inference_mode()
def predict_batches(model: torch.nn.Module, loader: DataLoader, runtime: Runtime,
                    tta: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Yield (logits float32 (B, 1, H, W) on CPU, probabilities likewise, the batch) in loader order."""
    model.eval()
    for batch in loader:
        logits = _forward(model, batch["image"], runtime, tta)
        yield logits, torch.sigmoid(logits), batch


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: np.ndarray, runtime: Runtime, batch_size: int,
                          tta: bool = False) -> np.ndarray:
    """Tumour probabilities (N, H, W) float32 for prepared uint8 slices (N, H, W, C), `batch_size` at a time."""
    model.eval()
    chunks = [torch.sigmoid(_forward(model, torch.from_numpy(to_model_input(images[i : i + batch_size])), runtime, tta))
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)[:, 0].numpy() if chunks else np.zeros((0, *images.shape[1:3]), np.float32)
