import json

import numpy as np
import pandas as pd
import pytest
import torch

from lggseg import pipeline
from lggseg.data.preprocess import load_split, to_model_input
from lggseg.evaluation import HEADLINE_METRICS, SplitPredictions, choose_detection_rule, detection_scores
from lggseg.tracking import Tracker

from conftest import mlflow_client

REQUIRED_METRICS = {
    "dice_patient_mean", "dice_patient_median", "dice_slice_mean", "dice_positive_slices_mean", "dice_pooled",
    "iou_patient_mean", "detection_accuracy", "detection_sensitivity", "detection_specificity", "detection_auc",
}


def test_all_metrics_json_holds_every_number_and_metrics_json_the_headline(trained_project):
    paths, cfg = trained_project
    for arch in cfg.model.architectures:
        metrics = json.loads((paths.report_dir(arch) / "all_metrics.json").read_text())
        assert REQUIRED_METRICS <= set(metrics)
        assert all(isinstance(metrics[k], float) and 0 <= metrics[k] <= 1 for k in REQUIRED_METRICS)
        assert "lcc_dice_patient_mean" in metrics and metrics["detection_tp"] + metrics["detection_fn"] > 0
        # the DVC metrics file: headline only, in HEADLINE_METRICS order, so `dvc exp show` stays readable
        headline = json.loads((paths.report_dir(arch) / "metrics.json").read_text())
        assert list(headline) == list(HEADLINE_METRICS)
        assert headline == {k: metrics[k] for k in HEADLINE_METRICS}
    unet = json.loads((paths.report_dir("unet") / "metrics.json").read_text())
    assert unet["dice_patient_mean"] > 0.5  # the trained U-Net segments held-out synthetic patients


def test_per_patient_table_matches_the_headline(trained_project):
    paths, cfg = trained_project
    splits = json.loads(paths.splits_json.read_text())
    for arch in cfg.model.architectures:
        per_patient = pd.read_csv(paths.report_dir(arch) / "per_patient.csv")
        metrics = json.loads((paths.report_dir(arch) / "metrics.json").read_text())
        assert sorted(per_patient["patient_id"]) == sorted(splits["test"])  # test patients only
        assert per_patient["dice"].mean() == pytest.approx(metrics["dice_patient_mean"])
        assert per_patient["dice_lcc"].mean() == pytest.approx(metrics["lcc_dice_patient_mean"])
        roc = pd.read_csv(paths.report_dir(arch) / "roc.csv")
        assert {"fpr", "tpr"} <= set(roc.columns) and roc["fpr"].is_monotonic_increasing


