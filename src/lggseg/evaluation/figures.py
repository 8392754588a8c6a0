"""Figures and the architecture comparison table.

Every writer renders in memory first and then replaces its target atomically (temp file in the same folder,
then ``os.replace``), so a failed run never leaves a half-written PNG or table behind for DVC to cache.
Figures are plain ``matplotlib.figure.Figure`` objects on an Agg canvas: no pyplot global state, safe to call
from threads, nothing left open afterwards.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from lggseg.core.atomic import write_bytes

TRUTH_COLOR = "#00e05a"  # green: ground truth (radiologist)
PRED_COLOR = "#ff2bd6"  # magenta: model; green/magenta stays distinct for red-green colour blindness
DPI = 120

COMPARISON_METRICS = (  # the columns of reports/comparison.{md,csv}, related columns together
    "val_dice_patient", "dice_patient_mean", "dice_patient_median", "dice_patient_q1", "dice_patient_q3",
    "dice_patient_iqr", "dice_patient_min", "lcc_dice_patient_mean", "dice_slice_mean", "dice_positive_slices_mean",
    "dice_pooled", "iou_patient_mean", "detection_accuracy", "detection_sensitivity", "detection_specificity",
    "detection_auc", "n_patients",
)
COMPARISON_COLUMNS = ("architecture", *COMPARISON_METRICS)
# Column-name fragments of metrics that live in [0, 1] and read best as percentages.
_PERCENT_METRIC_MARKERS = ("dice", "iou", "jaccard", "accuracy", "sensitivity", "specificity", "precision", "recall")
METRIC_LABELS = {  # metric key (metrics.json, comparison.csv) -> what it means, for legends and the markdown
    "val_dice_patient": "validation Dice per patient (mean)",
    "dice_patient_mean": "test Dice per patient (mean)",
    "dice_patient_median": "test Dice per patient (median)",
    "dice_patient_q1": "test Dice per patient (1st quartile)",
    "dice_patient_q3": "test Dice per patient (3rd quartile)",
    "dice_patient_iqr": "test Dice per patient (inter-quartile range, Q3 - Q1, percentage points)",
    "dice_patient_min": "test Dice per patient (worst patient)",
    "lcc_dice_patient_mean": "test Dice per patient, largest 3-D tumor component only (mean)",
    "dice_slice_mean": "test Dice per slice (mean)",
    "dice_positive_slices_mean": "test Dice per slice, tumor slices only (mean)",
    "dice_pooled": "test Dice pooled over all pixels",
    "iou_patient_mean": "test IoU per patient (mean)",
    "detection_accuracy": "test tumor-slice detection: accuracy",
    "detection_sensitivity": "test tumor-slice detection: sensitivity",
    "detection_specificity": "test tumor-slice detection: specificity",
    "detection_auc": "test tumor-slice detection: ROC AUC",
    "n_patients": "test patients",
}
# The Dice scores drawn as bars in comparison.png, in legend order. Spreads (IQR) and extremes (min) are not
# Dice scores of a model and are left out; the quartiles become a Q1-Q3 error bar on the median bar.
CHART_DICE_METRICS = (
    "val_dice_patient",
    "dice_patient_mean",
    "dice_patient_median",
    "lcc_dice_patient_mean",
    "dice_slice_mean",
    "dice_positive_slices_mean",
    "dice_pooled",
)
BUDA_2019_DICE_RANGE = (0.82, 0.84)  # mean per-patient Dice of U-Net in Buda et al. 2019
ROC_AXIS_PAD = 0.03  # ROC axes span [-pad, 1 + pad] so a curve along the edges stays visible


# --------------------------------------------------------------------------------------------------- writing


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _render_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor=figure.get_facecolor())
    return buffer.getvalue()


def _save_figure(figure: Figure, out_path: Path) -> Path:
    return write_bytes(out_path, _render_png(figure))


def _require_columns(frame: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise KeyError(f"{what} is missing column(s) {missing}; it has {list(frame.columns)}")


# -------------------------------------------------------------------------------------------- patient views


def _check_patient_arrays(
    flair: np.ndarray, truth: np.ndarray, pred: np.ndarray, slices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Validate shapes and return (flair, truth bool, pred bool, display vmax)."""
    flair = np.asarray(flair)
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if flair.ndim != 3:
        raise ValueError(f"flair must be (S, H, W), got shape {flair.shape}")
    if truth.shape != flair.shape or pred.shape != flair.shape:
        raise ValueError(f"shape mismatch: flair {flair.shape}, truth {truth.shape}, pred {pred.shape}")
    if len(slices) != flair.shape[0]:
        raise ValueError(f"slices has {len(slices)} entries but the volume has {flair.shape[0]} slices")
    if flair.shape[0] == 0:
        raise ValueError("patient volume has no slices")
    for name, mask in (("truth", truth), ("pred", pred)):
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must be binary (0/1), found values {np.unique(mask)[:5]}")
    if flair.dtype == np.uint8:
        vmax = 255.0
    elif np.issubdtype(flair.dtype, np.floating):
        low, high = float(np.nanmin(flair)), float(np.nanmax(flair))
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"float flair must lie in [0, 1], found range [{low:.3g}, {high:.3g}]")
        vmax = 1.0
    else:
        raise ValueError(f"flair must be uint8 or float in [0, 1], got dtype {flair.dtype}")
    return flair, truth.astype(bool), pred.astype(bool), vmax


