"""The README's two commands are Makefile targets: the demo's settings are valid params, and the quick
start passes as written, in its order, on a fresh clone."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PARAMS, REPO
from lggseg.core.config import load_config


def makefile_settings(variable: str) -> list[str]:
    """The `-S key=value` settings of a Makefile variable such as DEMO_SETTINGS."""
    text = (REPO / "Makefile").read_text()
    block = re.search(rf"^{variable} :=(.*?)(?:\n[^\t])", text, re.S | re.M).group(1)
    return re.findall(r"-S (\S+)", block)


def demo_settings() -> list[str]:
    return makefile_settings("DEMO_SETTINGS")


# the demo shrunk further for the quick-start test (DEMO_EXTRA is applied after the demo's own settings)
DEMO_TINY = ("data.synthetic.patients=10", "data.synthetic.slices_min=12", "data.synthetic.slices_max=14",
             "train.epochs=1", "evaluate.figures_patients=1")


def test_demo_settings_are_valid_params_and_offline():
    settings = demo_settings()
    cfg = load_config(PARAMS, settings)  # raises on any unknown key or bad value
    assert cfg.data.source == "synthetic" and cfg.model.encoder_weights is None
    assert cfg.mlflow.experiment != load_config(PARAMS).mlflow.experiment
    assert cfg.preprocess.size <= 128 and cfg.train.epochs <= 10  # CPU-sized


def test_cpu_recipe_settings_are_valid_params_without_downloads():
    cfg = load_config(PARAMS, makefile_settings("CPU_RECIPE"))
    assert cfg.model.encoder_weights is None and cfg.data.source == load_config(PARAMS).data.source  # the real set
    assert set(cfg.model.architectures) == {"unet", "fpn"} and cfg.train.device == "auto"


def recipe_command(project: Path) -> str:
    """The `dvc exp run` line `make repro-cpu` runs in `project` (a dry run)."""
    result = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), "repro-cpu", "CPU_EXTRA=-S train.epochs=1",
                             f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed"],
                            cwd=project, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split("dvc exp run", 1)[1].split("&&", 1)[0].replace("\\\n", " ").split())


def test_cpu_recipe_runs_as_a_temporary_experiment_and_finds_a_saved_archive(tmp_path):
    command = recipe_command(tmp_path)
    assert command.startswith("--temp --name cpu-recipe") and command.endswith("-S train.epochs=1")  # CPU_EXTRA last
    assert "data.local_path" not in command
    archive = tmp_path / "data" / "raw" / "lgg-mri-segmentation.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    # the experiment runs in a copy without data/raw/: the archive must travel as an absolute path
    assert f"-S data.local_path={archive}" in recipe_command(tmp_path)


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in quick.strip().splitlines()]


def test_readme_quick_start_names_exactly_the_two_commands():
    assert quick_start_commands() == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:.*\n.*pytest", makefile, re.M)


def _project_copy(dest: Path) -> Path:
    """A fresh git repository holding the project as a clone would: the files git tracks or would track
    (working-tree code under test), with params.yaml as committed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    shutil.copy(PARAMS, dest / "params.yaml")
    for args in (["init", "-q"], ["config", "user.name", "lggseg tests"], ["config", "user.email", "tests@lggseg.invalid"],
                 ["add", "-A"], ["commit", "-qm", "fresh clone"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


@pytest.mark.slow
def test_quick_start_in_order_on_a_fresh_clone_leaves_git_status_clean(tmp_path):
    """The README's two commands, as written, in their order: the demo (shrunk further with DEMO_EXTRA),
    then the test command (on the tests that read project files), then `git status` shows nothing."""
    clone = _project_copy(tmp_path / "clone")
    venv = Path(sys.prefix)
    make = ["make", f"VENV={venv}", "-o", f"{venv}/.installed"]  # this test's environment, not a second install
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MLFLOW_TRACKING_URI")}
    overrides = {
        "make demo": ["DEMO_EXTRA=" + " ".join(f"-S {s}" for s in DEMO_TINY)],
        "make test": ["PYTEST_ARGS=-q -p no:cacheprovider -m 'not slow' tests/test_config.py tests/test_makefile.py"
                      " tests/test_cli.py tests/test_dvc_plots_offline.py"],
    }
    outputs = {}
    for command in quick_start_commands():
        target = command.split()[1]
        result = subprocess.run([*make, target, *overrides[command]], cwd=clone, env=env, capture_output=True,
                                text=True, timeout=1200)
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs[command] = result.stdout
        status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
        assert status == "", f"after {command}, git status shows:\n{status}"
    # the final table: per-patient Dice in percent (`93.5`), as the README reports it, named in the headers
    assert re.search(r"^└─ demo +\d{1,3}\.\d ", outputs["make demo"], re.M) and "Demo finished" in outputs["make demo"]
    assert "Dice %" in outputs["make demo"]
    assert re.search(r"\d+ passed", outputs["make test"]) and " failed" not in outputs["make test"]

    # the demo's next step: its registered champion on new scans, and still nothing for git to see
    result = subprocess.run([*make, "predict-demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"make predict-demo failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    summary = (clone / "predictions" / "demo" / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and (clone / "predictions" / "demo" / "index.html").is_file()
    # the same champion on NIfTI cases and on a DICOM study: masks as NIfTI in each input's grid
    assert len((clone / "predictions" / "demo-nifti" / "summary.csv").read_text().splitlines()) == 4
    assert len(list((clone / "predictions" / "demo-nifti").glob("*/*_mask.nii.gz"))) == 3
    assert len(list((clone / "predictions" / "demo-dicom").glob("*/*_mask.nii.gz"))) == 1
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout == ""


@pytest.mark.parametrize("configured", [True, False], ids=["user-identity", "none-configured"])
def test_experiment_commits_use_the_users_git_identity_when_there_is_one(tmp_path, configured):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "MAKE"))}
    env.update(HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1", XDG_CONFIG_HOME=str(tmp_path))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    if configured:
        subprocess.run(["git", "config", "user.name", "Ada Lovelace"], cwd=repo, check=True, env=env)
        subprocess.run(["git", "config", "user.email", "ada@example.org"], cwd=repo, check=True, env=env)
    show = "show-identity: ; @echo \"$$GIT_AUTHOR_NAME|$$GIT_COMMITTER_EMAIL\""
    result = subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "--eval", show, "show-identity"], cwd=repo,
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ("|" if configured else "lggseg demo|demo@lggseg.invalid")
