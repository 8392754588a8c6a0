"""Evaluation on held-out test patients: the evaluate stage (lggseg.evaluation.champion compares the results).

Per-patient 3-D volume Dice is the headline (Buda et al. 2019); per-slice, pooled, IoU, precision,
recall and slice-level tumor detection come with it. Every choice (detection threshold, min area,
champion) is made on the validation split and only applied to test.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from lggseg.core.atomic import write_csv, write_json
from lggseg.core.config import Config
from lggseg.core.paths import Paths
from lggseg.data.dataset import SliceDataset
from lggseg.data.preprocess import flair_view, processed_manifest
from lggseg.data.provenance import provenance_tags, registered_name
from lggseg.data.split import check_no_leak
from lggseg.evaluation.figures.dice import plot_dice_per_patient
from lggseg.evaluation.figures.overlays import plot_patient_montage, plot_patient_overlays
from lggseg.evaluation.figures.roc import plot_roc
from lggseg.evaluation.figures.training_history import plot_training_history
from lggseg.evaluation.intervals import mean_interval, median_interval, patient_interval, with_intervals
from lggseg.metrics.detection import choose_detection_threshold, detection_metrics, roc_points
from lggseg.metrics.segmentation import (
    SliceCountAccumulator,
    largest_component_3d,
    patient_table,
    segmentation_summary,
    slice_dice,
)
from lggseg.model.checkpoint import load_checkpoint
from lggseg.model.devices import Runtime, inference_runtime
from lggseg.model.inference import InferenceSettings, predict_batches, prepare_for_inference
from lggseg.tracking.registry import ModelRegistry
from lggseg.tracking.runs import Tracker, git_state, read_run_pointer
from lggseg.tracking.store import TEST_PREFIX, WEIGHTS_TAG, TrackingError, weights_sha256

log = logging.getLogger(__name__)

MIN_AREA_CANDIDATES = (0, 5, 10, 20, 40, 80, 160)  # pixels at 256x256, scaled with the image size
# reports/arch/<arch>/metrics.json, the DVC metrics file (`dvc exp show`, `dvc metrics diff`): the headline
# numbers only, headline first, so experiment tables stay readable; all_metrics.json holds every number
HEADLINE_METRICS = (
    "dice_patient_mean", "dice_patient_median", "dice_patient_min", "lcc_dice_patient_mean", "dice_slice_mean",
    "dice_pooled", "detection_auc", "val_dice_patient",
)
# each with `<key>_ci_low` / `<key>_ci_high`, its 95% bootstrap interval over patients (the minimum has none:
# resampling cannot estimate a sample's minimum)
INTERVAL_METRICS = tuple(k for k in HEADLINE_METRICS if k != "dice_patient_min")
# chosen on the val split or copied from training: in all_metrics.json, but not test numbers for MLflow
NOT_TEST_METRICS = ("val_dice_patient", "detection_threshold", "detection_min_area", "detection_rule")


@dataclass
class SplitPredictions:
    """Binary predictions (N, H, W) uint8 and per-slice scores for one split, in dataset order."""

    table: pd.DataFrame  # patient_id, slice (+ the processed slice columns)
    truth: np.ndarray
    pred: np.ndarray
    max_prob: np.ndarray
    images: np.ndarray  # the uint8 model inputs (N, H, W, C), memory-mapped

    @property
    def has_tumor(self) -> np.ndarray:
        """(N,) int labels for slice-level detection: 1 where the ground truth has tumor."""
        return self.truth.reshape(len(self.truth), -1).any(axis=1).astype(int)

    @property
    def pred_area(self) -> np.ndarray:
        """(N,) predicted tumor pixels per slice."""
        return self.pred.reshape(len(self.pred), -1).sum(axis=1)


def predict_split(model, paths: Paths, split: str, cfg: Config, runtime: Runtime) -> SplitPredictions:
    """Run `model` (already on runtime.device) over one processed split."""
    dataset = SliceDataset(paths.processed, split)
    loader = DataLoader(dataset, batch_size=cfg.evaluate.batch_size, shuffle=False, num_workers=0)
    preds, max_probs = [], []
    for _, probs, _ in predict_batches(model, loader, runtime, tta=cfg.evaluate.tta):
        if not torch.isfinite(probs).all():
            raise ValueError(f"the model outputs non-finite values on the {split} split: its checkpoint is broken "
                             "(re-train, with a lower train.lr if it diverged)")
        preds.append((probs[:, 0] > cfg.evaluate.threshold).numpy().astype(np.uint8))
        max_probs.append(probs.amax(dim=(1, 2, 3)).numpy())
    return SplitPredictions(
        table=dataset.table, truth=np.asarray(dataset.masks), pred=np.concatenate(preds),
        max_prob=np.concatenate(max_probs), images=dataset.images,
    )


def keep_largest_component(pred: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """Per patient, keep only the largest 3-D connected component (slices in slice order)."""
    out = np.zeros_like(pred)
    for _, rows in table.groupby("patient_id", sort=False):
        order = rows.sort_values("slice").index.to_numpy()
        out[order] = largest_component_3d(pred[order])
    return out


def count_table(truth: np.ndarray, pred: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    acc = SliceCountAccumulator()
    acc.add(torch.from_numpy(pred[:, None].astype(np.int64)), torch.from_numpy(truth[:, None].astype(np.int64)),
            table["patient_id"].astype(str).tolist(), table["slice"].astype(int).tolist())
    return acc.table()


def detection_scores(p: SplitPredictions, min_area: int) -> np.ndarray:
    """Slice score: max probability, zeroed where the predicted area is below `min_area` pixels."""
    return np.where(p.pred_area >= min_area, p.max_prob, 0.0)


def choose_detection_rule(val: SplitPredictions, default_threshold: float) -> tuple[int, float, str]:
    """(min_area, threshold, how) maximising Youden's J on the val split. A val split with only
    tumor or only tumor-free slices cannot rank thresholds: then min_area 0 and the segmentation
    threshold are used, and `how` says so (it lands in metrics.json)."""
    labels = val.has_tumor
    if labels.min() == labels.max():
        log.warning("val split has only %s slices: detection uses threshold %.2f, min_area 0",
                    "tumor" if labels[0] else "tumor-free", default_threshold)
        return 0, default_threshold, "default: val has one class"
    scale = (val.truth.shape[1] / 256) ** 2
    best: tuple[float, int, float] | None = None
    for candidate in MIN_AREA_CANDIDATES:
        min_area = int(round(candidate * scale))
        scores = detection_scores(val, min_area)
        threshold = choose_detection_threshold(scores, labels)
        m = detection_metrics(scores, labels, threshold)
        j = m["detection_sensitivity"] + m["detection_specificity"] - 1
        if best is None or j > best[0] + 1e-12:
            best = (j, min_area, threshold)
    assert best is not None
    return best[1], best[2], "val Youden J"


def choose_postprocess(val: SplitPredictions, cfg: Config) -> tuple[bool, str]:
    """(keep only the largest 3-D component?, why): on when evaluate.largest_component is set and it
    raises the mean per-patient Dice on the val split, the rule `lggseg predict` then applies."""
    if not cfg.evaluate.largest_component:
        return False, "evaluate.largest_component is false"
    raw = segmentation_summary(count_table(val.truth, val.pred, val.table))["dice_patient_mean"]
    lcc_pred = keep_largest_component(val.pred, val.table)
    lcc = segmentation_summary(count_table(val.truth, lcc_pred, val.table))["dice_patient_mean"]
    keep = lcc > raw
    return keep, f"val per-patient Dice {raw:.4f} raw, {lcc:.4f} with the largest component only"


def evaluate_architecture(cfg: Config, arch: str, paths: Paths) -> dict:
    """Test-split metrics, per-patient table, ROC, figures; logged into the training run; model registered."""
    model_dir, report_dir = paths.model_dir(arch), paths.report_dir(arch)
    if not (model_dir / "train_summary.json").is_file():  # written last by a training that finished
        raise FileNotFoundError(f"{model_dir / 'train_summary.json'}: the training of {arch} did not finish "
                                "(stopped or killed): resume it with train.resume=true, then evaluate")
    tracker, run_id = _training_run(cfg, paths, arch)  # before anything is computed or written
    model, checkpoint = load_checkpoint(model_dir / "best.pt")
    weights = weights_sha256(model_dir / "best.pt")  # what the registry must hold for these numbers
    train_summary = json.loads((model_dir / "train_summary.json").read_text())
    runtime = inference_runtime(cfg.train.device, cfg.evaluate.precision)
    fast_model = prepare_for_inference(model, runtime)
    val, test = (predict_split(fast_model, paths, s, cfg, runtime) for s in ("val", "test"))
    train_patients = pd.read_csv(paths.processed_split("train") / "slices.csv", usecols=["patient_id"])["patient_id"]
    check_no_leak({"train": train_patients, "val": val.table["patient_id"], "test": test.table["patient_id"]})

    counts = count_table(test.truth, test.pred, test.table)  # per test slice, for the metrics and their intervals
    per_patient, metrics = _segmentation_metrics(test, counts, cfg)
    min_area, threshold, rule = choose_detection_rule(val, cfg.evaluate.threshold)
    test_labels = test.has_tumor
    test_scores = detection_scores(test, min_area)
    metrics.update(detection_metrics(test_scores, test_labels, threshold))
    metrics["detection_min_area"] = min_area
    metrics["detection_rule"] = rule
    metrics["val_dice_patient"] = train_summary["val_dice_patient"]
    intervals = headline_intervals(test, counts, per_patient, test_scores, val)
    largest_component, postprocess_rule = choose_postprocess(val, cfg)
    metrics["postprocess_largest_component"] = largest_component
    metrics["postprocess_rule"] = postprocess_rule
    metrics = {k: _finite_or_none(v) for k, v in with_intervals(metrics, intervals).items()}
    settings = InferenceSettings(
        spec=checkpoint["spec"], preprocess=_evaluated_preprocess(paths, checkpoint, model_dir / "best.pt"),
        threshold=cfg.evaluate.threshold,
        largest_component=largest_component, precision=cfg.evaluate.precision, chosen_on=postprocess_rule,
        tta=cfg.evaluate.tta,
    )

    write_json(report_dir / "inference.json", settings.to_dict())
    write_json(report_dir / "all_metrics.json", metrics)
    write_json(report_dir / "metrics.json", {k: metrics[k] for k in headline_keys() if k in metrics})
    write_csv(report_dir / "per_patient.csv", per_patient)
    one_class = test_labels.min() == test_labels.max()
    roc = pd.DataFrame(columns=["fpr", "tpr", "threshold"]) if one_class else roc_points(test_scores, test_labels)
    write_csv(report_dir / "roc.csv", roc.replace([np.inf, -np.inf], np.nan))
    figures = _write_figures(arch, test, per_patient, metrics, roc, paths, cfg)

    trained_on = checkpoint.get("trained_on")  # None: trained by an older lggseg
    if tracker is None:
        write_json(report_dir / "mlflow_model.json", {"run_id": None, "registered": False, "trained_on": trained_on})
    else:
        _log_to_mlflow(tracker, run_id, cfg, arch, paths, model, settings, metrics, figures, train_summary, weights,
                       trained_on)
    return metrics


def headline_keys() -> list[str]:
    """metrics.json's keys: each headline number, then its 95% interval where it has one."""
    return [key for k in HEADLINE_METRICS for key in (k, *((f"{k}_ci_low", f"{k}_ci_high") if k in INTERVAL_METRICS else ()))]