def slice_dice(truth: np.ndarray, pred: np.ndarray) -> float | None:
    """Dice of one binary slice; None when truth and prediction are both empty (Dice undefined)."""
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    total = int(truth.sum()) + int(pred.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(truth, pred).sum()) / total


def panel_title(slice_number: int, truth: np.ndarray, pred: np.ndarray) -> str:
    """'slice <n>  Dice <d>' with the per-slice Dice, or 'slice <n>  empty' when neither mask has tumor."""
    dice = slice_dice(truth, pred)
    return f"slice {slice_number}  empty" if dice is None else f"slice {slice_number}  Dice {dice:.2f}"


def select_tumor_slices(truth: np.ndarray, pred: np.ndarray, n_slices: int) -> np.ndarray:
    """Positions (in slice order) of the ``n_slices`` slices with the largest tumor area in truth or prediction.

    Ties, including a patient with no tumor at all, go to slices nearer the middle of the stack, where the
    brain is largest, rather than to the first slices (mostly skull base).
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    tumor_pixels = np.logical_or(truth, pred).reshape(truth.shape[0], -1).sum(axis=1)
    positions = np.arange(truth.shape[0])
    distance_to_middle = np.abs(positions - (truth.shape[0] - 1) / 2)
    ranked = np.lexsort((positions, distance_to_middle, -tumor_pixels))
    return np.sort(ranked[:n_slices])


def _draw_slice(ax, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, vmax: float, linewidth: float) -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
    # contour() warns on constant input, and an empty mask has nothing to outline anyway.
    if truth.any():
        ax.contour(truth.astype(np.float32), levels=[0.5], colors=[TRUTH_COLOR], linewidths=linewidth)
    if pred.any():
        ax.contour(pred.astype(np.float32), levels=[0.5], colors=[PRED_COLOR], linewidths=linewidth)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")


def _overlay_legend_handles() -> list[Line2D]:
    return [
        Line2D([], [], color=TRUTH_COLOR, linewidth=2.0, label="ground truth"),
        Line2D([], [], color=PRED_COLOR, linewidth=2.0, label="prediction"),
    ]


def plot_patient_overlays(
    flair: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    slices: Sequence[int],
    *,
    title: str,
    out_path: Path,
    n_slices: int = 6,
) -> Path:
    """The ``n_slices`` slices with most tumor (truth or prediction), in slice order, with both contours.

    flair (S,H,W) uint8 or float in [0,1]; truth/pred (S,H,W) binary; ``slices`` are the slice numbers shown
    in the panel titles ('slice <n>  Dice <d>', or 'slice <n>  empty' when both masks are empty).
    """
    flair, truth, pred, vmax = _check_patient_arrays(flair, truth, pred, slices)
    chosen = select_tumor_slices(truth, pred, n_slices)
    columns = min(len(chosen), 3)
    rows = math.ceil(len(chosen) / columns)
    figure = _new_figure(3.2 * columns, 3.3 * rows + 0.7)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, position in zip(axes, chosen, strict=False):
        _draw_slice(ax, flair[position], truth[position], pred[position], vmax, linewidth=1.6)
        ax.set_title(panel_title(int(slices[position]), truth[position], pred[position]), fontsize=10)
    for ax in axes[len(chosen) :]:
        ax.set_axis_off()
    figure.suptitle(title, fontsize=12)
    figure.legend(handles=_overlay_legend_handles(), loc="outside lower center", ncols=2, frameon=False)
    return _save_figure(figure, out_path)


def plot_patient_montage(
    flair: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    slices: Sequence[int],
    *,
    title: str,
    out_path: Path,
    columns: int = 8,
) -> Path:
    """All slices of one patient in a grid of small panels, same overlay colours as the overlays."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    flair, truth, pred, vmax = _check_patient_arrays(flair, truth, pred, slices)
    n_total = flair.shape[0]
    columns = min(columns, n_total)
    rows = math.ceil(n_total / columns)
    figure = _new_figure(1.6 * columns, 1.6 * rows + 0.7)
    figure.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=0.01)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for position, ax in enumerate(axes[:n_total]):
        _draw_slice(ax, flair[position], truth[position], pred[position], vmax, linewidth=0.8)
        ax.text(
            0.03, 0.97, str(slices[position]), transform=ax.transAxes, ha="left", va="top",
            fontsize=7, color="white",
        )
    for ax in axes[n_total:]:
        ax.set_axis_off()
    figure.suptitle(title, fontsize=12)
    figure.legend(handles=_overlay_legend_handles(), loc="outside lower center", ncols=2, frameon=False)
    return _save_figure(figure, out_path)


