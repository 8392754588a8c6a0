"""`lggseg exps`: the headline per-patient Dice per architecture in the README's unit (percent), named in
the headers, in the terminal's width. Fed `dvc exp show --json`-shaped data (the real command runs in
test_dvc_pipeline.py, marked slow)."""

import re

import pytest

from lggseg.cli import main
from lggseg.tracking import experiments
from lggseg.tracking.experiments import EXPERIMENT_MARK, dice_column, experiments_table, format_experiments

BASELINE_PARAMS = {"data": {"source": "kaggle", "synthetic": {"patients": 0}},
                   "model": {"architectures": ["unet", "fpn"], "encoder_weights": "imagenet"},
                   "train": {"epochs": 30, "lr": 0.001}}
DEMO_PARAMS = {"data": {"source": "synthetic", "synthetic": {"patients": 24}},
               "model": {"architectures": ["unet", "fpn"], "encoder_weights": None},
               "train": {"epochs": 8, "lr": 0.001}}
DEMO_DICE = {"unet": (0.93512, 0.8941), "fpn": (0.9176, 0.8803)}  # test, val


def _data(params: dict, dice: dict[str, tuple[float, float]]) -> dict:
    metrics = {f"reports/arch/{arch}/metrics.json": {"data": {"dice_patient_mean": test, "val_dice_patient": val,
                                                              "detection_auc": 1.0}}
               for arch, (test, val) in dice.items()}
    return {"params": {"params.yaml": {"data": params}}, "metrics": metrics}


def _exp_show(dice: dict[str, tuple[float, float]] = DEMO_DICE, name: str = "demo") -> list[dict]:
    """The workspace, the baseline commit `main` (no metrics) and one experiment under it."""
    experiment = {"name": name, "revs": [{"rev": "c0ffee1234", "name": name, "data": _data(DEMO_PARAMS, dice)}]}
    return [{"rev": "workspace", "data": _data(BASELINE_PARAMS, {})},
            {"rev": "0123456789abcdef", "name": "main", "data": _data(BASELINE_PARAMS, {}),
             "experiments": [experiment]}]


def _header_and_rows(text: str) -> tuple[list[str], list[str]]:
    """The table's header lines (from `experiment` to tabulate's `----` rule) and the lines under it."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("experiment "))
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    return lines[top:rule], lines[rule + 1:]


def _column_names(text: str) -> list[str]:
    """Each column's header, its lines joined (`unet` over `test Dice %` -> `unet test Dice %`), the
    columns cut where tabulate's `----` rule puts them."""
    header, _ = _header_and_rows(text)
    rule = next(line for line in text.splitlines() if line.startswith("---"))
    spans = [m.span() for m in re.finditer(r"-+", rule)]
    return [" ".join(line[a:b].strip() for line in header if line[a:b].strip()) for a, b in spans]


def test_dice_in_percent_as_the_readme_with_metric_and_unit_in_the_column_names():
    table = experiments_table(_exp_show())
    demo = table[table["experiment"] == f"{EXPERIMENT_MARK}demo"].iloc[0]
    assert dice_column("unet", "test") == "unet test Dice %"
    assert (demo["unet test Dice %"], demo["unet val Dice %"]) == ("93.5", "89.4")
    assert (demo["fpn test Dice %"], demo["fpn val Dice %"]) == ("91.8", "88.0")
    assert table[table["experiment"] == "main"].iloc[0]["unet test Dice %"] == "-"  # no metrics at the commit
    assert demo["params changed"].splitlines() == ["data.source=synthetic", "data.synthetic.patients=24",
                                                   "model.encoder_weights=null", "train.epochs=8"]


@pytest.mark.parametrize("width", [70, 100, 200])
def test_fits_the_width_and_every_dice_column_stays_named(width):
    text = format_experiments(experiments_table(_exp_show()), width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "per-patient 3-D volume Dice in percent" in text  # the caption says what `Dice %` is
    header, rows = _header_and_rows(text)
    assert _column_names(text)[:5] == ["experiment", "unet test Dice %", "unet val Dice %", "fpn test Dice %",
                                       "fpn val Dice %"]
    demo = next(line for line in rows if line.startswith(f"{EXPERIMENT_MARK}demo"))
    assert demo.split()[2:6] == ["93.5", "89.4", "91.8", "88.0"]
    assert "train.epochs=8" in text and "Left out" not in text  # the params are somewhere, nothing dropped


def test_wide_terminal_keeps_one_line_headers_and_the_params_column():
    text = format_experiments(experiments_table(_exp_show()), 200)
    header, rows = _header_and_rows(text)
    assert len(header) == 1 and _column_names(text)[-1] == "params changed"
    demo = next(i for i, line in enumerate(rows) if line.startswith(f"{EXPERIMENT_MARK}demo"))
    assert [line.split()[-1] for line in rows[demo:demo + 4]] == [  # one param a line, in the last column
        "data.source=synthetic", "data.synthetic.patients=24", "model.encoder_weights=null", "train.epochs=8"]


def test_narrow_terminal_lists_the_params_under_the_table_and_says_so():
    text = format_experiments(experiments_table(_exp_show()), 70)
    header, _ = _header_and_rows(text)
    assert len(header) == 3 and _column_names(text) == ["experiment", "unet test Dice %", "unet val Dice %", "fpn test Dice %",
                                   "fpn val Dice %"]  # each split over three lines: `unet`, `test`, `Dice %`
    words = " ".join(text.split())  # the note and the list wrap at 70 columns
    listed = words[words.index("Params changed against the baseline commit (listed here to fit 70 columns):"):]
    assert "demo: data.source=synthetic, data.synthetic.patients=24, model.encoder_weights=null" in listed


def test_too_many_architectures_for_the_width_leave_out_the_val_dice_and_say_so():
    dice = {arch: (0.8, 0.7) for arch in ("unet", "fpn", "linknet", "pspnet")}
    text = format_experiments(experiments_table(_exp_show(dice)), 70)
    assert _column_names(text) == ["experiment", *(f"{arch} test Dice %" for arch in dice)]
    assert "Left out to fit 70 columns: the val Dice % of each architecture" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 70
    # at 200 columns nothing is left out
    assert "Left out" not in format_experiments(experiments_table(_exp_show(dice)), 200)


@pytest.mark.parametrize("columns", [70, 200])
def test_cli_takes_the_width_from_columns(monkeypatch, capsys, tmp_path, columns):
    monkeypatch.setattr(experiments, "dvc_experiments", lambda root: _exp_show())
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["exps", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= columns and max(len(line) for line in lines) > 60