def headline_intervals(test: SplitPredictions, counts: pd.DataFrame, per_patient: pd.DataFrame, scores: np.ndarray,
                       val: SplitPredictions) -> dict[str, tuple[float, float] | None]:
    """95% bootstrap intervals over patients (lggseg.evaluation.intervals) of every headline number but the minimum.
    val_dice_patient's interval resamples the val patients as evaluation predicts them (the point value is
    training's, from the same weights; the two agree to the precision's tolerance)."""
    intervals = {"dice_patient_mean": mean_interval(per_patient["dice"]),
                 "dice_patient_median": median_interval(per_patient["dice"])}
    if "dice_lcc" in per_patient:
        intervals["lcc_dice_patient_mean"] = mean_interval(per_patient["dice_lcc"])
    order = per_patient["patient_id"].astype(str).tolist()  # patient_table's order: sorted ids
    by_patient = counts.assign(slice_dice=slice_dice(counts)).groupby("patient_id").agg(
        slice_dice=("slice_dice", "sum"), slices=("tp", "size"), tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum")
    ).loc[order]
    sums = {c: by_patient[c].to_numpy(dtype=float) for c in by_patient.columns}
    n = len(order)
    intervals["dice_slice_mean"] = patient_interval(lambda i: sums["slice_dice"][i].sum() / sums["slices"][i].sum(), n)
    intervals["dice_pooled"] = patient_interval(
        lambda i: 2 * sums["tp"][i].sum() / max(2 * sums["tp"][i].sum() + sums["fp"][i].sum() + sums["fn"][i].sum(), 1), n)
    labels, patient_of_slice = test.has_tumor, test.table["patient_id"].astype(str).to_numpy()
    rows_of = [np.flatnonzero(patient_of_slice == p) for p in order]

    def auc(i: np.ndarray) -> float:
        rows = np.concatenate([rows_of[k] for k in i])
        return float(roc_auc_score(labels[rows], scores[rows])) if labels[rows].min() != labels[rows].max() else math.nan

    intervals["detection_auc"] = patient_interval(auc, n) if labels.min() != labels.max() else None
    val_dice = patient_table(count_table(val.truth, val.pred, val.table))["dice"]
    intervals["val_dice_patient"] = mean_interval(val_dice)
    return intervals