# ------------------------------------------------------------------------------------------- metric figures


def plot_dice_per_patient(
    per_patient: pd.DataFrame, out_path: Path, *, title: str = "Per-patient Dice (test)"
) -> Path:
    """Sorted bar chart of per-patient Dice with the mean as a line; bars coloured by institution if known."""
    _require_columns(per_patient, ["patient_id", "dice"], "per_patient")
    if per_patient.empty:
        raise ValueError("per_patient has no rows")
    ordered = per_patient.sort_values("dice", ascending=False, na_position="last", kind="mergesort")
    ordered = ordered.reset_index(drop=True)
    dice = ordered["dice"].astype(float).to_numpy()
    positions = np.arange(len(ordered))

    figure = _new_figure(max(6.0, 0.28 * len(ordered) + 3.5), 4.8)
    ax = figure.subplots()
    legend_handles: list = []
    if "institution" in ordered.columns:
        institutions = list(dict.fromkeys(ordered["institution"].astype(str)))
        palette = _categorical_colors(len(institutions))
        color_of = dict(zip(institutions, palette, strict=True))
        colors = [color_of[name] for name in ordered["institution"].astype(str)]
        legend_handles += [Patch(color=color_of[name], label=name) for name in institutions]
    else:
        colors = ["#4c78a8"] * len(ordered)
    ax.bar(positions, np.nan_to_num(dice, nan=0.0), color=colors, width=0.8)
    for position in positions[np.isnan(dice)]:
        ax.text(position, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")

    n_valid = int(np.isfinite(dice).sum())
    if n_valid:
        mean = float(np.nanmean(dice))
        mean_line = ax.axhline(mean, color="black", linestyle="--", linewidth=1.2)
        mean_line.set_label(f"mean {100 * mean:.1f}% (n={n_valid})")
        legend_handles.insert(0, mean_line)
    ax.set_xticks(positions, ordered["patient_id"].astype(str), rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(ordered) - 0.4)
    ax.set_ylim(0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("Dice (3-D, per patient)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    figure.legend(handles=legend_handles, loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title(title)
    return _save_figure(figure, out_path)


def plot_cross_validation(oof: pd.DataFrame, summary: pd.DataFrame, out_path: Path, *, title: str) -> Path:
    """Out-of-fold per-patient Dice per architecture: a box, every patient as a dot (coloured by fold), the
    mean with its 95% interval, and the range Buda et al. 2019 report."""
    _require_columns(oof, ["architecture", "dice", "fold"], "out-of-fold table")
    architectures = summary["architecture"].astype(str).tolist()
    figure = _new_figure(max(7.5, 2.2 * len(architectures) + 4.5), 5.2)
    ax = figure.subplots()
    low, high = BUDA_2019_DICE_RANGE
    ax.axhspan(low, high, color="0.86", zorder=0, label=f"Buda et al. 2019, U-Net (mean {100 * low:.0f}-{100 * high:.0f}%)")
    folds = sorted(oof["fold"].unique())
    palette = dict(zip(folds, _categorical_colors(len(folds)), strict=True))
    jitter = np.random.default_rng(0)
    for position, arch in enumerate(architectures):
        table = oof[oof["architecture"] == arch]
        ax.boxplot(table["dice"].to_numpy(dtype=float), positions=[position], widths=0.5, showfliers=False,
                   medianprops={"color": "black"}, zorder=2)
        x = position + jitter.uniform(-0.18, 0.18, len(table))
        ax.scatter(x, table["dice"], s=14, c=[palette[f] for f in table["fold"]], alpha=0.8, zorder=3, linewidths=0)
        row = summary[summary["architecture"] == arch].iloc[0]
        if row["dice_patient_mean_ci_low"] is not None and not pd.isna(row["dice_patient_mean_ci_low"]):
            ax.errorbar(position + 0.33, row["dice_patient_mean"], capsize=4, color="black", fmt="D", markersize=5,
                        yerr=[[row["dice_patient_mean"] - row["dice_patient_mean_ci_low"]],
                              [row["dice_patient_mean_ci_high"] - row["dice_patient_mean"]]], zorder=4)
    ax.errorbar([], [], yerr=[], fmt="D", color="black", capsize=4, label="mean, 95% bootstrap interval")
    for fold in folds:
        ax.scatter([], [], s=14, color=palette[fold], label=f"fold {fold} patients")
    ax.set_xticks(range(len(architectures)), [f"{a}\n({int(n)} patients)" for a, n in
                                               zip(architectures, summary["n_patients"])])
    ax.set_xlim(-0.6, len(architectures) - 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("per-patient Dice (out of fold)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save_figure(figure, out_path)


def _categorical_colors(count: int) -> list:
    cmap = colormaps["tab10"] if count <= 10 else colormaps["tab20"]
    return [cmap(index % cmap.N) for index in range(count)]


def plot_training_history(history: pd.DataFrame, out_path: Path, *, title: str) -> Path:
    """Loss (train/val, plus lr on a faint log axis if present) and validation Dice per epoch; best epoch marked."""
    required = ["epoch", "train_loss", "val_loss", "val_dice_slice", "val_dice_patient"]
    _require_columns(history, required, "history")
    if history.empty:
        raise ValueError("history has no rows")
    history = history.sort_values("epoch", kind="mergesort")

    figure = _new_figure(11.0, 4.2)
    loss_ax, dice_ax = figure.subplots(1, 2)
    _plot_series(loss_ax, history, "train_loss", "train", "#4c78a8")
    _plot_series(loss_ax, history, "val_loss", "validation", "#f58518")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    loss_ax.grid(alpha=0.3)
    handles, labels = loss_ax.get_legend_handles_labels()
    if "lr" in history.columns and history["lr"].notna().any():
        lr_ax = loss_ax.twinx()
        lr_ax.plot(history["epoch"], history["lr"], color="0.6", linestyle=":", linewidth=1.2, label="learning rate")
        if (history["lr"].dropna() > 0).all():
            lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="0.45")
        lr_ax.tick_params(axis="y", colors="0.45", labelsize=8)
        lr_handles, lr_labels = lr_ax.get_legend_handles_labels()
        handles, labels = handles + lr_handles, labels + lr_labels
    loss_ax.legend(handles, labels, fontsize=8)

    _plot_series(dice_ax, history, "val_dice_patient", "per patient (3-D)", "#54a24b")
    _plot_series(dice_ax, history, "val_dice_slice", "per slice", "#b279a2")
    patient_dice = history["val_dice_patient"].astype(float)
    if patient_dice.notna().any():
        best = history.loc[patient_dice.idxmax()]
        dice_ax.axvline(best["epoch"], color="0.5", linestyle="--", linewidth=1.0)
        dice_ax.annotate(
            f"best epoch {best['epoch']:g}\n{100 * best['val_dice_patient']:.1f}%",
            xy=(best["epoch"], best["val_dice_patient"]), xytext=(6, -28), textcoords="offset points",
            fontsize=8, color="0.25",
        )
    dice_ax.set_ylim(0, 1.0)
    dice_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    dice_ax.set_xlabel("epoch")
    dice_ax.set_ylabel("Dice")
    dice_ax.set_title("Validation Dice")
    dice_ax.grid(alpha=0.3)
    dice_ax.legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=12)
    return _save_figure(figure, out_path)


def _plot_series(ax, history: pd.DataFrame, column: str, label: str, color: str) -> None:
    # Drop missing epochs (e.g. validation every k epochs) so the line stays connected.
    series = history[["epoch", column]].dropna()
    ax.plot(series["epoch"], series[column], marker="o", markersize=3, linewidth=1.5, color=color, label=label)


def plot_roc(roc: pd.DataFrame, auc: float, out_path: Path, *, title: str) -> Path:
    """ROC curve of slice-level tumor detection with the chance diagonal; AUC in the legend."""
    return _save_figure(roc_figure(roc, auc, title=title), out_path)


def roc_figure(roc: pd.DataFrame, auc: float, *, title: str) -> Figure:
    """The figure plot_roc writes; axes span [-ROC_AXIS_PAD, 1 + ROC_AXIS_PAD] on both sides."""
    _require_columns(roc, ["fpr", "tpr"], "roc")
    if roc.empty:
        raise ValueError("roc has no rows")
    figure = _new_figure(5.0, 5.0)
    ax = figure.subplots()
    auc_text = f"AUC = {auc:.3f}" if auc is not None and math.isfinite(auc) else "AUC n/a"
    # A perfect curve runs along x=0 and y=1: padded limits keep it off the frame, zorder above the grid/spines.
    ax.plot(roc["fpr"], roc["tpr"], color="#4c78a8", linewidth=2.0, label=auc_text, zorder=3)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1.0, label="chance", zorder=2)
    ax.set_xlim(-ROC_AXIS_PAD, 1 + ROC_AXIS_PAD)
    ax.set_ylim(-ROC_AXIS_PAD, 1 + ROC_AXIS_PAD)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    return figure


# ------------------------------------------------------------------------------------------- comparison


def comparison_table(rows: Sequence[dict]) -> pd.DataFrame:
    """One row per architecture, known metrics first (see COMPARISON_COLUMNS), best validation Dice first."""
    if not rows:
        raise ValueError("comparison_table needs at least one row")
    for index, row in enumerate(rows):
        for key in ("architecture", "val_dice_patient"):
            if key not in row:
                raise KeyError(f"comparison row {index} is missing {key!r}; it has {sorted(row)}")
    table = pd.DataFrame(list(rows))
    duplicated = table["architecture"][table["architecture"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"architecture listed more than once: {duplicated}")
    known = [column for column in COMPARISON_COLUMNS if column in table.columns]
    others = [column for column in table.columns if column not in COMPARISON_COLUMNS]
    table = table[known + others]
    table = table.sort_values("val_dice_patient", ascending=False, na_position="last", kind="mergesort")
    return table.reset_index(drop=True)


def _is_percent_metric(column: str) -> bool:
    lowered = column.lower()
    return "auc" not in lowered and any(marker in lowered for marker in _PERCENT_METRIC_MARKERS)


def _format_cell(column: str, value) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if "auc" in column.lower():
        return f"{float(value):.3f}"
    if _is_percent_metric(column):
        return f"{100 * float(value):.1f}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.6g}"


def _column_header(column: str) -> str:
    return f"{column} (%)" if _is_percent_metric(column) else column


def _markdown_table(table: pd.DataFrame, champion: str | None) -> str:
    """One column per metric; a metric with `<key>_ci_low` / `<key>_ci_high` columns shows its 95% interval
    in its own cell, `68.7 [58.0, 78.1]`."""
    with_interval = [c for c in table.columns if {f"{c}_ci_low", f"{c}_ci_high"} <= set(table.columns)]
    hidden = {f"{c}_ci_{end}" for c in with_interval for end in ("low", "high")}
    full, table = table, table[[c for c in table.columns if c not in hidden]]
    cells = pd.DataFrame(
        {column: [_format_cell(column, value) for value in table[column].tolist()] for column in table.columns}
    )
    for column in with_interval:
        low, high = ([_format_cell(column, v) for v in full[f"{column}_ci_{end}"].tolist()] for end in ("low", "high"))
        cells[column] = [v if lo == "n/a" else f"{v} [{lo}, {hi}]" for v, lo, hi in zip(cells[column], low, high)]
    cells["architecture"] = [
        f"**{name}** (champion)" if champion is not None and name == champion else str(name)
        for name in table["architecture"]
    ]
    cells.columns = [_column_header(column) for column in table.columns]
    numeric = [pd.api.types.is_numeric_dtype(table[column]) for column in table.columns]
    # tabulate comes with dvc (a hard dependency); disable_numparse keeps "82.0" from turning into "82".
    return cells.to_markdown(
        index=False,
        disable_numparse=True,
        colalign=["right" if is_numeric else "left" for is_numeric in numeric],
    )


def _column_glossary(table: pd.DataFrame) -> list[str]:
    """One markdown bullet per labelled column: the key (as in comparison.csv) and what it measures."""
    return [f"- `{column}`: {METRIC_LABELS[column]}" for column in table.columns if column in METRIC_LABELS]


def _comparison_markdown(table: pd.DataFrame, champion: str | None, chart_name: str, paired: Sequence[dict] = ()) -> str:
    if champion is None:
        champion_sentence = "No champion was selected."
    else:
        champion_sentence = f"Champion: **{champion}** (marked in the table)."
    lines = [
        "# Architecture comparison",
        "",
        _markdown_table(table, champion),
        "",
        *_column_glossary(table),
        "",
        f"{champion_sentence} The champion is chosen by per-patient Dice on the VALIDATION set "
        "(`val_dice_patient`), never by test metrics; the test columns are reported for information only.",
        "",
        "Brackets: 95% bootstrap confidence intervals over patients (BCa, 2000 resamples of whole patients, "
        "seeded; `<metric>_ci_low` / `_ci_high` in `comparison.csv`). With few test patients they are wide: "
        "a difference inside them is not a finding.",
        "",
        *(["## Is the difference real? (the same test patients, paired)", "",
           *[f"- {p['verdict']}" for p in paired], ""] if paired else []),
        "Headline metric: per-patient 3-D volume Dice (`dice_patient_mean`): Dice over all slices of a patient, "
        "averaged over patients, as in Buda et al. 2019 (Computers in Biology and Medicine 109:218-225), "
        "who report 82-84% mean with U-Net; two expert human readers agree at 84 ± 2%.",
        "",
        "Dice, IoU and detection accuracy/sensitivity/specificity are percentages with one decimal; "
        "AUC is shown with three decimals. Raw values are in `comparison.csv`.",
        "",
        f"![Dice metrics per architecture]({chart_name})",
        "",
    ]
    return "\n".join(lines)


def comparison_chart_series(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(readable label, column) of each Dice score in ``table`` that comparison.png draws as bars, in order."""
    series = [(METRIC_LABELS[column], column) for column in CHART_DICE_METRICS if column in table.columns]
    if not series:
        raise ValueError(
            f"comparison table has none of the Dice columns {list(CHART_DICE_METRICS)} to chart; "
            f"it has {list(table.columns)}"
        )
    return series


def comparison_chart_figure(table: pd.DataFrame, champion: str | None) -> Figure:
    """Grouped bars: one group per architecture, one bar per Dice score (see comparison_chart_series).

    The validation bar is hatched (it picks the champion); the others are test metrics. When the table has
    dice_patient_q1/q3, the median bar carries a Q1-Q3 error bar.
    """
    series = comparison_chart_series(table)
    architectures = table["architecture"].astype(str).tolist()
    n_bars = len(series)
    group_width = 0.84
    bar_width = group_width / n_bars
    positions = np.arange(len(architectures))
    figure = _new_figure(max(8.0, 1.6 + len(architectures) * (0.36 * n_bars + 0.5)), 6.4)
    ax = figure.subplots()
    low, high = BUDA_2019_DICE_RANGE
    ax.axhspan(
        low, high, color="0.86", zorder=0,
        label=f"Buda et al. 2019, U-Net test Dice per patient (mean {100 * low:.0f}-{100 * high:.0f}%)",
    )
    palette = _categorical_colors(n_bars)
    has_quartiles = {"dice_patient_q1", "dice_patient_q3"} <= set(table.columns)
    for index, (label, column) in enumerate(series):
        offsets = positions - group_width / 2 + (index + 0.5) * bar_width
        values = table[column].astype(float).to_numpy()
        is_validation = column.startswith("val_")
        ax.bar(
            offsets, np.nan_to_num(values, nan=0.0), width=bar_width * 0.92, color=palette[index],
            hatch="///" if is_validation else None, edgecolor="white" if is_validation else None,
            linewidth=0, label=label, zorder=2,
        )
        label_heights = values
        if column == "dice_patient_median" and has_quartiles:
            q1 = table["dice_patient_q1"].astype(float).to_numpy()
            q3 = table["dice_patient_q3"].astype(float).to_numpy()
            ax.errorbar(
                offsets, values, yerr=[values - q1, q3 - values], fmt="none", ecolor="black", elinewidth=1.0,
                capsize=3, zorder=3, label="test Dice per patient (inter-quartile range, Q1-Q3)",
            )
            label_heights = np.fmax(values, q3)  # the value sits above the whisker, not on it
        for offset, value, height in zip(offsets, values, label_heights, strict=True):
            text = "n/a" if np.isnan(value) else f"{100 * value:.1f}"
            ax.text(
                offset, 0.012 if np.isnan(value) else height + 0.012, text, rotation=90, ha="center",
                va="bottom", fontsize=7, color="0.25", zorder=4,
            )
    tick_labels = [f"{name}\n(champion)" if name == champion else name for name in architectures]
    ax.set_xticks(positions, tick_labels)
    for tick_label, name in zip(ax.get_xticklabels(), architectures, strict=True):
        if name == champion:
            tick_label.set_fontweight("bold")
    ax.set_xlim(-0.6, len(architectures) - 0.4)
    ax.set_ylim(0, 1.12)  # headroom above 100% for the value labels
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("Dice")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3, zorder=1)
    ax.set_axisbelow(True)
    figure.suptitle("Dice per architecture (champion chosen on validation Dice)", fontsize=12)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return figure


def _comparison_chart(table: pd.DataFrame, champion: str | None) -> bytes:
    return _render_png(comparison_chart_figure(table, champion))


def write_comparison(table: pd.DataFrame, out_dir: Path, *, champion: str | None,
                     paired: Sequence[dict] = ()) -> dict[str, Path]:
    """Write comparison.md, comparison.csv and comparison.png into ``out_dir``; returns their paths.

    Everything is rendered before anything is written, so a bad table leaves the previous files untouched.
    """
    _require_columns(table, ["architecture", "val_dice_patient"], "comparison table")
    if table.empty:
        raise ValueError("comparison table has no rows")
    if champion is not None and champion not in set(table["architecture"].astype(str)):
        raise ValueError(f"champion {champion!r} is not in the table's architectures {list(table['architecture'])}")
    out_dir = Path(out_dir)
    chart_path = out_dir / "comparison.png"
    chart_png = _comparison_chart(table, champion)
    markdown = _comparison_markdown(table, champion, chart_path.name, paired)
    csv_text = table.to_csv(index=False)
    return {
        "csv": write_bytes(out_dir / "comparison.csv", csv_text.encode("utf-8")),
        "chart": write_bytes(chart_path, chart_png),
        "markdown": write_bytes(out_dir / "comparison.md", markdown.encode("utf-8")),
    }
