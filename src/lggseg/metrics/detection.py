"""Slice-level tumour detection metrics: the detection threshold, accuracy/sensitivity/specificity/AUC, ROC points.

Detection (does a slice contain tumour?) uses one score per slice, e.g. the maximum predicted probability;
a slice is called positive when ``score >= threshold``, the same rule as ``sklearn.metrics.roc_curve``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def _check_detection_inputs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if len(scores) == 0:
        raise ValueError("scores and labels are empty")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain nan or inf")
    if not np.isin(labels, [0, 1]).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(labels)[:10].tolist()}")
    return scores, labels.astype(np.int64)


def _require_both_classes(labels: np.ndarray, what: str) -> None:
    present = np.unique(labels).tolist()
    if len(present) < 2:
        raise ValueError(f"{what} needs slices with and without tumour; labels contain only {present}")


def choose_detection_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1, chosen on validation slices.

    scores: (N,) per-slice detection scores; labels: (N,) 1 where the slice's truth has tumour.
    Among the thresholds of ``roc_curve`` that flag at least one slice (the infinite one flags none);
    on ties the highest, i.e. most specific, threshold wins. Raises ValueError if labels hold one class.
    """
    scores, labels = _check_detection_inputs(scores, labels)
    _require_both_classes(labels, "choosing a detection threshold")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    finite = np.isfinite(thresholds)
    youden = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(youden))])


def detection_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Slice-level tumour detection metrics; a slice is called positive when score >= threshold.

    scores, labels: (N,) as in ``choose_detection_threshold``. Sensitivity is nan when no slice has
    tumour, specificity nan when every slice has tumour, and detection_auc nan when only one class is
    present (AUC is undefined then).
    """
    scores, labels = _check_detection_inputs(scores, labels)
    predicted = (scores >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(x) for x in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    one_class = len(np.unique(labels)) < 2
    return {
        "detection_accuracy": (tp + tn) / len(labels),
        "detection_sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "detection_specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "detection_auc": float("nan") if one_class else float(roc_auc_score(labels, scores)),
        "detection_threshold": float(threshold),
        "detection_tn": tn,
        "detection_fp": fp,
        "detection_fn": fn,
        "detection_tp": tp,
    }


def roc_points(scores: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """ROC curve as a table with columns fpr, tpr, threshold (for DVC plots), from ``roc_curve``.

    The first row is (0, 0) with threshold inf (no slice flagged). Raises ValueError if labels hold one class.
    """
    scores, labels = _check_detection_inputs(scores, labels)
    _require_both_classes(labels, "an ROC curve")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})
