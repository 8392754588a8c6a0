"""The one place that decides where torch runs and how (device, precision, loader options)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import torch

from lggseg.config import PRECISIONS


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    channels_last: bool
    pin_memory: bool

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch


def resolve_runtime(requested: str = "auto") -> Runtime:
    """`auto`: CUDA, else Apple MPS, else CPU. On CUDA: bf16 autocast where supported (else fp16),
    channels_last, cudnn.benchmark and pinned memory."""
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"train.device: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={requested} but CUDA is not available; use train.device=auto or cpu")
        torch.backends.cudnn.benchmark = True
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Runtime(device, dtype, channels_last=True, pin_memory=True)
    return Runtime(device, None, channels_last=False, pin_memory=False)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates it
    and bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay with fp32
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def inference_runtime(requested: str = "auto", precision: str = "auto") -> Runtime:
    """Where and how inference runs (evaluation and `lggseg predict`). precision `auto`: bf16 on GPUs
    that have it and on CPUs with native bf16, else fp32; `fp32` forces full precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    runtime = resolve_runtime(requested)
    if precision == "fp32":
        return Runtime(runtime.device, None, runtime.channels_last, runtime.pin_memory)
    if runtime.device.type == "cpu":
        native = cpu_has_native_bf16()
        if precision == "bf16" or native:
            # channels_last helps oneDNN's convolutions on CPU too (measured: benchmarks/predict_speed.py)
            return Runtime(runtime.device, torch.bfloat16, channels_last=True, pin_memory=False)
        return Runtime(runtime.device, None, channels_last=True, pin_memory=False)
    if precision == "bf16" and runtime.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {runtime.name} has no bf16")
    return runtime


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
