"""A git+DVC repository holding the project's pipeline, for tests that run `dvc` as users do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from conftest import PARAMS, REPO
from lggseg.core.config import apply_override


def run(cmd: list[str], cwd: Path, check: bool = True, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """`cmd` in `cwd` with this Python's bin dir (dvc, the stages' python) first on PATH. The tracking store
    is the repository's own unless `env` names one."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.update(env or {})
    result = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def make_dvc_repo(repo: Path) -> Path:
    """The project's pipeline files (code deps included, committed params.yaml) in a new git+DVC repo."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copy(PARAMS, repo / "params.yaml")
    for folder in ("stages", "src"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.name", "lggseg tests"], repo)
    run(["git", "config", "user.email", "tests@lggseg.invalid"], repo)
    run(["dvc", "init", "-q"], repo)
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")  # dvc.yaml's custom plot templates (roc)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline"], repo)
    return repo


def set_params(repo: Path, *overrides: str) -> None:
    """Write `key=value` overrides (as `--set` takes them) into the repository's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for override in overrides:
        apply_override(params, override)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` ran, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
