"""The one place that decides where torch runs and how (device, precision, loader options)."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lggseg.core.config import PRECISIONS


@dataclass(frozen=True)
class Runtime:
    """How torch runs: every option is explicit so each one also runs (and is tested) on CPU."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None: full precision
    channels_last: bool
    pin_memory: bool  # pinned loader memory and non-blocking host-to-device copies

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    @property
    def grad_scaler(self) -> bool:
        """fp16 needs loss scaling (its range is small); bf16 has fp32's range and does not."""
        return self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def loader_options(self) -> dict:
        """DataLoader keywords: pinned memory where there is an accelerator to pin for (torch ignores it,
        with a warning, on a machine without one; the non-blocking copies still run)."""
        return {"pin_memory": self.pin_memory and torch.cuda.is_available()}

    def describe(self) -> dict[str, str]:
        """For MLflow tags and benchmark records."""
        return {"device": self.name, "precision": self.precision,
                "memory_format": "channels_last" if self.channels_last else "contiguous",
                "pin_memory": str(self.pin_memory).lower()}


def resolve_device(requested: str = "auto", index: int | None = None) -> torch.device:
    """`auto`: CUDA, else Apple MPS, else CPU. `index`: the GPU of this process (DDP's LOCAL_RANK)."""
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
        if index is not None:
            device = torch.device("cuda", index)
    return device


def resolve_runtime(requested: str = "auto", precision: str = "auto", memory_format: str = "auto",
                    pin_memory: bool | str = "auto", index: int | None = None) -> Runtime:
    """The training runtime (train.device, train.precision, train.memory_format, train.pin_memory).

    `auto` everywhere: on CUDA bf16 autocast (fp16 with a GradScaler on GPUs without bf16), channels_last,
    cudnn.benchmark, pinned memory and non-blocking copies; on CPUs with native bf16 (AVX512-BF16/AMX)
    bf16 autocast and channels_last, on other CPUs fp32 and channels_last (benchmarks/bench.py measured
    both); on MPS fp32, contiguous."""
    device = resolve_device(requested, index)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if precision == "auto":
        if device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device.type == "cpu" and cpu_has_native_bf16():
            amp_dtype = torch.bfloat16
        else:
            amp_dtype = None
    else:
        amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if amp_dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or auto")
    channels_last = device.type != "mps" if memory_format == "auto" else memory_format == "channels_last"
    pinned = device.type == "cuda" if pin_memory == "auto" else bool(pin_memory)
    return Runtime(device, amp_dtype, channels_last=channels_last, pin_memory=pinned)


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
    that have it and on CPUs with native bf16, else fp32; `fp32` forces full precision. channels_last
    except on MPS (measured: benchmarks/predict_speed.py)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return resolve_runtime(requested, precision)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
