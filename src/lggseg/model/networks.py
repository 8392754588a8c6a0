"""Architecture factory over segmentation-models-pytorch: the ModelSpec a network is rebuilt from, and
create_model (encoder weights from the Hugging Face Hub, or none)."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import encoders as ENCODERS

HF_HOST = "huggingface.co"


class ModelConfigError(ValueError):
    """Unknown architecture or encoder, or encoder weights that cannot be had."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network (saved with every checkpoint)."""

    arch: str
    encoder: str
    encoder_weights: str | None
    in_channels: int
    classes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def architectures() -> list[str]:
    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def create_model(spec: ModelSpec, pretrained: bool = True) -> torch.nn.Module:
    """Build `spec`; `pretrained=False` skips weight download (the weights come from a checkpoint)."""
    arch = spec.arch.lower()
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ModelConfigError(f"unknown architecture {spec.arch!r}; valid: {', '.join(architectures())}")
    if spec.encoder not in ENCODERS and not spec.encoder.startswith("tu-"):
        raise ModelConfigError(
            f"unknown encoder {spec.encoder!r} (model.encoder); e.g. resnet18, resnet34, efficientnet-b0, "
            "mobilenet_v2, or any timm encoder as tu-<name>"
        )
    weights = spec.encoder_weights if pretrained else None
    if weights is not None:
        _check_hub_reachable(spec)
    try:
        return smp.create_model(
            arch, encoder_name=spec.encoder, encoder_weights=weights, in_channels=spec.in_channels, classes=spec.classes,
        )
    except (OSError, ValueError, KeyError) as exc:
        if weights is None:
            raise ModelConfigError(f"cannot build {spec.arch} with encoder {spec.encoder}: {exc}") from exc
        raise ModelConfigError(_weights_message(spec, exc)) from exc


def _weights_message(spec: ModelSpec, reason: object) -> str:
    return (
        f"encoder weights {spec.encoder_weights!r} for {spec.encoder} could not be loaded ({reason}). "
        f"They are downloaded from the Hugging Face Hub and need internet (or a warm cache with HF_HUB_OFFLINE=1). "
        "Offline, set model.encoder_weights: null to train from scratch "
        "(e.g. dvc exp run -S model.encoder_weights=null)."
    )


def _check_hub_reachable(spec: ModelSpec, timeout: float = 3.0) -> None:
    """Fail in seconds instead of letting the hub client retry for half a minute when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return  # the hub client then reads only its cache and fails at once if the weights are not there
    try:
        socket.create_connection((HF_HOST, 443), timeout=timeout).close()
    except OSError as exc:
        raise ModelConfigError(_weights_message(spec, f"{HF_HOST} unreachable: {exc}")) from None
