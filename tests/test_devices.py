import itertools

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from conftest import tiny_config
from lggseg.model.devices import cpu_has_native_bf16, inference_runtime, resolve_runtime, seed_everything
from lggseg.model.networks import ModelSpec, create_model
from lggseg.training.loop import run_epoch
from lggseg.training.recipe import build_loss, make_loaders


def test_auto_picks_the_best_available_device():
    runtime = resolve_runtime("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert runtime.device.type == expected
    if expected == "cpu":
        # measured by benchmarks/bench.py: channels_last always, bf16 autocast only where the CPU has it natively
        assert runtime.amp_dtype == (torch.bfloat16 if cpu_has_native_bf16() else None)
        assert runtime.channels_last and not runtime.pin_memory and not runtime.grad_scaler


def test_every_runtime_option_can_be_chosen_by_name():
    runtime = resolve_runtime("cpu", precision="fp16", memory_format="contiguous", pin_memory=True)
    assert (runtime.amp_dtype, runtime.channels_last, runtime.pin_memory, runtime.grad_scaler) == (
        torch.float16, False, True, True)
    assert runtime.describe() == {"device": "cpu", "precision": "fp16", "memory_format": "contiguous",
                                  "pin_memory": "true"}
    assert resolve_runtime("cpu", precision="fp32").precision == "fp32"
    assert inference_runtime("cpu", "fp32").amp_dtype is None and inference_runtime("cpu", "bf16").channels_last


class _Spy(torch.nn.Module):
    """The model with a record of what its first convolution saw: input memory format, output dtype."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.seen = model, []
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda mod, inputs, output: self.seen.append(
            (inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype)))

    def forward(self, x):
        return self.model(x)


# fp16 is emulated on CPU (about 30x slower than bf16): two of its four combinations cover its lines
RUNTIME_OPTIONS = [o for o in itertools.product(["fp32", "bf16", "fp16"], ["channels_last", "contiguous"], [True, False])
                   if o[0] != "fp16" or (o[1] == "channels_last") == o[2]]


@pytest.mark.parametrize(("precision", "memory_format", "pin_memory"), RUNTIME_OPTIONS,
                         ids=["-".join(map(str, o)) for o in RUNTIME_OPTIONS])
def test_each_runtime_option_trains_on_cpu(prepared_project, precision, memory_format, pin_memory):
    """Every line of the CUDA path but the device: autocast dtype, channels_last, the fp16 GradScaler,
    non-blocking copies from (where there is an accelerator) pinned memory. A real epoch each."""
    cfg = tiny_config("augment.enabled=false")
    runtime = resolve_runtime("cpu", precision, memory_format, pin_memory)
    generator = seed_everything(0)
    full_train, full_val = make_loaders(cfg, prepared_project, runtime, generator)
    assert full_train.pin_memory == (pin_memory and torch.cuda.is_available())
    # 16 slices each way keep it quick; the loaders are built as make_loaders builds them
    train_loader, val_loader = (DataLoader(Subset(loader.dataset, range(16)), batch_size=8, **runtime.loader_options())
                                for loader in (full_train, full_val))
    model = create_model(ModelSpec("unet", "resnet18", None, in_channels=3))
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters()]
    spy = _Spy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=runtime.grad_scaler)
    row = run_epoch(model, spy, train_loader, val_loader, build_loss("bce_dice"), optimizer, scaler, runtime,
                     cfg.train, epoch=1)

    expected_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert spy.seen and all(seen == (memory_format == "channels_last", expected_dtype) for seen in spy.seen)
    assert scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert scaler.get_scale() > 0  # the scaler stepped (a skipped step would have halved it, not zeroed it)
    assert torch.isfinite(torch.tensor(row["train_loss"])) and 0 <= row["val_dice_patient"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the weights did not change"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_says_what_to_do():
    with pytest.raises(ValueError, match="CUDA is not available; use train.device=auto or cpu"):
        resolve_runtime("cuda")


def test_bad_device_string_names_the_key():
    with pytest.raises(ValueError, match="train.device"):
        resolve_runtime("gpu0")


def test_seeding_repeats_random_draws():
    g1 = seed_everything(3)
    a = torch.rand(3), torch.randperm(10, generator=g1)
    g2 = seed_everything(3)
    b = torch.rand(3), torch.randperm(10, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
