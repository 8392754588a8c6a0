"""Dice charts: per-patient Dice of one architecture, and out-of-fold Dice per architecture (cross-validation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from lggseg.evaluation.figures.canvas import (
    BUDA_2019_DICE_RANGE,
    MAX_FIGURE_INCHES,
    categorical_colors,
    new_figure,
    require_columns,
    save_figure,
)


def plot_dice_per_patient(
    per_patient: pd.DataFrame, out_path: Path, *, title: str = "Per-patient Dice (test)"
) -> Path:
    """Sorted bar chart of per-patient Dice with the mean as a line; bars coloured by institution if known."""
    require_columns(per_patient, ["patient_id", "dice"], "per_patient")
    if per_patient.empty:
        raise ValueError("per_patient has no rows")
    ordered = per_patient.sort_values("dice", ascending=False, na_position="last", kind="mergesort")
    ordered = ordered.reset_index(drop=True)
    dice = ordered["dice"].astype(float).to_numpy()
    positions = np.arange(len(ordered))

    figure = new_figure(min(MAX_FIGURE_INCHES, max(6.0, 0.28 * len(ordered) + 3.5)), 4.8)
    ax = figure.subplots()
    legend_handles: list = []
    if "institution" in ordered.columns:
        institutions = list(dict.fromkeys(ordered["institution"].astype(str)))
        palette = categorical_colors(len(institutions))
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
    # beyond ~23 patients the width is capped: smaller labels instead of a wider figure
    ax.set_xticks(positions, ordered["patient_id"].astype(str), rotation=90, fontsize=max(4.0, min(7.0, 160 / len(ordered))))
    ax.set_xlim(-0.6, len(ordered) - 0.4)
    ax.set_ylim(0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("Dice (3-D, per patient)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    figure.legend(handles=legend_handles, loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title(title)
    return save_figure(figure, out_path)


def plot_cross_validation(oof: pd.DataFrame, summary: pd.DataFrame, out_path: Path, *, title: str) -> Path:
    """Out-of-fold per-patient Dice per architecture: a box, every patient as a dot (coloured by fold), the
    mean with its 95% interval, and the range Buda et al. 2019 report."""
    require_columns(oof, ["architecture", "dice", "fold"], "out-of-fold table")
    architectures = summary["architecture"].astype(str).tolist()
    figure = new_figure(min(MAX_FIGURE_INCHES, max(7.5, 2.2 * len(architectures) + 4.5)), 5.2)
    ax = figure.subplots()
    low, high = BUDA_2019_DICE_RANGE
    ax.axhspan(low, high, color="0.86", zorder=0, label=f"Buda et al. 2019, U-Net (mean {100 * low:.0f}-{100 * high:.0f}%)")
    folds = sorted(oof["fold"].unique())
    palette = dict(zip(folds, categorical_colors(len(folds)), strict=True))
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
    return save_figure(figure, out_path)
