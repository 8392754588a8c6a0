import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from conftest import TRAINED_EPOCHS, mlflow_client, tiny_config
from lggseg import pipeline
from lggseg.data.preprocess import load_split, to_model_input
from lggseg.evaluation.evaluate import (
    HEADLINE_METRICS,
    INTERVAL_METRICS,
    SplitPredictions,
    choose_detection_rule,
    detection_scores,
    headline_keys,
)
from lggseg.evaluation.intervals import SEED
from lggseg.tracking.registry import ModelRegistry
from lggseg.tracking.store import MlflowStore

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
        # the DVC metrics file: headline only, in HEADLINE_METRICS order, each with its 95% interval
        headline = json.loads((paths.report_dir(arch) / "metrics.json").read_text())
        assert list(headline) == headline_keys()
        assert [k for k in headline if "_ci_" not in k] == list(HEADLINE_METRICS)
        assert headline == {k: metrics[k] for k in headline_keys()}
        for key in INTERVAL_METRICS:
            low, high = headline[f"{key}_ci_low"], headline[f"{key}_ci_high"]
            if low is not None:  # None only where resampling cannot vary it
                assert 0 <= low <= high <= 1, (key, low, high)
        assert headline["dice_patient_mean_ci_low"] < headline["dice_patient_mean"] < headline["dice_patient_mean_ci_high"]
        # the interval resamples the test patients' own Dice values, seeded
        per_patient = pd.read_csv(paths.report_dir(arch) / "per_patient.csv")
        expected = stats.bootstrap((per_patient["dice"].to_numpy(),), np.mean, confidence_level=0.95, n_resamples=2000,
                                   method="BCa", rng=np.random.default_rng(SEED)).confidence_interval
        assert (headline["dice_patient_mean_ci_low"], headline["dice_patient_mean_ci_high"]) == pytest.approx(
            (expected.low, expected.high), abs=1e-9)
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
        assert run.data.metrics["test/dice_patient_mean"] == pytest.approx(metrics["dice_patient_mean"])
        assert run.data.metrics["test/detection_auc"] == pytest.approx(metrics["detection_auc"])
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert {"evaluation/metrics.json", "evaluation/all_metrics.json", "evaluation/per_patient.csv",
                "evaluation/figures"} <= artifacts
        assert run.info.status == "FINISHED"
        # test/ names only test-split numbers; what was chosen on val says so (MLflow's UI groups by the prefix)
        assert "test/val_dice_patient" not in run.data.metrics and "test/detection_threshold" not in run.data.metrics
        assert "val/detection_threshold" in run.data.metrics and "val/best_dice_patient" in run.data.metrics
        assert {m.split("/")[0] for m in run.data.metrics} <= {"train", "val", "test"}, sorted(run.data.metrics)
        # metrics.json's headline numbers, not every count: those are in all_metrics.json
        assert run.data.metrics["test/dice_patient_mean_ci_low"] == pytest.approx(metrics["dice_patient_mean_ci_low"])
        every = json.loads((paths.report_dir(arch) / "all_metrics.json").read_text())
        assert "test/detection_tp" not in run.data.metrics and "detection_tp" in every
        assert len([m for m in run.data.metrics if m.startswith("test/")]) <= 30


def test_experiment_opens_on_training_runs_in_the_ui(trained_project):
    paths, cfg = trained_project
    experiment = mlflow_client(paths).get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "per-patient" in experiment.tags["mlflow.note.content"]


def test_registry_holds_candidates_and_the_champion(trained_project):
    paths, cfg = trained_project
    client = mlflow_client(paths)
    for arch in cfg.model.architectures:
        version = client.get_model_version_by_alias(f"lgg-synthetic-{arch}", "candidate")
        assert version.tags["architecture"] == arch and float(version.tags["test_dice_patient_mean"]) >= 0
        assert len(version.tags["data_fingerprint"]) == 16
    champion = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
    # every version records what it was trained on; trained on synthetic data, none is `lgg-segmentation`
    manifest = json.loads((paths.processed / "manifest.json").read_text())
    for version in (*(client.get_model_version_by_alias(f"lgg-synthetic-{a}", "candidate") for a in cfg.model.architectures),
                    champion):
        assert version.tags["data_source"] == "synthetic" and version.tags["data_fingerprint"] == manifest["fingerprint"]
        assert version.tags["input_size"] == str(manifest["size"]) and version.tags["channels"] == manifest["channels"]
        for split in ("train", "val", "test"):
            assert version.tags[f"{split}_patients"] == str(manifest["splits"][split]["patients"])
        assert version.tags["train_slices"] == str(manifest["splits"]["train"]["slices"])
        assert version.tags["trained_on"].startswith("synthetic data: ")
    assert client.search_model_versions("name='lgg-segmentation'") == []
    val = {a: json.loads((paths.model_dir(a) / "train_summary.json").read_text())["val_dice_patient"]
           for a in cfg.model.architectures}
    assert champion.tags["architecture"] == max(val, key=val.get)  # chosen by validation, never by test
    comparison = (paths.reports / "comparison.md").read_text()
    assert all(arch in comparison for arch in cfg.model.architectures)
    (champion_row,) = [line for line in comparison.splitlines() if "yes (best validation Dice)" in line]
    assert champion_row.startswith(f"| **{champion.tags['architecture']}**")


