"""Patient views: the slices with most tumour and the all-slice montage, ground truth and prediction outlined."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from lggseg.evaluation.figures.canvas import MAX_FIGURE_INCHES, PRED_COLOR, TRUTH_COLOR, new_figure, save_figure

MONTAGE_TILE_INCHES = 1.6  # 192 px per slice at the figures' DPI, six across: 1152 px


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


def _panel_dice(truth: np.ndarray, pred: np.ndarray) -> float | None:
    """Dice of one binary slice; None when truth and prediction are both empty (Dice undefined)."""
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    total = int(truth.sum()) + int(pred.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(truth, pred).sum()) / total


def panel_title(slice_number: int, truth: np.ndarray, pred: np.ndarray) -> str:
    """'slice <n>  Dice <d>' with the per-slice Dice, or 'slice <n>  empty' when neither mask has tumor."""
    dice = _panel_dice(truth, pred)
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
    figure = new_figure(3.2 * columns, 3.3 * rows + 0.7)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, position in zip(axes, chosen, strict=False):
        _draw_slice(ax, flair[position], truth[position], pred[position], vmax, linewidth=1.6)
        ax.set_title(panel_title(int(slices[position]), truth[position], pred[position]), fontsize=10)
    for ax in axes[len(chosen) :]:
        ax.set_axis_off()
    figure.suptitle(title, fontsize=12)
    figure.legend(handles=_overlay_legend_handles(), loc="outside lower center", ncols=2, frameon=False)
    return save_figure(figure, out_path)


def plot_patient_montage(
    flair: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    slices: Sequence[int],
    *,
    title: str,
    out_path: Path,
    columns: int = 6,
) -> Path:
    """All slices of one patient in a grid of small panels, same overlay colours as the overlays; tiles shrink
    so the figure stays within MAX_FIGURE_INCHES (more rows rather than a wider figure)."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    flair, truth, pred, vmax = _check_patient_arrays(flair, truth, pred, slices)
    n_total = flair.shape[0]
    columns = min(columns, n_total)
    rows = math.ceil(n_total / columns)
    tile = min(MONTAGE_TILE_INCHES, MAX_FIGURE_INCHES / columns)
    figure = new_figure(tile * columns, tile * rows + 0.7)
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
    return save_figure(figure, out_path)
