"""Segmentation metrics for binary tumour masks: confusion counts, slice and patient (3-D) Dice, the largest
3-D component, and the headline summary.

Everything flows through one per-slice count table (one row per 2-D slice: ``patient_id``, ``slice``,
``tp``, ``fp``, ``fn``, ``tn``, ``true_pixels``, ``pred_pixels`` and optionally a detection ``score``, the input
of ``lggseg.metrics.detection``), so validation during training and the evaluation stage compute Dice the
same way:

    masks --slice_counts / SliceCountAccumulator--> table --> slice_dice / patient_table / segmentation_summary

Pixel counts come from ``segmentation_models_pytorch.metrics.get_stats``; only the pooling over slices and
patients is written here. A patient is the 3-D volume formed by all of its slices, so per-patient metrics
pool the pixel counts of every slice before dividing.

Empty-mask convention (used everywhere below): a ratio whose denominator is zero is 1.0 when truth and
prediction are both empty (nothing to find, nothing found) and 0.0 otherwise. With this rule a slice or
patient without tumour scores Dice 1.0 only if the prediction is empty too, and any false positive on a
tumour-free slice gives 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from segmentation_models_pytorch.metrics import get_stats

COUNT_COLUMNS = ("tp", "fp", "fn", "tn")
TABLE_COLUMNS = ("patient_id", "slice", *COUNT_COLUMNS, "true_pixels", "pred_pixels")


def _check_binary_masks(name: str, mask: torch.Tensor) -> None:
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N, 1, H, W), got {tuple(mask.shape)}")
    if torch.is_floating_point(mask) or torch.is_complex(mask):
        raise ValueError(f"{name} must be 0/1 integer or bool (threshold probabilities first), got {mask.dtype}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"{name} must contain only 0 and 1")


def slice_counts(pred: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-slice pixel counts of binary masks.

    pred, target: (N, 1, H, W) tensors of 0/1 (any integer dtype) or bool, on any device.
    Returns int64 arrays of shape (N,) keyed 'tp', 'fp', 'fn', 'tn' (computed by
    ``smp.metrics.get_stats(mode='binary')``).
    """
    _check_binary_masks("pred", pred)
    _check_binary_masks("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    # get_stats flattens with .view, which needs contiguous long tensors
    stats = get_stats(pred.long().contiguous(), target.long().contiguous(), mode="binary")
    return {name: stat[:, 0].cpu().numpy().astype(np.int64) for name, stat in zip(COUNT_COLUMNS, stats)}


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


class SliceCountAccumulator:
    """Collects per-slice counts batch by batch during validation or evaluation.

    ``add`` takes one batch of masks with the patient id and slice number of each slice; ``table`` returns
    the per-slice count table sorted by (patient_id, slice), so the batch order does not matter.
    """

    def __init__(self) -> None:
        self._batches: list[pd.DataFrame] = []
        self._has_scores: bool | None = None

    def add(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        patient_ids: Sequence[str],
        slices: Sequence[int],
        scores: np.ndarray | None = None,
    ) -> None:
        """Add one batch: pred/target (N, 1, H, W) 0/1 masks, patient_ids and slices of length N,
        scores (N,) optional per-slice detection scores (give them for every batch or for none)."""
        counts = slice_counts(pred, target)
        n = len(counts["tp"])
        patient_ids = [str(p) for p in _to_numpy(patient_ids).tolist()]
        slice_numbers = _to_numpy(slices).astype(np.int64)
        for name, values in (("patient_ids", patient_ids), ("slices", slice_numbers)):
            if len(values) != n:
                raise ValueError(f"{name} has length {len(values)}, but the batch has {n} slices")
        has_scores = scores is not None
        if self._has_scores is not None and has_scores != self._has_scores:
            raise ValueError("scores must be given for every batch or for none")
        self._has_scores = has_scores

        batch = pd.DataFrame({"patient_id": patient_ids, "slice": slice_numbers, **counts})
        batch["true_pixels"] = batch["tp"] + batch["fn"]
        batch["pred_pixels"] = batch["tp"] + batch["fp"]
        if has_scores:
            score_values = _to_numpy(scores).astype(np.float64).reshape(-1)
            if len(score_values) != n:
                raise ValueError(f"scores has length {len(score_values)}, but the batch has {n} slices")
            batch["score"] = score_values
        self._batches.append(batch)

    def table(self) -> pd.DataFrame:
        """Per-slice table: patient_id, slice, tp, fp, fn, tn, true_pixels, pred_pixels[, score].

        Raises ValueError when the same (patient_id, slice) was added twice.
        """
        columns = list(TABLE_COLUMNS) + (["score"] if self._has_scores else [])
        if not self._batches:
            dtypes = {"patient_id": object, "score": np.float64}
            return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, np.int64)) for c in columns})
        table = pd.concat(self._batches, ignore_index=True)[columns]
        duplicated = table.duplicated(["patient_id", "slice"])
        if duplicated.any():
            first = table[duplicated].iloc[0]
            raise ValueError(f"slice added twice: patient_id={first['patient_id']!r}, slice={first['slice']}")
        return table.sort_values(["patient_id", "slice"], kind="stable").reset_index(drop=True)