def _evaluated_preprocess(paths: Paths, checkpoint: dict, checkpoint_path: Path) -> dict:
    """Size and channels of the processed slices evaluated on; they must be the ones the model was trained on."""
    manifest = processed_manifest(paths)
    preprocess = {"size": int(manifest["size"]), "channels": str(manifest["channels"])}
    trained = checkpoint.get("preprocess")  # absent in checkpoints of older lggseg versions
    if trained is not None and trained != preprocess:
        raise ValueError(f"{checkpoint_path} was trained on {trained} slices, but {paths.processed} holds "
                         f"{preprocess}: re-run train (dvc repro)")
    return preprocess


def _training_run(cfg: Config, paths: Paths, arch: str) -> tuple[Tracker | None, str | None]:
    """The store and the training run evaluation logs into, checked to exist; (None, None) when the run is
    gone and mlflow.register is false (evaluation then works without MLflow, and says so)."""
    pointer = paths.model_dir(arch) / "mlflow_run.json"
    run_id = read_run_pointer(pointer)["run_id"]
    tracker = Tracker(cfg.mlflow, paths.root)
    try:
        tracker.require_run(run_id, pointer)
    except TrackingError:
        if cfg.mlflow.register:
            raise
        log.warning("MLflow run %s (from %s) is not in the store: evaluating without MLflow", run_id, pointer)
        return None, None
    tracker.end_interrupted_run(pointer, "evaluated")  # a killed evaluate left it RUNNING
    return tracker, run_id


