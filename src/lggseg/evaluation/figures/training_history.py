"""The training-history chart: loss, learning rate and validation Dice per epoch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import PercentFormatter

from lggseg.evaluation.figures.canvas import MAX_FIGURE_INCHES, new_figure, require_columns, save_figure


def plot_training_history(history: pd.DataFrame, out_path: Path, *, title: str) -> Path:
    """Loss (train/val, plus lr on a faint log axis if present) and validation Dice per epoch; best epoch marked."""
    required = ["epoch", "train_loss", "val_loss", "val_dice_slice", "val_dice_patient"]
    require_columns(history, required, "history")
    if history.empty:
        raise ValueError("history has no rows")
    history = history.sort_values("epoch", kind="mergesort")

    figure = new_figure(MAX_FIGURE_INCHES, 4.2)
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
    return save_figure(figure, out_path)


def _plot_series(ax, history: pd.DataFrame, column: str, label: str, color: str) -> None:
    # Drop missing epochs (e.g. validation every k epochs) so the line stays connected.
    series = history[["epoch", column]].dropna()
    ax.plot(series["epoch"], series[column], marker="o", markersize=3, linewidth=1.5, color=color, label=label)
