import socket

import pytest
import torch

from lggseg.model.checkpoint import UnsafeCheckpointError, load_checkpoint, save_checkpoint
from lggseg.model.networks import ModelConfigError, ModelSpec, create_model


def test_any_smp_architecture_by_name():
    for arch in ("unet", "FPN", "UnetPlusPlus", "deeplabv3plus"):
        model = create_model(ModelSpec(arch, "resnet18", None, in_channels=3)).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 64))
        assert out.shape == (1, 1, 64, 64)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ModelConfigError, match="unknown architecture 'unnet'; valid: .*fpn.*unet"):
        create_model(ModelSpec("unnet", "resnet18", None, in_channels=3))


def test_unknown_encoder_is_named():
    with pytest.raises(ModelConfigError, match="unknown encoder 'resnet999'"):
        create_model(ModelSpec("unet", "resnet999", None, in_channels=3))


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("offline_env", ["1", None])
def test_imagenet_weights_offline_fail_with_the_way_out(monkeypatch, offline_env):
    if _hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable here: weights would download")
    if offline_env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelConfigError, match="model.encoder_weights: null"):
        create_model(ModelSpec("unet", "resnet18", "imagenet", in_channels=3))


def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path):
    spec = ModelSpec("fpn", "resnet18", None, in_channels=1)
    model = create_model(spec).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, spec, epoch=3)
    loaded, checkpoint = load_checkpoint(path)
    x = torch.rand(2, 1, 64, 64)
    assert checkpoint["epoch"] == 3 and checkpoint["spec"]["in_channels"] == 1
    assert torch.allclose(model(x), loaded(x))


class Payload:
    """Stands for any object a pickled checkpoint could smuggle in."""


@pytest.mark.parametrize("extra", [{"payload": Payload()}, {"whole_model": "module"}])
def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path, extra):
    spec = ModelSpec("unet", "resnet18", None, in_channels=3)
    model = create_model(spec).eval()
    if "whole_model" in extra:
        extra = {"whole_model": model}  # torch.save(model) style: the class is pickled
    path = tmp_path / "best.pt"
    torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict(), **extra}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"best.pt: refused: it holds pickled Python objects"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="best.pt: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "best.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an lggseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*best.pt"):
        load_checkpoint(tmp_path / "best.pt")
