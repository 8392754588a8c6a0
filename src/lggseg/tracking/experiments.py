"""`lggseg exps`: DVC's experiments at terminal width.

`dvc exp show` puts every param, dependency hash and metric of every architecture in one row, which
no terminal holds. This view keeps the headline: per architecture the test and val per-patient Dice, in
percent as the README reports it, and the params in which each experiment differs from its baseline commit.
In a narrow terminal the params move under the table before any Dice column goes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from lggseg.core.config import flatten_params, param_text

EXPERIMENT_MARK = "└─ "  # an experiment, under its baseline commit (as in `dvc exp show`)
HEADLINE = {"dice_patient_mean": "test", "val_dice_patient": "val"}  # metric key -> split in the column name
DICE_UNIT = "Dice %"  # the README's unit: per-patient Dice in percent, one decimal (`84.2`)
PARAMS_CHANGED = "params changed"
# the params column wraps only lines longer than this (`data.source=synthetic` stays whole); where that
# does not fit, the params go under the table: a `key=value` broken every few characters reads as noise
PARAMS_UNBROKEN = 30
ARCH_METRICS = re.compile(r"^reports/arch/(?P<arch>[^/]+)/metrics\.json$")
CAPTION = "Dice %: per-patient 3-D volume Dice in percent, as in the README; mean over the test (val) patients."


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
    """One row per workspace, baseline commit and experiment: name, `<arch> test Dice %` / `<arch> val Dice %`
    (per-patient Dice in percent, see `dice_column`), and the params that differ from the baseline commit,
    one per line (times: `dvc exp show`)."""
    rows = []
    for label, data, baseline in _revisions(exps):
        params = {k: param_text(v) for k, v in flatten_params(_params(data)).items()}
        reference = {k: param_text(v) for k, v in flatten_params(_params(baseline)).items()}
        row: dict[str, Any] = {"experiment": label}
        for path, metrics in (data.get("metrics") or {}).items():
            match = ARCH_METRICS.match(path)
            for key, split in HEADLINE.items():
                if match:
                    row[dice_column(match["arch"], split)] = _dice_percent((metrics.get("data") or {}).get(key))
        row[PARAMS_CHANGED] = "\n".join(f"{k}={v}" for k, v in params.items() if reference.get(k) != v)
        rows.append(row)
    table = pd.DataFrame(rows).fillna("-")
    return table[[c for c in table.columns if c != PARAMS_CHANGED] + [PARAMS_CHANGED]]


def dice_column(arch: str, split: str) -> str:
    """`unet test Dice %`: the column of one architecture's per-patient Dice (percent) on `split`."""
    return f"{arch} {split} {DICE_UNIT}"


def terminal_width() -> int:
    """COLUMNS when set, else the terminal's width, else 80 (output piped into a file)."""
    return shutil.get_terminal_size().columns


def format_experiments(table: pd.DataFrame, width: int = 100) -> str:
    """The caption and the table in at most `width` columns. Each step is taken only where the one before
    does not fit: the Dice headers on two lines (`unet` over `test Dice %`), then on three (`unet`, `test`,
    `Dice %`), the params column wrapped into what is left; the params listed under the table; the val Dice
    columns left out (said under the table). Where even that is too wide (many architectures), the lines
    run past `width`: the test Dice columns always stay."""
    val_columns = [c for c in table.columns if c.endswith(f" val {DICE_UNIT}")]
    # (header lines, params under the table, columns left out)
    layouts = [(1, False, []), (2, False, []), (3, False, []), (3, True, []), (3, True, val_columns)]
    for header_lines, params_below, left_out in layouts:
        shown = table.drop(columns=[*left_out, *([PARAMS_CHANGED] if params_below else [])])
        # one-line headers only where the params fit unwrapped: taller headers leave them more room
        text = _table_text(shown, width if header_lines > 1 else None, header_lines)
        if text is not None and _widest(text) <= width:
            break
    parts = [_wrapped(CAPTION, width), text or ""]
    if params_below:
        parts.append(_params_list(table, width))
    if left_out:
        parts.append(_wrapped(f"Left out to fit {width} columns: the val Dice % of each architecture (a wider "
                              "terminal, `lggseg exps --width 150` or `dvc exp show` shows it).", width))
    return "\n".join(parts)


def _table_text(table: pd.DataFrame, width: int | None, header_lines: int) -> str | None:
    """tabulate's table; the params column (if shown) wrapped into what `width` leaves, or None where that
    would break a param line of up to PARAMS_UNBROKEN characters. width None: nothing wraps."""
    headers = [_dice_header(c, header_lines) for c in table.columns]
    # numbers right-aligned, so that 93.5 and 8.0 line up on the point
    align = ["right" if c.endswith(f" {DICE_UNIT}") else "left" for c in table.columns]
    options: dict[str, Any] = dict(showindex=False, disable_numparse=True)
    if PARAMS_CHANGED not in table.columns or width is None:
        return tabulate(table, headers=headers, colalign=align, **options)
    others = tabulate(table.drop(columns=PARAMS_CHANGED), headers=headers[:-1], colalign=align[:-1], **options)
    params_width = width - _widest(others) - 2  # tabulate's 2-space column gap
    if params_width < min(_widest("\n".join(table[PARAMS_CHANGED])), PARAMS_UNBROKEN):
        return None
    return tabulate(table, headers=headers, colalign=align, maxcolwidths=[None] * (len(headers) - 1) + [params_width],
                    **options)


def _dice_header(column: str, lines: int) -> str:
    """`unet test Dice %` on 1, 2 (`unet` / `test Dice %`) or 3 lines (`unet` / `test` / `Dice %`); other
    headers as they are."""
    if lines == 1 or not column.endswith(f" {DICE_UNIT}"):
        return column
    arch, split = column.removesuffix(f" {DICE_UNIT}").rsplit(" ", 1)
    return f"{arch}\n{split} {DICE_UNIT}" if lines == 2 else f"{arch}\n{split}\n{DICE_UNIT}"


def _params_list(table: pd.DataFrame, width: int) -> str:
    """The params column as a list under the table: `  <experiment>: k=v, k=v` wrapped to `width`."""
    lines = [_wrapped(f"Params changed against the baseline commit (listed here to fit {width} columns):", width)]
    for label, params in zip(table["experiment"], table[PARAMS_CHANGED]):
        if params and params != "-":
            lines.append(_wrapped(", ".join(params.splitlines()), width, f"  {label.removeprefix(EXPERIMENT_MARK)}: ", "      "))
    if len(lines) == 1:
        lines.append("  none")
    return "\n".join(lines)


def _wrapped(text: str, width: int, first: str = "", rest: str = "") -> str:
    # break_on_hyphens off: a param such as `train.lr=1e-4` or a name such as `bce-dice` stays whole
    return "\n".join(textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                                    break_on_hyphens=False))


def _widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


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


def _dice_percent(value: Any) -> str:
    """A Dice fraction from metrics.json (0.935) in the README's unit: `93.5`; `-` for none."""
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
