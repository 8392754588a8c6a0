"""The ROC curve of slice-level tumour detection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lggseg.evaluation.figures.canvas import new_figure, require_columns, save_figure

ROC_AXIS_PAD = 0.03  # ROC axes span [-pad, 1 + pad] so a curve along the edges stays visible


def plot_roc(roc: pd.DataFrame, auc: float, out_path: Path, *, title: str) -> Path:
    """ROC curve of slice-level tumor detection with the chance diagonal; AUC in the legend."""
    return save_figure(roc_figure(roc, auc, title=title), out_path)


def roc_figure(roc: pd.DataFrame, auc: float, *, title: str) -> Figure:
    """The figure plot_roc writes; axes span [-ROC_AXIS_PAD, 1 + ROC_AXIS_PAD] on both sides."""
    require_columns(roc, ["fpr", "tpr"], "roc")
    if roc.empty:
        raise ValueError("roc has no rows")
    figure = new_figure(5.0, 5.0)
    ax = figure.subplots()
    auc_text = f"AUC = {auc:.3f}" if auc is not None and math.isfinite(auc) else "AUC n/a"
    # A perfect curve runs along x=0 and y=1: padded limits keep it off the frame, zorder above the grid/spines.
    # markers show the operating points, so a perfect curve (0,0) -> (0,1) -> (1,1) reads as one at the corner
    ax.plot(roc["fpr"], roc["tpr"], color="#4c78a8", linewidth=2.5, marker="o", markersize=4, label=auc_text,
            zorder=3)
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
