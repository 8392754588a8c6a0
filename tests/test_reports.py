"""Tests for the lggseg.evaluation.figures package: every figure is a real PNG on disk, tables format and order
as documented, and writers are atomic (no temp files, old outputs survive a failure)."""

from __future__ import annotations

import threading
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure

from lggseg.evaluation.figures.canvas import DPI, MAX_FIGURE_INCHES, PRED_COLOR, TRUTH_COLOR
from lggseg.evaluation.figures.comparison import (
    CI_LEGEND,
    COMPARISON_COLUMNS,
    COMPARISON_METRICS,
    METRIC_LABELS,
    comparison_chart_figure,
    comparison_chart_series,
    comparison_table,
    write_comparison,
)
from lggseg.evaluation.figures.dice import plot_dice_per_patient
from lggseg.evaluation.figures.overlays import (
    panel_title,
    plot_patient_montage,
    plot_patient_overlays,
    select_tumor_slices,
)
from lggseg.evaluation.figures.roc import plot_roc, roc_figure
from lggseg.evaluation.figures.training_history import plot_training_history
from lggseg.evaluation.intervals import paired_comparison

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLICE_SIZE = 64


# ------------------------------------------------------------------------------------------------ helpers


def make_patient(n_slices: int = 10, *, with_tumor: bool = True, as_float: bool = False):
    """Synthetic patient: noisy FLAIR with a bright disc in the middle slices; prediction slightly shifted."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:SLICE_SIZE, :SLICE_SIZE]
    flair = (rng.random((n_slices, SLICE_SIZE, SLICE_SIZE)) * 80).astype(np.uint8)
    truth = np.zeros(flair.shape, dtype=np.uint8)
    pred = np.zeros(flair.shape, dtype=np.uint8)
    if with_tumor:
        for position in range(n_slices // 4, n_slices - n_slices // 4):
            radius = 6 + 2 * min(position - n_slices // 4, n_slices - n_slices // 4 - 1 - position)
            truth[position] = (yy - 30) ** 2 + (xx - 32) ** 2 < radius**2
            pred[position] = (yy - 32) ** 2 + (xx - 33) ** 2 < (0.9 * radius) ** 2
            flair[position][truth[position] > 0] = 210
    if as_float:
        flair = flair.astype(np.float32) / 255.0
    slice_numbers = list(range(1, n_slices + 1))
    return flair, truth, pred, slice_numbers


def read_png(path: Path) -> np.ndarray:
    """Assert ``path`` is a PNG of sensible size and return its RGB pixels."""
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert 200 <= height <= 6000 and 200 <= width <= 6000, f"odd image size {width}x{height}"
    return image[..., :3]


def count_color(image: np.ndarray, color: str, tolerance: float = 0.15) -> int:
    distance = np.abs(image - np.asarray(to_rgb(color))).max(axis=-1)
    return int((distance < tolerance).sum())


def leftover_temp_files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.startswith(".") or path.suffix == ".tmp"]


def comparison_rows() -> list[dict]:
    return [
        {
            "architecture": "fpn",
            "val_dice_patient": 0.8012,
            "dice_patient_mean": 0.81,
            "dice_pooled": 0.8299,
            "detection_auc": 0.95,
            "epochs": 30,
        },
        {
            "architecture": "unet",
            "val_dice_patient": 0.8234,
            "dice_patient_mean": 0.82,
            "dice_pooled": 0.8461,
            "detection_auc": 0.9611,
            "epochs": 30,
            "detection_sensitivity": 0.9004,
        },
        {
            "architecture": "linknet",
            "val_dice_patient": 0.7,
            "dice_patient_mean": 0.69,
            "dice_pooled": 0.71,
            "detection_auc": 0.9,
            "epochs": 25,
        },
    ]


def full_comparison_rows(*, with_quartiles: bool = False) -> list[dict]:
    """Rows with every column COMPARISON_METRICS puts in the table (optionally the quartiles too)."""
    rows = []
    for architecture, shift in (("unet", 0.0), ("fpn", -0.01)):
        row = {
            "architecture": architecture,
            "val_dice_patient": 0.89 + shift,
            "dice_patient_mean": 0.95 + shift,
            "dice_patient_median": 0.95 + shift,
            "dice_patient_iqr": 0.02,
            "dice_patient_min": 0.93 + shift,
            "lcc_dice_patient_mean": 0.95 + shift,
            "dice_slice_mean": 0.98 + shift,
            "dice_positive_slices_mean": 0.91 + shift,
            "dice_pooled": 0.956 + shift,
            "iou_patient_mean": 0.905 + shift,
            "detection_accuracy": 0.99,
            "detection_sensitivity": 0.985,
            "detection_specificity": 0.995,
            "detection_auc": 1.0,
            "n_patients": 11,
        }
        if with_quartiles:
            row["dice_patient_q1"] = row["dice_patient_median"] - 0.012
            row["dice_patient_q3"] = row["dice_patient_median"] + 0.008
        rows.append(row)
    return rows


def with_intervals_rows(rows: list[dict], columns=("val_dice_patient", "dice_patient_mean", "dice_pooled")) -> list[dict]:
    """``rows`` with an asymmetric 95% interval (`<key>_ci_low` / `_ci_high`) around each of ``columns``."""
    for row in rows:
        for column in columns:
            row[f"{column}_ci_low"], row[f"{column}_ci_high"] = row[column] - 0.04, row[column] + 0.015
    return rows


def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table of ``markdown`` as rows of stripped cells (header first, the --- line dropped)."""
    tables, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            if not set(line) <= set("|:- "):
                current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def history_frame(n_epochs: int = 8, *, with_lr: bool = True) -> pd.DataFrame:
    epochs = np.arange(1, n_epochs + 1)
    frame = pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": np.linspace(1.0, 0.2, n_epochs),
            "val_loss": np.linspace(1.1, 0.4, n_epochs),
            "val_dice_slice": np.linspace(0.3, 0.75, n_epochs),
            "val_dice_patient": np.linspace(0.4, 0.8, n_epochs),
        }
    )
    if with_lr:
        frame["lr"] = np.geomspace(1e-3, 1e-5, n_epochs)
    return frame


