import pytest

from lggseg.config import Config, ConfigError, load_config

from conftest import REPO, tiny_config


def test_repo_params_load_with_documented_defaults():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.source == "auto"
    assert cfg.model.architectures == ("unet", "fpn")
    assert cfg.train.epochs == 25 and cfg.train.batch_size == 16 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.loss == "bce" and cfg.model.encoder == "resnet34" and cfg.model.encoder_weights == "imagenet"
    assert cfg.split.val_fraction == cfg.split.test_fraction == pytest.approx(0.15)
    assert cfg.preprocess.size == 256 and cfg.preprocess.in_channels == 3


def test_overrides_parse_yaml_values():
    cfg = tiny_config("model.encoder_weights=null", "model.architectures=[unet, deeplabv3plus]", "preprocess.channels=flair")
    assert cfg.model.encoder_weights is None
    assert cfg.model.architectures == ("unet", "deeplabv3plus")
    assert cfg.preprocess.in_channels == 1


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epocs=3", "train.epocs"),
        ("train.epochs=many", "train.epochs"),
        ("data.source=ftp", "data.source"),
        ("train.loss=focal", "train.loss"),
        ("split.test_fraction=0.9", "split.val_fraction + split.test_fraction"),
        ("preprocess.size=100", "preprocess.size"),
        ("data.index.strict=maybe", "data.index.strict"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("+", r"\+")):
        tiny_config(override)


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="expected key=value"):
        tiny_config("train.epochs")


def test_flat_params_cover_sections():
    flat = Config().flat(["train", "model"])
    assert flat["train.lr"] == pytest.approx(1e-4)
    assert flat["model.architectures"] == ["unet", "fpn"]
    assert not any(k.startswith("data.") for k in flat)