def _segmentation_metrics(test: SplitPredictions, counts: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, dict]:
    metrics = segmentation_summary(counts)
    per_patient = patient_table(counts)
    if cfg.evaluate.largest_component:
        lcc = keep_largest_component(test.pred, test.table)
        lcc_counts = count_table(test.truth, lcc, test.table)
        metrics.update({f"lcc_{k}": v for k, v in segmentation_summary(lcc_counts).items() if k.startswith(("dice", "iou"))})
        per_patient["dice_lcc"] = patient_table(lcc_counts)["dice"].to_numpy()
    institutions = test.table.groupby("patient_id")["institution"].first()
    per_patient.insert(1, "institution", per_patient["patient_id"].map(institutions))
    return per_patient, metrics


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_figures(arch, test: SplitPredictions, per_patient: pd.DataFrame, metrics: dict, roc: pd.DataFrame,
                   paths: Paths, cfg: Config) -> list[Path]:
    fig_dir = paths.report_dir(arch) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_dice_per_patient(per_patient, fig_dir / "dice_per_patient.png",
                                     title=f"{arch}: per-patient Dice on test patients")]
    history_path = paths.report_dir(arch) / "train_history.csv"
    if history_path.is_file():
        written.append(plot_training_history(pd.read_csv(history_path), fig_dir / "train_history.png",
                                             title=f"{arch}: training"))
    if len(roc):
        written.append(plot_roc(roc, metrics["detection_auc"] or float("nan"), fig_dir / "roc.png",
                                title=f"{arch}: tumor detection per slice (test)"))
    flair = flair_view(test.images)
    for label, patient_id in _showcase_patients(per_patient, cfg.evaluate.figures_patients):
        rows = test.table.index[test.table["patient_id"] == patient_id].to_numpy()
        dice = per_patient.set_index("patient_id").loc[patient_id, "dice"]
        args = (flair[rows], test.truth[rows], test.pred[rows], test.table.loc[rows, "slice"].tolist())
        title = f"{arch} | {label} test patient {patient_id} | volume Dice {dice:.3f}"
        written.append(plot_patient_overlays(*args, title=title, out_path=fig_dir / f"overlay_{label}.png"))
        written.append(plot_patient_montage(*args, title=title, out_path=fig_dir / f"montage_{label}.png"))
    return written


