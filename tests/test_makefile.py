"""The README's two commands are Makefile targets: check the demo's settings against the real config."""

import re

from lggseg.config import load_config

from conftest import REPO


def demo_settings() -> list[str]:
    text = (REPO / "Makefile").read_text()
    block = re.search(r"^DEMO_SETTINGS :=(.*?)(?:\n\n)", text, re.S | re.M).group(1)
    return re.findall(r"-S (\S+)", block)


def test_demo_settings_are_valid_params_and_offline():
    settings = demo_settings()
    cfg = load_config(REPO / "params.yaml", settings)  # raises on any unknown key or bad value
    assert cfg.data.source == "synthetic" and cfg.model.encoder_weights is None
    assert cfg.mlflow.experiment != load_config(REPO / "params.yaml").mlflow.experiment
    assert cfg.preprocess.size <= 128 and cfg.train.epochs <= 10  # CPU-sized


def test_readme_quick_start_names_exactly_the_two_commands():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:.*\n.*pytest", makefile, re.M)