# ----------------------------------------------------------------------------------------- patient views


@pytest.mark.parametrize("as_float", [False, True], ids=["uint8", "float"])
def test_overlays_write_png_with_both_contour_colours(tmp_path, as_float):
    flair, truth, pred, slice_numbers = make_patient(as_float=as_float)
    out = plot_patient_overlays(
        flair, truth, pred, slice_numbers, title="TCGA_CS_4941_19960909", out_path=tmp_path / "overlay.png"
    )
    assert out == tmp_path / "overlay.png"
    image = read_png(out)

    empty_flair, empty_truth, empty_pred, _ = make_patient(with_tumor=False, as_float=as_float)
    legend_only = read_png(
        plot_patient_overlays(
            empty_flair, empty_truth, empty_pred, slice_numbers, title="empty", out_path=tmp_path / "empty.png"
        )
    )
    # Only the legend carries the colours when nothing is segmented; with tumor the contours add many more.
    for color in (TRUTH_COLOR, PRED_COLOR):
        assert count_color(image, color) > 3 * count_color(legend_only, color) > 0


def test_overlays_of_patient_without_any_tumor(tmp_path):
    flair, truth, pred, slice_numbers = make_patient(with_tumor=False)
    out = plot_patient_overlays(
        flair, truth, pred, slice_numbers, title="no tumor", out_path=tmp_path / "overlay.png"
    )
    read_png(out)


def test_overlays_with_more_requested_slices_than_the_patient_has(tmp_path):
    flair, truth, pred, slice_numbers = make_patient(n_slices=2)
    out = plot_patient_overlays(
        flair, truth, pred, slice_numbers, title="short", out_path=tmp_path / "overlay.png", n_slices=6
    )
    two_panels = read_png(out)
    flair6, truth6, pred6, numbers6 = make_patient(n_slices=12)
    six_panels = read_png(
        plot_patient_overlays(
            flair6, truth6, pred6, numbers6, title="long", out_path=tmp_path / "six.png", n_slices=6
        )
    )
    # Two panels sit in one row; six fill a 3 x 2 grid, so the figure is about twice as tall.
    assert six_panels.shape[0] > 1.5 * two_panels.shape[0]


