"""Architecture factory over segmentation-models-pytorch, and checkpoints that rebuild themselves."""

from __future__ import annotations

import os
import pickle
import re
import socket
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import encoders as ENCODERS

from lggseg.core.atomic import atomic_path

HF_HOST = "huggingface.co"


class ModelConfigError(ValueError):
    """Unknown architecture or encoder, or encoder weights that cannot be had."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled Python objects (code could run on load): refused."""


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


def save_checkpoint(path: Path, model: torch.nn.Module, spec: ModelSpec, **extra: Any) -> Path:
    """Atomically write {spec, state_dict, **extra} (extra: preprocess, optimizer state, epoch, metrics...).
    Everything must be tensors and plain Python types: checkpoints are read with weights_only=True."""
    state = {"spec": spec.to_dict(), "state_dict": model.state_dict(), **extra}
    # through a Python file: a full disk then stays visible as the OSError behind torch's RuntimeError
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as file:
        torch.save(state, file)
    return Path(path)


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict at `path`, read with `torch.load(weights_only=True)`: tensors, numbers,
    strings and containers only. A file that needs any other Python object to load is refused
    (UnsafeCheckpointError) rather than unpickled: unpickling runs whatever code the file names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (run the train stage)")
    if not zipfile.is_zipfile(path):  # what torch.save has written since torch 1.6
        raise ValueError(f"{path}: not a readable torch checkpoint (not a torch.save archive; truncated?)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if "Unsupported global" not in str(exc) else _unsupported_global(exc)
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds pickled Python objects ({reason}). lggseg loads checkpoints with "
            "torch.load(weights_only=True), which accepts tensors and plain types only; re-train to get one, "
            "or convert it yourself if you trust where it came from"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict) or "spec" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not an lggseg checkpoint (no spec/state_dict)")
    return checkpoint


def _unsupported_global(exc: Exception) -> str:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return f"it needs {match.group(1)}" if match else "it needs a Python class to load"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model saved at `path`; returns (model in eval mode, the whole checkpoint dict)."""
    checkpoint = read_checkpoint(path, map_location)
    try:
        spec = ModelSpec(**checkpoint["spec"])
    except TypeError as exc:
        raise ValueError(f"{path}: checkpoint spec {checkpoint['spec']!r} is not a model spec ({exc})") from None
    model = create_model(spec, pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