def _ratio(numerator, denominator, both_empty) -> np.ndarray:
    """numerator / denominator; where the denominator is 0: 1.0 if both masks are empty, else 0.0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    empty_value = np.where(both_empty, 1.0, 0.0)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, empty_value)


def _dice(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, dtype=np.int64) for x in (tp, fp, fn))
    return _ratio(2 * tp, 2 * tp + fp + fn, both_empty=(tp + fp + fn) == 0)


def _check_table(table: pd.DataFrame) -> None:
    missing = [c for c in ("patient_id", "tp", "fp", "fn") if c not in table.columns]
    if missing:
        raise ValueError(f"count table lacks columns {missing}")
    if len(table) == 0:
        raise ValueError("count table is empty")


def slice_dice(table: pd.DataFrame) -> np.ndarray:
    """Dice 2TP / (2TP + FP + FN) of every slice, shape (N,), in table row order.

    A slice with empty truth and empty prediction scores 1.0; empty truth with any false positive scores 0.0.
    """
    _check_table(table)
    return _dice(table["tp"].to_numpy(), table["fp"].to_numpy(), table["fn"].to_numpy())


def patient_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per-patient metrics with all slices of a patient pooled into one 3-D volume.

    Columns: patient_id, slices, tp, fp, fn, tn, true_pixels, pred_pixels, dice, iou, precision, recall;
    one row per patient, sorted by patient_id.
    dice = 2TP/(2TP+FP+FN), iou = TP/(TP+FP+FN), precision = TP/(TP+FP), recall = TP/(TP+FN).
    Zero denominators: 1.0 when the patient's truth and prediction are both empty, else 0.0 (so a patient
    without tumour but with false positives has precision 0 and recall 0; a patient whose tumour was
    missed entirely has precision 0 and recall 0).
    """
    _check_table(table)
    counts = table.groupby("patient_id", sort=True).agg(
        slices=("tp", "size"), tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"), tn=("tn", "sum")
    )
    patients = counts.reset_index()
    tp, fp, fn = (patients[c].to_numpy(dtype=np.int64) for c in ("tp", "fp", "fn"))
    both_empty = (tp + fp + fn) == 0
    patients["true_pixels"] = tp + fn
    patients["pred_pixels"] = tp + fp
    patients["dice"] = _dice(tp, fp, fn)
    patients["iou"] = _ratio(tp, tp + fp + fn, both_empty)
    patients["precision"] = _ratio(tp, tp + fp, both_empty)
    patients["recall"] = _ratio(tp, tp + fn, both_empty)
    return patients


def segmentation_summary(table: pd.DataFrame) -> dict[str, float]:
    """Headline segmentation metrics from a per-slice count table, as plain Python numbers.

    dice_patient_*: statistics over per-patient (3-D) Dice; quartiles use linear interpolation
    (numpy's default), iqr = q3 - q1.
    dice_slice_mean: mean per-slice Dice over all slices (empty/empty slices count as 1.0).
    dice_positive_slices_mean: mean per-slice Dice over slices whose truth is non-empty (nan if none).
    dice_pooled, precision_pooled, recall_pooled: micro averages over all pixels of all slices.
    iou_patient_mean: mean per-patient IoU.
    """
    patients = patient_table(table)
    per_slice = slice_dice(table)
    positive = (table["tp"] + table["fn"]).to_numpy() > 0
    tp, fp, fn = (int(table[c].sum()) for c in ("tp", "fp", "fn"))
    both_empty = tp + fp + fn == 0
    patient_dice = patients["dice"].to_numpy()
    q1, median, q3 = np.percentile(patient_dice, [25, 50, 75])
    return {
        "dice_patient_mean": float(patient_dice.mean()),
        "dice_patient_median": float(median),
        "dice_patient_q1": float(q1),
        "dice_patient_q3": float(q3),
        "dice_patient_iqr": float(q3 - q1),
        "dice_patient_min": float(patient_dice.min()),
        "dice_slice_mean": float(per_slice.mean()),
        "dice_positive_slices_mean": float(per_slice[positive].mean()) if positive.any() else float("nan"),
        "dice_pooled": float(_dice(tp, fp, fn)),
        "iou_patient_mean": float(patients["iou"].mean()),
        "precision_pooled": float(_ratio(tp, tp + fp, both_empty)),
        "recall_pooled": float(_ratio(tp, tp + fn, both_empty)),
        "n_patients": int(len(patients)),
        "n_slices": int(len(table)),
    }


def largest_component_3d(volume: np.ndarray, connectivity: int = 3) -> np.ndarray:
    """Keep only the largest connected 3-D component of a binary volume.

    volume: (S, H, W) binary array (bool or 0/1), slices in anatomical order.
    connectivity: 3 = 26-connected (default: voxels touching by a face, edge or corner), 2 = 18-, 1 = 6-connected.
    Returns an array of the same shape and dtype; an empty volume stays empty. Ties go to the component
    found first in C (slice, row, column) order.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must have shape (S, H, W), got {volume.shape}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, n_components = ndimage.label(volume != 0, structure=structure)
    if n_components <= 1:
        return volume.copy()
    sizes = np.bincount(labels.ravel())[1:]
    keep = labels == (int(np.argmax(sizes)) + 1)
    return np.where(keep, volume, np.zeros_like(volume))