def test_figures_are_written(trained_project):
    paths, cfg = trained_project
    for arch in cfg.model.architectures:
        figures = {p.name for p in (paths.report_dir(arch) / "figures").glob("*.png")}
        expected = {"dice_per_patient.png", "train_history.png", "roc.png"} | {
            f"{kind}_{label}.png" for kind in ("overlay", "montage") for label in ("best", "median", "worst")}
        assert expected <= figures
        assert all((paths.report_dir(arch) / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)


def test_test_metrics_and_artifacts_logged_into_the_training_run(trained_project):
    paths, cfg = trained_project
    client = mlflow_client(paths)
    for arch in cfg.model.architectures:
        run_id = json.loads((paths.model_dir(arch) / "mlflow_run.json").read_text())["run_id"]
        run = client.get_run(run_id)
        metrics = json.loads((paths.report_dir(arch) / "metrics.json").read_text())
        assert run.data.metrics["test_dice_patient_mean"] == pytest.approx(metrics["dice_patient_mean"])
        assert run.data.metrics["test_detection_auc"] == pytest.approx(metrics["detection_auc"])
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert {"evaluation/metrics.json", "evaluation/all_metrics.json", "evaluation/per_patient.csv",
                "evaluation/figures"} <= artifacts
        assert run.info.status == "FINISHED"
        # test_* names only test-split numbers; what was chosen on val says so
        assert "test_val_dice_patient" not in run.data.metrics and "test_detection_threshold" not in run.data.metrics
        assert "val_detection_threshold" in run.data.metrics and "best_val_dice_patient" in run.data.metrics


def test_experiment_opens_on_training_runs_in_the_ui(trained_project):
    paths, cfg = trained_project
    experiment = mlflow_client(paths).get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "per-patient" in experiment.tags["mlflow.note.content"]


def test_registry_holds_candidates_and_the_champion(trained_project):
    paths, cfg = trained_project
    client = mlflow_client(paths)
    for arch in cfg.model.architectures:
        version = client.get_model_version_by_alias(f"lgg-{arch}", "candidate")
        assert version.tags["architecture"] == arch and float(version.tags["test_dice_patient_mean"]) >= 0
        assert len(version.tags["data_fingerprint"]) == 16
    champion = client.get_model_version_by_alias("lgg-segmentation", "champion")
    val = {a: json.loads((paths.model_dir(a) / "train_summary.json").read_text())["val_dice_patient"]
           for a in cfg.model.architectures}
    assert champion.tags["architecture"] == max(val, key=val.get)  # chosen by validation, never by test
    comparison = (paths.reports / "comparison.md").read_text()
    assert all(arch in comparison for arch in cfg.model.architectures) and "(champion)" in comparison


def test_registered_models_load_and_segment(trained_project):
    paths, cfg = trained_project
    tracker = Tracker(cfg.mlflow, paths.root)
    images, masks, _ = load_split(paths.processed, "test")
    positive = np.flatnonzero(masks.reshape(len(masks), -1).max(axis=1))[:8]
    x = torch.from_numpy(to_model_input(images[positive]))
    truth = torch.from_numpy(np.asarray(masks[positive])).bool()
    for uri in ("models:/lgg-segmentation@champion", "models:/lgg-unet/1", "models:/lgg-fpn@candidate"):
        model = tracker.load_model(uri)  # a torch.export module, already in inference mode
        with torch.no_grad():
            pred = torch.sigmoid(model(x))[:, 0] > 0.5
        assert pred.shape == truth.shape
        dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        if uri != "models:/lgg-fpn@candidate":
            assert dice > 0.5, (uri, float(dice))


def test_rerunning_evaluation_adds_versions(trained_project):
    paths, cfg = trained_project
    client = mlflow_client(paths)
    before = {int(v.version) for v in client.search_model_versions("name='lgg-unet'")}
    pipeline.evaluate(cfg, paths, "unet")
    pipeline.compare(cfg, paths)
    after = {int(v.version) for v in client.search_model_versions("name='lgg-unet'")}
    assert after == before | {max(before) + 1}
    assert int(client.get_model_version_by_alias("lgg-unet", "candidate").version) == max(after)
    champions = client.search_model_versions("name='lgg-segmentation'")
    assert len(champions) >= 2


def _predictions(truth_area, pred_area, max_prob, size=64):
    n = len(truth_area)
    truth = np.zeros((n, size, size), np.uint8)
    pred = np.zeros((n, size, size), np.uint8)
    for i, (t, p) in enumerate(zip(truth_area, pred_area)):
        truth[i].flat[:t] = 1
        pred[i].flat[:p] = 1
    table = pd.DataFrame({"patient_id": ["P"] * n, "slice": range(1, n + 1), "institution": ["CS"] * n})
    return SplitPredictions(table=table, truth=truth, pred=pred, max_prob=np.asarray(max_prob, float),
                            images=np.zeros((n, size, size, 3), np.uint8))


def test_detection_rule_is_chosen_on_val_and_ignores_specks():
    # slices 0-2 tumor-free but with 1-pixel false-positive specks at high probability; 3-5 real tumors
    val = _predictions([0, 0, 0, 50, 60, 70], [1, 1, 1, 40, 55, 66], [0.9, 0.95, 0.92, 0.8, 0.85, 0.9])
    min_area, threshold, rule = choose_detection_rule(val, 0.5)
    assert rule == "val Youden J" and min_area >= 1  # the specks are filtered by area, not by probability
    scores = detection_scores(val, min_area)
    assert ((scores >= threshold) == np.array([0, 0, 0, 1, 1, 1], bool)).all()


def test_detection_rule_with_a_single_class_val_split_says_so():
    val = _predictions([10, 20, 30], [10, 20, 30], [0.9, 0.9, 0.9])
    assert choose_detection_rule(val, 0.4) == (0, 0.4, "default: val has one class")