def test_select_tumor_slices_picks_largest_tumor_in_slice_order():
    truth = np.zeros((6, 8, 8), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[4, :4, :4] = 1  # 16 px
    pred[1, :3, :3] = 1  # 9 px, prediction only still counts
    truth[2, 0, 0] = 1  # 1 px
    pred[2, 0, 0] = 1  # same pixel: union stays 1 px
    assert select_tumor_slices(truth, pred, 2).tolist() == [1, 4]
    assert select_tumor_slices(truth, pred, 3).tolist() == [1, 2, 4]
    assert select_tumor_slices(truth, pred, 10).tolist() == [0, 1, 2, 3, 4, 5]


def test_select_tumor_slices_of_empty_patient_prefers_middle_slices():
    empty = np.zeros((9, 4, 4), dtype=np.uint8)
    assert select_tumor_slices(empty, empty, 3).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="n_slices"):
        select_tumor_slices(empty, empty, 0)


def test_panel_title_reports_per_slice_dice_or_empty():
    truth = np.zeros((4, 4), dtype=np.uint8)
    pred = np.zeros_like(truth)
    assert panel_title(17, truth, pred) == "slice 17  empty"
    truth[0, :2] = 1  # 2 px
    pred[0, :1] = 1  # 1 px overlapping -> Dice = 2*1/3
    assert panel_title(3, truth, pred) == "slice 3  Dice 0.67"
    assert panel_title(3, truth, np.zeros_like(truth)) == "slice 3  Dice 0.00"


def test_montage_grid_follows_columns(tmp_path):
    flair, truth, pred, slice_numbers = make_patient(n_slices=16)
    wide = read_png(
        plot_patient_montage(
            flair, truth, pred, slice_numbers, title="wide", out_path=tmp_path / "wide.png", columns=8
        )
    )
    tall = read_png(
        plot_patient_montage(
            flair, truth, pred, slice_numbers, title="tall", out_path=tmp_path / "tall.png", columns=2
        )
    )
    assert wide.shape[1] > wide.shape[0]  # 8 x 2 panels
    assert tall.shape[0] > 2 * tall.shape[1]  # 2 x 8 panels
    assert count_color(wide, TRUTH_COLOR) > 0 and count_color(wide, PRED_COLOR) > 0


