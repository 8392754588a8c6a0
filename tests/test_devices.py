import pytest
import torch

from lggseg.devices import resolve_runtime, seed_everything


def test_auto_picks_the_best_available_device():
    runtime = resolve_runtime("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert runtime.device.type == expected
    if expected == "cpu":
        assert runtime.amp_dtype is None and not runtime.channels_last and not runtime.pin_memory


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