def test_comparison_carries_intervals_and_says_whether_the_difference_is_real(trained_project):
    paths, cfg = trained_project
    comparison = (paths.reports / "comparison.md").read_text()
    table = pd.read_csv(paths.reports / "comparison.csv")
    for row in table.itertuples():
        metrics = json.loads((paths.report_dir(row.architecture) / "metrics.json").read_text())
        assert row.dice_patient_mean_ci_low == pytest.approx(metrics["dice_patient_mean_ci_low"])
        # the markdown cell holds the value and its interval, in percent
        cell = f"{100 * row.dice_patient_mean:.1f} [{100 * row.dice_patient_mean_ci_low:.1f}, " \
               f"{100 * row.dice_patient_mean_ci_high:.1f}]"
        assert cell in comparison
    assert "_ci_low" not in comparison.split("## Is the difference real?")[0].split("\n\n")[1]  # no raw CI columns
    champion = mlflow_client(paths).get_model_version_by_alias("lgg-synthetic-segmentation", "champion").tags["architecture"]
    other = next(a for a in cfg.model.architectures if a != champion)
    dice = {a: pd.read_csv(paths.report_dir(a) / "per_patient.csv").set_index("patient_id")["dice"]
            for a in (champion, other)}
    p_value = stats.wilcoxon(dice[champion] - dice[other]).pvalue
    verdict = next(line for line in comparison.splitlines() if line.startswith("- ") and "Wilcoxon" in line)
    assert f"p = {p_value:.3g}" in verdict and f"{champion} - {other}" in verdict
    if p_value >= 0.05:  # a winner needs p < 0.05 and a difference interval that excludes 0
        assert "is better**" not in verdict
        assert "**No significant difference**" in verdict or "**Not established**" in verdict


def test_registered_models_load_and_segment(trained_project):
    paths, cfg = trained_project
    registry = ModelRegistry(MlflowStore(cfg.mlflow, paths.root))
    images, masks, _ = load_split(paths.processed, "test")
    positive = np.flatnonzero(masks.reshape(len(masks), -1).max(axis=1))[:8]
    x = torch.from_numpy(to_model_input(images[positive]))
    truth = torch.from_numpy(np.asarray(masks[positive])).bool()
    for uri in ("models:/lgg-synthetic-segmentation@champion", "models:/lgg-synthetic-unet/1",
                "models:/lgg-synthetic-fpn@candidate"):
        model = registry.load_model(uri)  # a torch.export module, already in inference mode
        with torch.no_grad():
            pred = torch.sigmoid(model(x))[:, 0] > 0.5
        assert pred.shape == truth.shape
        dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        if uri != "models:/lgg-synthetic-fpn@candidate":
            assert dice > 0.5, (uri, float(dice))


def test_rerunning_evaluation_of_the_same_weights_reuses_their_versions(trained_project):
    paths, cfg = trained_project
    client = mlflow_client(paths)
    before = {int(v.version) for v in client.search_model_versions("name='lgg-synthetic-unet'")}
    champions = {v.version for v in client.search_model_versions("name='lgg-synthetic-segmentation'")}
    pipeline.evaluate(cfg, paths, "unet")
    pipeline.compare(cfg, paths)
    assert {int(v.version) for v in client.search_model_versions("name='lgg-synthetic-unet'")} == before
    assert int(client.get_model_version_by_alias("lgg-synthetic-unet", "candidate").version) == max(before)
    assert {v.version for v in client.search_model_versions("name='lgg-synthetic-segmentation'")} == champions
    # other inference settings make another model (its inference.json differs): a new version
    pipeline.evaluate(tiny_config(f"train.epochs={TRAINED_EPOCHS}", "evaluate.threshold=0.45"), paths, "unet")
    assert {int(v.version) for v in client.search_model_versions("name='lgg-synthetic-unet'")} == before | {max(before) + 1}
    pipeline.evaluate(cfg, paths, "unet")  # back to the settings of the first: its version again
    assert int(client.get_model_version_by_alias("lgg-synthetic-unet", "candidate").version) == max(before)


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