def test_every_figure_fits_a_1400_px_window(tmp_path):
    """dvc plots' page shows image plots unscaled: none may be wider than MAX_FIGURE_INCHES at DPI (1200 px),
    however many slices, patients or architectures it shows."""
    assert MAX_FIGURE_INCHES * DPI <= 1200
    flair, truth, pred, slice_numbers = make_patient(n_slices=40)
    many_patients = pd.DataFrame({"patient_id": [f"P{index:03d}" for index in range(60)],
                                  "dice": np.linspace(0.2, 0.95, 60)})
    rows = full_comparison_rows()
    rows += [{**rows[0], "architecture": name} for name in ("linknet", "deeplabv3plus", "manet")]
    written = [
        plot_patient_montage(flair, truth, pred, slice_numbers, title="m", out_path=tmp_path / "montage.png"),
        plot_patient_overlays(flair, truth, pred, slice_numbers, title="o", out_path=tmp_path / "overlay.png"),
        plot_dice_per_patient(many_patients, tmp_path / "dice.png"),
        plot_training_history(history_frame(), tmp_path / "history.png", title="h"),
        plot_roc(pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]}), 0.5, tmp_path / "roc.png", title="r"),
    ]
    write_comparison(comparison_table(rows), tmp_path, champion="unet")
    for path in [*written, tmp_path / "comparison.png"]:
        assert read_png(path).shape[1] <= MAX_FIGURE_INCHES * DPI, path.name
    montage = read_png(tmp_path / "montage.png")
    assert montage.shape[0] > montage.shape[1]  # 40 slices: more rows (7 x 6), not a wider figure


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, t, p, s: (f, t[:, :10], p, s), "shape mismatch"),
        (lambda f, t, p, s: (f, t, p, s[:-1]), "slices"),
        (lambda f, t, p, s: (f.astype(np.float32), t, p, s), r"\[0, 1\]"),  # 0..255 floats are not [0, 1]
        (lambda f, t, p, s: (f, t * 3, p, s), "binary"),
        (lambda f, t, p, s: (f[0], t[0], p[0], s), r"\(S, H, W\)"),
    ],
    ids=["mask-shape", "slice-count", "float-range", "non-binary", "2d"],
)
def test_patient_views_reject_bad_input(tmp_path, change, message):
    arrays = change(*make_patient())
    for plot in (plot_patient_overlays, plot_patient_montage):
        with pytest.raises(ValueError, match=message):
            plot(*arrays, title="bad", out_path=tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_figures_are_identical_when_rendered_from_threads(tmp_path):
    """No pyplot state: concurrent renders must not bleed into each other."""
    flair, truth, pred, slice_numbers = make_patient()
    serial = plot_patient_overlays(
        flair, truth, pred, slice_numbers, title="patient", out_path=tmp_path / "serial.png"
    ).read_bytes()
    errors: list[BaseException] = []

    def render(index: int) -> None:
        try:
            plot_patient_overlays(
                flair, truth, pred, slice_numbers, title="patient", out_path=tmp_path / f"thread{index}.png"
            )
        except BaseException as error:  # collected and re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=render, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index in range(4):
        assert (tmp_path / f"thread{index}.png").read_bytes() == serial


def test_no_pyplot_figures_are_left_open(tmp_path):
    import matplotlib.pyplot as plt

    plt.close("all")
    flair, truth, pred, slice_numbers = make_patient()
    plot_patient_overlays(flair, truth, pred, slice_numbers, title="p", out_path=tmp_path / "o.png")
    plot_training_history(history_frame(), tmp_path / "h.png", title="h")
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------------------- metric figures


@pytest.mark.parametrize("with_institution", [True, False])
def test_dice_per_patient_writes_png(tmp_path, with_institution):
    per_patient = pd.DataFrame(
        {
            "patient_id": [f"TCGA_CS_{index:04d}_20000101" for index in range(12)],
            "dice": np.linspace(0.3, 0.95, 12),
        }
    )
    per_patient.loc[5, "dice"] = np.nan  # e.g. undefined Dice must not crash the chart
    if with_institution:
        per_patient["institution"] = ["CS", "DU", "HT"] * 4
    out = plot_dice_per_patient(per_patient, tmp_path / "dice.png")
    assert out == tmp_path / "dice.png"
    read_png(out)


def test_dice_per_patient_missing_column_keeps_old_file(tmp_path):
    out = tmp_path / "dice.png"
    good = pd.DataFrame({"patient_id": ["a", "b"], "dice": [0.8, 0.6]})
    plot_dice_per_patient(good, out)
    before = out.read_bytes()
    with pytest.raises(KeyError, match="dice"):
        plot_dice_per_patient(good.rename(columns={"dice": "volume_dice"}), out)
    assert out.read_bytes() == before
    assert leftover_temp_files(tmp_path) == []


@pytest.mark.parametrize("with_lr", [True, False])
def test_training_history_writes_png(tmp_path, with_lr):
    history = history_frame(with_lr=with_lr)
    history.loc[[1, 3], ["val_loss", "val_dice_slice", "val_dice_patient"]] = np.nan  # validation skipped
    read_png(plot_training_history(history, tmp_path / "history.png", title="unet"))


def test_training_history_single_epoch(tmp_path):
    read_png(plot_training_history(history_frame(1), tmp_path / "history.png", title="unet"))


def test_training_history_missing_column_names_it(tmp_path):
    out = tmp_path / "history.png"
    plot_training_history(history_frame(), out, title="unet")
    before = out.read_bytes()
    with pytest.raises(KeyError, match="val_dice_patient"):
        plot_training_history(history_frame().drop(columns="val_dice_patient"), out, title="unet")
    assert out.read_bytes() == before


def test_roc_axes_are_padded_so_a_perfect_curve_stays_visible():
    perfect = pd.DataFrame({"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]})
    ax = roc_figure(perfect, 1.0, title="perfect").axes[0]
    for low, high in (ax.get_xlim(), ax.get_ylim()):
        assert low < 0 and high > 1  # the curve along x=0 and y=1 is off the frame
    curve = next(line for line in ax.get_lines() if line.get_label() == "AUC = 1.000")
    assert curve.get_zorder() > max(spine.get_zorder() for spine in ax.spines.values())
    assert ax.get_xticks().min() == 0 and ax.get_xticks().max() == 1  # ticks stay on the [0, 1] scale


def test_roc_marks_its_points_and_states_the_auc():
    perfect = pd.DataFrame({"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]})
    ax = roc_figure(perfect, 1.0, title="perfect").axes[0]
    curve, chance = ax.get_lines()
    assert curve.get_marker() == "o" and curve.get_linewidth() >= 2.5  # the corner point is seen, not implied
    assert list(chance.get_xdata()) == [0, 1] and list(chance.get_ydata()) == [0, 1]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["AUC = 1.000", "chance"]


def test_roc_writes_png(tmp_path):
    fpr = np.linspace(0, 1, 30)
    roc = pd.DataFrame({"fpr": fpr, "tpr": np.sqrt(fpr)})
    read_png(plot_roc(roc, 0.912, tmp_path / "roc.png", title="slice detection"))
    with pytest.raises(KeyError, match="tpr"):
        plot_roc(roc[["fpr"]], 0.912, tmp_path / "roc2.png", title="x")
    assert not (tmp_path / "roc2.png").exists()


# ------------------------------------------------------------------------------------------- comparison


def test_comparison_table_orders_columns_and_rows():
    table = comparison_table(comparison_rows())
    assert table["architecture"].tolist() == ["unet", "fpn", "linknet"]
    assert table.columns.tolist() == [
        "architecture",
        "val_dice_patient",
        "dice_patient_mean",
        "dice_pooled",
        "detection_sensitivity",
        "detection_auc",
        "epochs",
    ]
    assert np.isnan(table.loc[table["architecture"] == "fpn", "detection_sensitivity"].item())


def test_comparison_table_rejects_incomplete_or_duplicate_rows():
    rows = comparison_rows()
    del rows[1]["val_dice_patient"]
    with pytest.raises(KeyError, match="val_dice_patient"):
        comparison_table(rows)
    with pytest.raises(ValueError, match="fpn"):
        comparison_table(comparison_rows() + [comparison_rows()[0]])
    with pytest.raises(ValueError):
        comparison_table([])


def test_write_comparison_markdown_csv_and_chart(tmp_path):
    table = comparison_table(comparison_rows())
    paths = write_comparison(table, tmp_path / "compare", champion="unet")
    assert paths == {
        "markdown": tmp_path / "compare" / "comparison.md",
        "csv": tmp_path / "compare" / "comparison.csv",
        "chart": tmp_path / "compare" / "comparison.png",
    }
    markdown = paths["markdown"].read_text(encoding="utf-8")
    for architecture in ("unet", "fpn", "linknet"):
        assert architecture in markdown

    headline, *details = markdown_tables(markdown)
    assert headline[0] == ["architecture", "test Dice per patient, mean (%) [95% CI]",
                           "validation Dice per patient, mean (%) [95% CI]", "champion"]
    # best validation Dice first; 0.82 -> 82.0 (trailing zero kept), 0.8234 -> 82.3; one champion mark
    assert headline[1:] == [["**unet**", "82.0", "82.3", "yes (best validation Dice)"],
                            ["fpn", "81.0", "80.1", ""], ["linknet", "69.0", "70.0", ""]]
    unet = {header: row for table in details for header, row in zip(table[0], table[1], strict=True)}
    fpn = {header: row for table in details for header, row in zip(table[0], table[2], strict=True)}
    # the rest, keys as in comparison.csv: 0.8461 -> 84.6, AUC with 3 decimals, counts untouched
    assert unet == {"architecture": "unet", "dice_pooled (%)": "84.6", "detection_sensitivity (%)": "90.0",
                    "detection_auc": "0.961", "epochs": "30"}
    assert fpn["detection_sensitivity (%)"] == "n/a"  # fpn has no detection_sensitivity
    assert "Data: **not recorded**" in markdown  # no data source given

    assert "VALIDATION" in markdown and "never by test" in markdown
    assert "Buda et al. 2019" in markdown and "84 ± 2%" in markdown and "82-84%" in markdown
    assert "](comparison.png)" in markdown

    round_trip = pd.read_csv(paths["csv"])
    pd.testing.assert_frame_equal(round_trip, table, check_exact=True)

    read_png(paths["chart"])
    assert leftover_temp_files(tmp_path / "compare") == []


def test_write_comparison_without_champion(tmp_path):
    table = comparison_table(comparison_rows())
    paths = write_comparison(table, tmp_path, champion=None)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "(champion)" not in markdown
    assert "No champion" in markdown


def test_write_comparison_failure_keeps_previous_outputs(tmp_path):
    table = comparison_table(comparison_rows())
    paths = write_comparison(table, tmp_path, champion="unet")
    before = {name: path.read_bytes() for name, path in paths.items()}

    with pytest.raises(ValueError, match="resnet"):
        write_comparison(table, tmp_path, champion="resnet")
    with pytest.raises(KeyError, match="val_dice_patient"):
        write_comparison(table.drop(columns="val_dice_patient"), tmp_path, champion="unet")

    assert {name: path.read_bytes() for name, path in paths.items()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["comparison.csv", "comparison.md", "comparison.png"]


def test_comparison_columns_all_have_labels():
    assert set(COMPARISON_METRICS) <= set(METRIC_LABELS)
    table = comparison_table(full_comparison_rows(with_quartiles=True))
    assert table.columns.tolist() == list(COMPARISON_COLUMNS)


def test_comparison_chart_series_are_dice_scores_with_readable_labels():
    table = comparison_table(full_comparison_rows())
    series = comparison_chart_series(table)
    assert [column for _, column in series] == [
        "val_dice_patient",
        "dice_patient_mean",
        "dice_patient_median",
        "lcc_dice_patient_mean",
        "dice_slice_mean",
        "dice_positive_slices_mean",
        "dice_pooled",
    ]  # no IQR (a spread), no minimum, no IoU: only Dice scores of the model
    labels = dict((column, label) for label, column in series)
    assert labels["dice_patient_mean"] == "test Dice per patient (mean)"
    assert labels["val_dice_patient"] == "validation Dice per patient (mean)"
    for label, column in series:
        assert "_" not in label and column not in label and "Dice" in label

    sparse = comparison_table(comparison_rows())  # only some Dice columns present
    assert [column for _, column in comparison_chart_series(sparse)] == [
        "val_dice_patient", "dice_patient_mean", "dice_pooled"
    ]
    with pytest.raises(ValueError, match="Dice columns"):
        comparison_chart_series(table.drop(columns=[column for _, column in series]))


def _legend_texts(figure: Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_comparison_chart_draws_one_bar_per_dice_score_with_readable_legend():
    table = comparison_table(full_comparison_rows())
    figure = comparison_chart_figure(table, "unet")
    ax = figure.axes[0]
    series = comparison_chart_series(table)
    bar_groups = [container for container in ax.containers if isinstance(container, BarContainer)]
    assert [container.get_label() for container in bar_groups] == [label for label, _ in series]
    for container, (_, column) in zip(bar_groups, series, strict=True):
        assert [bar.get_height() for bar in container] == pytest.approx(table[column].tolist())

    legend = _legend_texts(figure)
    assert [label for label, _ in series] == [text for text in legend if not text.startswith("Buda")]
    assert not any("_" in text for text in legend)
    assert not any("iqr" in text.lower() or "inter-quartile" in text for text in legend)  # no quartiles, no bar

    ticks = {label.get_text(): label for label in ax.get_xticklabels()}
    assert set(ticks) == {"unet\n(champion)", "fpn"}
    assert ticks["unet\n(champion)"].get_fontweight() == "bold"


def test_comparison_chart_error_bars_are_the_bootstrap_intervals_of_the_table():
    """The whiskers are the `<key>_ci_low` / `_ci_high` intervals comparison.md reports (not the quartiles)."""
    with_ci = ("val_dice_patient", "dice_patient_mean", "dice_pooled")
    table = comparison_table(with_intervals_rows(full_comparison_rows(with_quartiles=True), with_ci))
    table.loc[1, "dice_pooled_ci_low"] = np.nan  # an interval that could not be estimated: no whisker
    figure = comparison_chart_figure(table, None)
    ax = figure.axes[0]
    error_bars = [container for container in ax.containers if isinstance(container, ErrorbarContainer)]
    bars = {container.get_label(): container for container in ax.containers if isinstance(container, BarContainer)}
    assert len(error_bars) == len(with_ci)  # one set per metric with an interval; the median has none here
    for container, column in zip(error_bars, with_ci, strict=True):
        known = table[f"{column}_ci_low"].notna().to_numpy()
        centres = [bar.get_x() + bar.get_width() / 2 for bar in bars[METRIC_LABELS[column]]]
        segments = container.lines[2][0].get_segments()
        assert len(segments) == known.sum()
        for segment, centre, low, high in zip(segments, np.asarray(centres)[known],
                                              table[f"{column}_ci_low"][known], table[f"{column}_ci_high"][known],
                                              strict=True):
            assert segment[:, 0] == pytest.approx([centre] * 2)
            assert sorted(segment[:, 1]) == pytest.approx([low, high])
    legend = _legend_texts(figure)
    assert legend.count(CI_LEGEND) == 1 and legend[-1] == CI_LEGEND and "bootstrap" in CI_LEGEND
    assert not any("quartile" in text for text in legend)
    assert not any("(champion)" in label.get_text() for label in ax.get_xticklabels())


@pytest.mark.parametrize("source", ["synthetic", "kaggle"])
def test_comparison_chart_and_page_name_the_data(tmp_path, source):
    """On synthetic data the figure says so and leaves off the Buda et al. band (measured on real MRI)."""
    table = comparison_table(with_intervals_rows(full_comparison_rows()))
    data_sources = {"unet": source, "fpn": source}
    figure = comparison_chart_figure(table, "unet", data_sources)
    ax = figure.axes[0]
    assert f"data: {source}" in figure.get_suptitle()
    buda = [text for text in _legend_texts(figure) if text.startswith("Buda")]
    markdown = write_comparison(table, tmp_path, champion="unet", data_sources=data_sources)["markdown"].read_text()
    assert f"Data: **{source}**" in markdown
    if source == "synthetic":
        assert "SYNTHETIC" in ax.get_title() and "not MRI" in ax.get_title()
        assert buda == [] and not any(str(patch.get_label()).startswith("Buda") for patch in ax.patches)
        assert "not MRI" in markdown and "for real scans" in markdown
    else:
        assert ax.get_title() == "" and buda == ["Buda et al. 2019, U-Net on real MRI: test Dice per patient 82-84%"]
        assert "not MRI" not in markdown
    mixed = comparison_chart_figure(table, "unet", {"unet": "kaggle", "fpn": "synthetic"})
    assert "unet: kaggle, fpn: synthetic" in mixed.get_suptitle() and "SYNTHETIC" in mixed.axes[0].get_title()


def _series(values, name="TCGA"):
    return pd.Series(values, index=[f"{name}_{index:02d}" for index in range(len(values))])


def test_paired_verdict_never_contradicts_its_numbers(tmp_path):
    """4 patients, unet ahead on every one: the bootstrap interval excludes 0, but the exact Wilcoxon test cannot
    go below p = 2 / 2**4 = 0.125. The page must not call that "no difference" next to an interval above 0."""
    fpn = np.array([0.90, 0.85, 0.93, 0.88])
    paired = paired_comparison(_series(fpn + [0.03, 0.05, 0.04, 0.045]), _series(fpn), "unet", "fpn")
    assert paired["ci_low"] > 0 and paired["wilcoxon_p"] == pytest.approx(0.125)
    table = comparison_table(comparison_rows())
    markdown = write_comparison(table, tmp_path, champion="unet", paired=[paired])["markdown"].read_text()
    (sentence,) = [line for line in markdown.splitlines() if line.startswith("- ") and "Wilcoxon" in line]
    assert "No significant difference" not in sentence and "is better" not in sentence
    assert sentence.startswith("- **Not established** whether unet and fpn differ")
    assert "the bootstrap interval excludes 0 but the Wilcoxon test does not reach p < 0.05" in sentence
    assert "the smallest p this test can give is 0.125" in sentence
    assert "a model is called better only when the interval excludes 0 and p < 0.05" in sentence
    assert f"95% bootstrap CI [{paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}]" in sentence


def test_paired_verdicts_when_both_tests_agree():
    rng = np.random.default_rng(3)
    dice = rng.uniform(0.5, 0.95, 16)
    clear = paired_comparison(_series(dice + 0.08 + rng.normal(0, 0.01, 16)), _series(dice), "unet", "fpn")
    assert clear["verdict"].startswith("**unet is better** on these test patients: both tests agree")
    noise = paired_comparison(_series(dice + rng.normal(0, 0.05, 16)), _series(dice), "unet", "fpn")
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["wilcoxon_p"] >= 0.05
    assert noise["verdict"].startswith("**No significant difference** between unet and fpn on these test patients: "
                                       "the interval includes 0 and p >= 0.05")
    assert "smallest p" not in noise["verdict"]  # 16 patients can reach p < 0.05: no floor to mention


def test_comparison_markdown_explains_every_column_key(tmp_path):
    table = comparison_table(with_intervals_rows(full_comparison_rows(with_quartiles=True)))
    markdown = write_comparison(table, tmp_path, champion="unet")["markdown"].read_text(encoding="utf-8")
    tables = markdown_tables(markdown)
    headline, details = tables[0][0], [header for table in tables[1:] for header in table[0]]
    assert headline == ["architecture", "test Dice per patient, mean (%) [95% CI]",
                        "validation Dice per patient, mean (%) [95% CI]", "test patients", "champion"]
    assert tables[0][1][1] == "95.0 [91.0, 96.5]"  # the interval in the cell, never as raw _ci_ columns
    # every other metric in the detail tables under its comparison.csv key, none wider than 7 columns
    shown = {"dice_patient_mean", "val_dice_patient", "n_patients"} | {h.removesuffix(" (%)") for h in details}
    assert set(COMPARISON_METRICS) <= shown and "dice_patient_iqr (%)" in details
    assert not any("_ci_" in header for header in details)
    assert max(len(table[0]) for table in tables) <= 7
    for column in COMPARISON_METRICS:
        assert f"- `{column}`: {METRIC_LABELS[column]}" in markdown
    assert "- `dice_patient_iqr`: test Dice per patient (inter-quartile range" in markdown


# ------------------------------------------------------------------------------------------- atomic writes


def test_render_failure_midway_keeps_old_png(tmp_path, monkeypatch):
    flair, truth, pred, slice_numbers = make_patient()
    out = plot_patient_overlays(flair, truth, pred, slice_numbers, title="p", out_path=tmp_path / "o.png")
    before = out.read_bytes()

    def broken_savefig(self, fname, **kwargs):
        fname.write(PNG_MAGIC + b"half a picture")
        raise RuntimeError("disk full while rendering")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_patient_overlays(flair, truth, pred, slice_numbers, title="p", out_path=out)
    assert out.read_bytes() == before
    assert leftover_temp_files(tmp_path) == []
