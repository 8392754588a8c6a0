import subprocess
import sys

import pytest

from lggseg.config import Config, ConfigError, load_config

from conftest import PARAMS, tiny_config


def test_repo_params_load_with_documented_defaults():
    cfg = load_config(PARAMS)
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


def test_listed_model_names_are_the_installed_smp_names():
    from lggseg import model_names

    architectures, encoders = model_names.installed_names()
    assert set(model_names.ARCHITECTURES) == architectures
    assert set(model_names.ENCODERS) == encoders


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.architectures=[unet, foo]", "model.architectures: unknown architecture.*foo.*valid: deeplabv3"),
        ("model.architectures=[unet, unet]", "model.architectures lists unet more than once"),
        ("model.encoder=resnet99", "model.encoder: unknown encoder 'resnet99'"),
    ],
)
def test_model_names_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(override)


def test_timm_encoders_pass_the_name_check():
    assert tiny_config("model.encoder=tu-resnet18").model.encoder == "tu-resnet18"


def test_bad_model_names_fail_before_torch_is_imported(tmp_path):
    """The CLI refuses a typo in under a second: neither torch nor smp is imported to check names."""
    code = (
        "import sys\n"
        "from lggseg.cli import main\n"
        f"rc = main(['train', '--arch', 'unet', '--params', {str(PARAMS)!r}, '--root', {str(tmp_path)!r}, "
        "'--set', 'model.encoder=resnet99'])\n"
        "assert rc == 1, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "model.encoder: unknown encoder 'resnet99'" in result.stderr


def test_arch_outside_model_architectures_is_refused(tmp_path, capsys):
    from lggseg.cli import main

    code = main(["train", "--arch", "unet", "--params", str(PARAMS), "--root", str(tmp_path),
                 "--set", "model.architectures=[fpn]"])
    assert code == 1
    assert "--arch unet is not in model.architectures (fpn)" in capsys.readouterr().err
