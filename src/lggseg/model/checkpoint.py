"""Checkpoints that rebuild themselves: {spec, state_dict, ...} written atomically, read back with
torch.load(weights_only=True) only."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from lggseg.core.atomic import atomic_path
from lggseg.model.networks import ModelSpec, create_model


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled Python objects (code could run on load): refused."""


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
