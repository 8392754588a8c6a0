"""`lggseg exps`: DVC's experiments at terminal width.

`dvc exp show` puts every param, dependency hash and metric of every architecture in one row, which
no terminal holds. This view keeps the headline: per architecture the test and val per-patient Dice,
and the params in which each experiment differs from its baseline commit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from lggseg.core.config import flatten_params, param_text

EXPERIMENT_MARK = "└─ "  # an experiment, under its baseline commit (as in `dvc exp show`)
HEADLINE = {"dice_patient_mean": "test", "val_dice_patient": "val"}  # metric key -> column suffix
ARCH_METRICS = re.compile(r"^reports/arch/(?P<arch>[^/]+)/metrics\.json$")


def run_dvc(args: Sequence[str], root: Path, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """`dvc <args>` in `root` with the dvc installed beside this Python (the project's venv), else the one on
    PATH; that bin folder leads PATH, so `dvc queue` workers and the stages' `python` are the venv's too.
    check: RuntimeError with DVC's message when it fails."""
    bin_dir = Path(sys.executable).parent
    dvc = shutil.which("dvc", path=str(bin_dir)) or "dvc"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {root}: {(result.stderr or result.stdout).strip()[-800:]}")
    return result


def dvc_experiments(root: Path) -> list[dict]:
    """`dvc exp show --json` in `root` (RuntimeError with DVC's message when it fails)."""
    return json.loads(run_dvc(["exp", "show", "--json", "--no-fetch"], root, timeout=300).stdout)


def experiments_table(exps: list[dict]) -> pd.DataFrame:
    """One row per workspace, baseline commit and experiment: name, `<arch> test` / `<arch> val` per-patient
    Dice, and the params that differ from the baseline commit, one per line (times: `dvc exp show`)."""
    rows = []
    for label, data, baseline in _revisions(exps):
        params = {k: param_text(v) for k, v in flatten_params(_params(data)).items()}
        reference = {k: param_text(v) for k, v in flatten_params(_params(baseline)).items()}
        row: dict[str, Any] = {"experiment": label}
        for path, metrics in (data.get("metrics") or {}).items():
            match = ARCH_METRICS.match(path)
            for key, suffix in HEADLINE.items():
                if match:
                    row[f"{match['arch']} {suffix}"] = _dice((metrics.get("data") or {}).get(key))
        row["params changed"] = "\n".join(f"{k}={v}" for k, v in params.items() if reference.get(k) != v)
        rows.append(row)
    table = pd.DataFrame(rows).fillna("-")
    return table[[c for c in table.columns if c != "params changed"] + ["params changed"]]


def format_experiments(table: pd.DataFrame, width: int = 100) -> str:
    """The table as text at most `width` columns wide: the params column wraps into what is left."""
    options = dict(headers="keys", showindex=False, disable_numparse=True)
    others = tabulate(table.drop(columns="params changed"), **options)
    params_width = max(20, width - max(len(line) for line in others.splitlines()) - 2)
    return tabulate(table, maxcolwidths=[None] * (len(table.columns) - 1) + [params_width], **options)


def _revisions(exps: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(label, data, baseline data): the workspace, each baseline commit, then its experiments."""
    baselines = [entry for entry in exps if entry.get("rev") != "workspace"]
    for entry in exps:
        data = entry.get("data") or {}
        if entry.get("rev") == "workspace":
            yield "workspace", data, (baselines[0].get("data") or {}) if baselines else data
            continue
        yield entry.get("name") or entry["rev"][:7], data, data
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                yield f"{EXPERIMENT_MARK}{rev.get('name') or exp.get('name') or rev['rev'][:7]}", rev.get("data") or {}, data


def _params(data: dict) -> dict:
    return ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}


def _dice(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"
