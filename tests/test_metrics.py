"""Metrics checked against small examples worked out by hand (arithmetic in the comments)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lggseg.metrics.detection import choose_detection_threshold, detection_metrics, roc_points
from lggseg.metrics.segmentation import (
    SliceCountAccumulator,
    largest_component_3d,
    patient_table,
    segmentation_summary,
    slice_counts,
    slice_dice,
)


def masks(*slices: list[list[int]]) -> torch.Tensor:
    """Stack 2-D 0/1 lists into a (N, 1, H, W) long tensor."""
    return torch.tensor(slices, dtype=torch.long).unsqueeze(1)


def count_table(rows: list[tuple[str, int, int, int, int]], pixels_per_slice: int = 100) -> pd.DataFrame:
    """Per-slice table from (patient_id, slice, tp, fp, fn) rows; tn fills up the slice."""
    table = pd.DataFrame(rows, columns=["patient_id", "slice", "tp", "fp", "fn"])
    table["tn"] = pixels_per_slice - table["tp"] - table["fp"] - table["fn"]
    table["true_pixels"] = table["tp"] + table["fn"]
    table["pred_pixels"] = table["tp"] + table["fp"]
    return table


# Two patients, two slices each (tp, fp, fn):
#   A/0: 3, 1, 0  -> slice Dice 6/7        A/1: 0, 0, 0 -> 1.0 (both empty)
#   B/0: 1, 0, 3  -> slice Dice 2/5        B/1: 0, 4, 0 -> 0.0 (false positives on empty truth)
# Patient A pooled: tp 3, fp 1, fn 0 -> Dice 6/7, IoU 3/4
# Patient B pooled: tp 1, fp 4, fn 3 -> Dice 2/9, IoU 1/8
# All pixels:       tp 4, fp 5, fn 3 -> Dice 8/16 = 1/2, precision 4/9, recall 4/7
TWO_PATIENTS = [("A", 0, 3, 1, 0), ("A", 1, 0, 0, 0), ("B", 0, 1, 0, 3), ("B", 1, 0, 4, 0)]


def test_slice_counts_match_hand_count():
    pred = masks([[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 1, 1]])
    target = masks([[1, 0, 0], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]])
    counts = slice_counts(pred, target)
    # slice 0: pred {00,01}, truth {00,10}: tp 1 (00), fp 1 (01), fn 1 (10), tn 6 - 3 = 3
    # slice 1: pred {11,12}, truth empty: tp 0, fp 2, fn 0, tn 4
    assert counts["tp"].tolist() == [1, 0]
    assert counts["fp"].tolist() == [1, 2]
    assert counts["fn"].tolist() == [1, 0]
    assert counts["tn"].tolist() == [3, 4]
    assert all(v.dtype == np.int64 for v in counts.values())
    bool_counts = slice_counts(pred.bool(), target.bool())
    assert {k: v.tolist() for k, v in bool_counts.items()} == {k: v.tolist() for k, v in counts.items()}


def test_slice_counts_accept_non_contiguous_masks():
    pred = masks([[1, 0], [1, 1]]).transpose(2, 3)  # [[1, 1], [0, 1]]
    target = masks([[1, 1], [0, 0]])
    # tp at (0,0),(0,1) -> 2; fp at (1,1) -> 1; fn 0; tn 1
    counts = slice_counts(pred, target)
    assert [int(counts[k][0]) for k in ("tp", "fp", "fn", "tn")] == [2, 1, 0, 1]


@pytest.mark.parametrize(
    "pred, message",
    [
        (torch.zeros(2, 4, 4, dtype=torch.long), "shape"),
        (torch.zeros(2, 2, 4, 4, dtype=torch.long), "shape"),
        (torch.full((2, 1, 4, 4), 0.7), "threshold"),
        (torch.full((2, 1, 4, 4), 2, dtype=torch.long), "only 0 and 1"),
    ],
)
def test_slice_counts_reject_bad_masks(pred, message):
    with pytest.raises(ValueError, match=message):
        slice_counts(pred, torch.zeros(2, 1, 4, 4, dtype=torch.long))


def test_slice_dice_empty_conventions():
    table = count_table([("A", 0, 0, 0, 0), ("A", 1, 0, 5, 0), ("A", 2, 0, 0, 5), ("A", 3, 2, 2, 0)])
    # both empty -> 1; FP on empty truth -> 0; missed tumour -> 0; 2*2/(4+2) = 2/3
    np.testing.assert_allclose(slice_dice(table), [1.0, 0.0, 0.0, 2 / 3])


def test_slice_dice_from_masks():
    empty = [[0, 0], [0, 0]]
    pred = masks(empty, [[1, 0], [0, 0]])
    target = masks(empty, empty)
    accumulator = SliceCountAccumulator()
    accumulator.add(pred, target, ["P", "P"], [0, 1])
    np.testing.assert_allclose(slice_dice(accumulator.table()), [1.0, 0.0])


def test_patient_table_pools_slices():
    patients = patient_table(count_table(TWO_PATIENTS)).set_index("patient_id")
    assert patients.loc["A", ["slices", "tp", "fp", "fn", "true_pixels", "pred_pixels"]].tolist() == [2, 3, 1, 0, 3, 4]
    assert patients.loc["B", ["slices", "tp", "fp", "fn", "true_pixels", "pred_pixels"]].tolist() == [2, 1, 4, 3, 4, 5]
    np.testing.assert_allclose(patients["dice"], [6 / 7, 2 / 9])
    np.testing.assert_allclose(patients["iou"], [3 / 4, 1 / 8])
    # precision tp/(tp+fp): A 3/4, B 1/5; recall tp/(tp+fn): A 3/3, B 1/4
    np.testing.assert_allclose(patients["precision"], [3 / 4, 1 / 5])
    np.testing.assert_allclose(patients["recall"], [1.0, 1 / 4])


def test_patient_table_empty_conventions():
    table = count_table(
        [("clean", 0, 0, 0, 0), ("clean", 1, 0, 0, 0), ("false_alarm", 0, 0, 3, 0), ("missed", 0, 0, 0, 3)]
    )
    patients = patient_table(table).set_index("patient_id")
    assert patients.loc["clean", ["dice", "iou", "precision", "recall"]].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert patients.loc["false_alarm", ["dice", "iou", "precision", "recall"]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert patients.loc["missed", ["dice", "iou", "precision", "recall"]].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_summary_slice_patient_and_pooled_dice_differ():
    summary = segmentation_summary(count_table(TWO_PATIENTS))
    # per-slice mean (6/7 + 1 + 2/5 + 0) / 4 = (30/35 + 49/35) / 4 = 79/140 ~ 0.564
    assert summary["dice_slice_mean"] == pytest.approx(79 / 140)
    # slices with tumour in truth: A/0 and B/0 -> (6/7 + 2/5) / 2 = 22/35 ~ 0.629
    assert summary["dice_positive_slices_mean"] == pytest.approx(22 / 35)
    # per-patient mean (6/7 + 2/9) / 2 = (54/63 + 14/63) / 2 = 34/63 ~ 0.540
    assert summary["dice_patient_mean"] == pytest.approx(34 / 63)
    assert summary["dice_patient_median"] == pytest.approx(34 / 63)
    # linear quartiles of [2/9, 6/7]: 2/9 + {0.25, 0.75} * 40/63 -> 24/63, 44/63; IQR 20/63
    assert summary["dice_patient_q1"] == pytest.approx(24 / 63)
    assert summary["dice_patient_q3"] == pytest.approx(44 / 63)
    assert summary["dice_patient_iqr"] == pytest.approx(20 / 63)
    assert summary["dice_patient_min"] == pytest.approx(2 / 9)
    assert summary["dice_pooled"] == pytest.approx(1 / 2)
    assert summary["iou_patient_mean"] == pytest.approx((3 / 4 + 1 / 8) / 2)  # 7/16
    assert summary["precision_pooled"] == pytest.approx(4 / 9)
    assert summary["recall_pooled"] == pytest.approx(4 / 7)
    assert summary["n_patients"] == 2 and summary["n_slices"] == 4


def test_summary_is_plain_json():
    summary = segmentation_summary(count_table(TWO_PATIENTS))
    assert set(summary) == {
        "dice_patient_mean", "dice_patient_median", "dice_patient_q1", "dice_patient_q3", "dice_patient_iqr",
        "dice_patient_min", "dice_slice_mean", "dice_positive_slices_mean", "dice_pooled", "iou_patient_mean",
        "precision_pooled", "recall_pooled", "n_patients", "n_slices",
    }  # fmt: skip
    assert all(type(v) in (float, int) for v in summary.values())
    assert json.loads(json.dumps(summary)) == summary


def test_summary_without_tumour_slices():
    summary = segmentation_summary(count_table([("A", 0, 0, 0, 0), ("A", 1, 0, 0, 0)]))
    assert math.isnan(summary["dice_positive_slices_mean"])
    assert summary["dice_pooled"] == 1.0 and summary["dice_patient_mean"] == 1.0


def test_summary_rejects_empty_table():
    with pytest.raises(ValueError, match="empty"):
        segmentation_summary(SliceCountAccumulator().table())


@given(
    st.lists(
        st.tuples(st.sampled_from("ABC"), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
        min_size=1,
        max_size=12,
    )
)
def test_iou_equals_dice_over_two_minus_dice(rows):
    # IoU = TP/(TP+FP+FN) and Dice = 2TP/(2TP+FP+FN) give IoU = Dice / (2 - Dice), also for empty/empty (1 = 1/1)
    table = count_table([(p, i, tp, fp, fn) for i, (p, tp, fp, fn) in enumerate(rows)], pixels_per_slice=200)
    patients = patient_table(table)
    np.testing.assert_allclose(patients["iou"], patients["dice"] / (2 - patients["dice"]))
    assert ((patients["iou"] <= patients["dice"]) & (patients["dice"] <= 1)).all()


def test_accumulator_two_batches_equal_one_shot():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 2, (5, 1, 8, 8), generator=generator)
    target = torch.randint(0, 2, (5, 1, 8, 8), generator=generator)
    target[2] = 0  # one tumour-free slice
    patient_ids = ["B", "A", "A", "B", "A"]
    slices = [3, 0, 1, 4, 2]
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5])

    one_shot = SliceCountAccumulator()
    one_shot.add(pred, target, patient_ids, slices, scores)
    batched = SliceCountAccumulator()  # batches added in reverse order; the table is sorted regardless
    batched.add(pred[3:], target[3:], patient_ids[3:], torch.tensor(slices[3:]), torch.tensor(scores[3:]))
    batched.add(pred[:3], target[:3], tuple(patient_ids[:3]), slices[:3], scores[:3])

    table = one_shot.table()
    pd.testing.assert_frame_equal(batched.table(), table)
    assert list(table.columns) == ["patient_id", "slice", "tp", "fp", "fn", "tn", "true_pixels", "pred_pixels", "score"]
    assert list(zip(table["patient_id"], table["slice"])) == [("A", 0), ("A", 1), ("A", 2), ("B", 3), ("B", 4)]
    # row ("A", 1) is input slice 2, whose truth was cleared
    assert table.loc[1, "true_pixels"] == 0 and table.loc[1, "fn"] == 0 and table.loc[1, "score"] == 0.2
    assert (table["true_pixels"] == target.sum(dim=(1, 2, 3))[[1, 2, 4, 0, 3]].numpy()).all()
    assert (table[["tp", "fp", "fn", "tn"]].sum(axis=1) == 64).all()


def test_accumulator_without_scores_has_no_score_column():
    accumulator = SliceCountAccumulator()
    accumulator.add(masks([[1]]), masks([[1]]), ["A"], [0])
    assert "score" not in accumulator.table().columns


def test_accumulator_rejects_inconsistent_input():
    accumulator = SliceCountAccumulator()
    with pytest.raises(ValueError, match="patient_ids"):
        accumulator.add(masks([[1]], [[0]]), masks([[1]], [[0]]), ["A"], [0, 1])
    accumulator.add(masks([[1]]), masks([[1]]), ["A"], [0], scores=np.array([0.3]))
    with pytest.raises(ValueError, match="every batch"):
        accumulator.add(masks([[1]]), masks([[1]]), ["A"], [1])
    accumulator.add(masks([[0]]), masks([[1]]), ["A"], [0], scores=np.array([0.1]))
    with pytest.raises(ValueError, match="slice added twice.*'A'.*slice=0"):
        accumulator.table()


def test_largest_component_drops_small_blob_keeps_multi_slice_tumour():
    volume = np.zeros((3, 6, 6), dtype=np.uint8)
    volume[0, 1:3, 1:3] = 1  # tumour: 4 voxels on slice 0,
    volume[1, 1:3, 1:4] = 1  # 6 on slice 1,
    volume[2, 2, 2] = 1  # 1 on slice 2 -> 11 voxels joined through the slices
    volume[1, 5, 5] = 1  # separate blob: 3 voxels, far from the tumour
    volume[0:2, 5, 5] = 1
    volume[1, 5, 4] = 1
    expected = volume.copy()
    expected[:, 5, 4:] = 0
    result = largest_component_3d(volume)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == np.uint8 and result.sum() == 11


def test_largest_component_uses_26_connectivity_by_default():
    volume = np.zeros((3, 5, 5), dtype=bool)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 2, 2] = True  # diagonal chain: one 26-component of 3
    volume[0, 4, 3:5] = True  # face-connected pair: 2 voxels
    chain = volume.copy()
    chain[0, 4, 3:5] = False
    np.testing.assert_array_equal(largest_component_3d(volume), chain)
    # with 6-connectivity the chain falls apart into three single voxels, so the pair wins
    pair = volume & ~chain
    np.testing.assert_array_equal(largest_component_3d(volume, connectivity=1), pair)


def test_largest_component_of_empty_volume_is_empty():
    volume = np.zeros((2, 4, 4), dtype=bool)
    assert not largest_component_3d(volume).any()
    with pytest.raises(ValueError, match="shape"):
        largest_component_3d(np.zeros((4, 4)))


# Detection example: 4 slices without tumour (scores 0.1, 0.2, 0.5, 0.65), 3 with (0.4, 0.7, 0.9).
# AUC = P(positive score > negative score): 0.9 and 0.7 beat all 4, 0.4 beats 2 -> 10/12 = 5/6.
# Youden's J per threshold (flag score >= t): t=0.9 -> 1/3 - 0; t=0.7 -> 2/3 - 0 (best);
# t=0.65 -> 2/3 - 1/4; t=0.5 -> 2/3 - 2/4; t=0.4 -> 1 - 2/4 = 1/2; t=0.2 -> 1 - 3/4.
DETECTION_SCORES = np.array([0.1, 0.2, 0.5, 0.65, 0.4, 0.7, 0.9])
DETECTION_LABELS = np.array([0, 0, 0, 0, 1, 1, 1])


def test_choose_detection_threshold_maximises_youden():
    assert choose_detection_threshold(DETECTION_SCORES, DETECTION_LABELS) == 0.7


def test_choose_detection_threshold_breaks_ties_to_highest():
    # labels 0,0,1,1 with scores 0.1,0.4,0.35,0.8: t=0.8 -> J 1/2 - 0; t=0.35 -> 1 - 1/2 = 1/2; pick 0.8
    assert choose_detection_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.8


def test_choose_detection_threshold_rejects_single_class():
    with pytest.raises(ValueError, match="only \\[1\\]"):
        choose_detection_threshold(np.array([0.2, 0.9]), np.array([1, 1]))


def test_detection_metrics_at_chosen_threshold():
    metrics = detection_metrics(DETECTION_SCORES, DETECTION_LABELS, threshold=0.7)
    # flagged: 0.7 and 0.9 (both tumour) -> tp 2, fp 0, fn 1 (0.4), tn 4
    confusion = [metrics[f"detection_{k}"] for k in ("tp", "fp", "fn", "tn")]
    assert confusion == [2, 0, 1, 4]
    assert metrics["detection_accuracy"] == pytest.approx(6 / 7)
    assert metrics["detection_sensitivity"] == pytest.approx(2 / 3)
    assert metrics["detection_specificity"] == 1.0
    assert metrics["detection_auc"] == pytest.approx(5 / 6)
    assert metrics["detection_threshold"] == 0.7
    assert json.loads(json.dumps(metrics)) == metrics


def test_detection_metrics_single_class_gives_nan_auc():
    metrics = detection_metrics(np.array([0.2, 0.9, 0.6]), np.array([1, 1, 1]), threshold=0.5)
    assert math.isnan(metrics["detection_auc"]) and math.isnan(metrics["detection_specificity"])
    # flagged 0.9, 0.6 -> tp 2, fn 1
    assert metrics["detection_sensitivity"] == pytest.approx(2 / 3)
    assert [metrics[f"detection_{k}"] for k in ("tp", "fn", "fp", "tn")] == [2, 1, 0, 0]


def test_roc_points_trace_the_curve_with_known_area():
    points = roc_points(DETECTION_SCORES, DETECTION_LABELS)
    assert list(points.columns) == ["fpr", "tpr", "threshold"]
    assert (points.iloc[0]["fpr"], points.iloc[0]["tpr"]) == (0.0, 0.0)
    assert (points.iloc[-1]["fpr"], points.iloc[-1]["tpr"]) == (1.0, 1.0)
    assert (np.diff(points["fpr"]) >= 0).all() and (np.diff(points["tpr"]) >= 0).all()
    area = float(np.sum(np.diff(points["fpr"]) * (points["tpr"].to_numpy()[1:] + points["tpr"].to_numpy()[:-1]) / 2))
    assert area == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="only \\[0\\]"):
        roc_points(np.array([0.1, 0.2]), np.array([0, 0]))