def _showcase_patients(per_patient: pd.DataFrame, count: int) -> list[tuple[str, str]]:
    """Best, median and worst test patients by volume Dice (fewer when count < 3)."""
    ranked = per_patient.sort_values("dice", ascending=False, kind="stable")["patient_id"].tolist()
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    return picks[: max(0, count)]


def mlflow_test_metrics(metrics: dict) -> dict:
    """metrics.json's test numbers (the headline, with their 95% intervals): MLflow draws one chart per metric, and
    counts (detection_tp, ...) as charts only crowd out the Dice. Every number is in the run's artifact
    evaluation/all_metrics.json."""
    return {k: metrics[k] for k in headline_keys() if not k.startswith(NOT_TEST_METRICS) and metrics.get(k) is not None}


def _log_to_mlflow(tracker: Tracker, run_id: str, cfg: Config, arch: str, paths: Paths, model,
                   settings: InferenceSettings, metrics: dict, figures: list[Path], train_summary: dict,
                   weights: str, trained_on: dict | None) -> None:
    report_dir = paths.report_dir(arch)
    tracker.log_metrics(run_id, mlflow_test_metrics(metrics), prefix=TEST_PREFIX)
    # the detection rule was chosen on val; the val Dice is training's (val/best_dice_patient)
    tracker.log_metrics(run_id, {"val/detection_threshold": metrics["detection_threshold"],
                                 "val/detection_min_area": metrics["detection_min_area"]})
    # tags, not params: MLflow params are immutable and evaluation may re-run with other settings
    tracker.set_tags(run_id, {f"evaluate.{k}": str(v) for k, v in cfg.section("evaluate").items()})
    tracker.log_artifacts(run_id, [report_dir / n for n in ("metrics.json", "all_metrics.json", "per_patient.csv", "roc.csv",
                                                            "inference.json")], "evaluation")
    tracker.log_artifacts(run_id, figures, "evaluation/figures")
    record: dict = {"run_id": run_id, "registered": False, "trained_on": trained_on}
    if cfg.mlflow.register:
        name = registered_name(arch, trained_on)
        tags = {**git_state(paths.root), "data_fingerprint": train_summary["data_fingerprint"],
                **provenance_tags(trained_on), "architecture": arch,
                "test_dice_patient_mean": f"{metrics['dice_patient_mean']:.4f}",
                "val_dice_patient": f"{train_summary['val_dice_patient']:.4f}", "run_id": run_id, WEIGHTS_TAG: weights}
        registry = ModelRegistry(tracker.store)
        existing = registry.reusable_version(name, weights, run_id, settings.to_dict())
        if existing is None:
            model_uri = tracker.log_model(run_id, model.cpu().eval(), paths.model_dir(arch) / "best.pt",
                                          report_dir / "inference.json", settings.to_dict(), weights)
            version = registry.register(model_uri, name, "candidate", tags)
            print(f"registered {name} version {version} (@candidate)")
        else:  # an earlier evaluate of this checkpoint registered it, and was stopped before it finished
            model_uri, version = existing.source, existing.version
            registry.move_alias(name, "candidate", version, tags)
            print(f"{name} version {version} already holds these weights (sha256 {weights[:12]}...): @candidate on it")
        record = {"run_id": run_id, "registered": True, "model_uri": model_uri, "registered_model": name,
                  "version": version, "alias": "candidate", "trained_on": trained_on}
    tracker.end_run(run_id)
    write_json(report_dir / "mlflow_model.json", record)
