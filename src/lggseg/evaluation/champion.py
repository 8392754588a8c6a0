"""The side-by-side comparison of the evaluated architectures, the champion it picks (best per-patient VAL Dice,
never a test number), its registration as `lgg-segmentation@champion` (`lgg-synthetic-segmentation@champion` when
it was trained on synthetic data), and check-champion's proof that the
champion's files and registry entry reproduce what was scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from lggseg.core.config import Config
from lggseg.core.paths import Paths
from lggseg.data.provenance import data_source_of, provenance_tags, registered_name
from lggseg.evaluation.evaluate import count_table, predict_split
from lggseg.evaluation.figures.comparison import COMPARISON_METRICS, comparison_table, write_comparison
from lggseg.evaluation.intervals import paired_comparison
from lggseg.metrics.segmentation import segmentation_summary
from lggseg.model.checkpoint import load_checkpoint
from lggseg.model.devices import inference_runtime
from lggseg.model.inference import prepare_for_inference
from lggseg.tracking.registry import ModelRegistry
from lggseg.tracking.runs import git_state
from lggseg.tracking.store import WEIGHTS_TAG, MlflowStore, resolve_tracking_uri

CHAMPION_MODEL = "lgg-segmentation"
"""The champion of models trained on real data; trained on synthetic data it is `lgg-synthetic-segmentation`."""


def champion_model(record: dict) -> str:
    """The registry name of the champion `record` (an evaluate's mlflow_model.json) would become."""
    return registered_name("segmentation", record.get("trained_on"))


def _redo_evaluate(arch: str) -> str:
    return (f"re-run evaluate for {arch} (lggseg evaluate --arch {arch}, or dvc repro -f evaluate@{arch}), "
            "then compare")


def choose_champion(table: pd.DataFrame) -> str:
    """The architecture with the best per-patient VALIDATION Dice (never a test number)."""
    return str(table.loc[table["val_dice_patient"].idxmax(), "architecture"])


def compare_architectures(cfg: Config, paths: Paths) -> dict:
    """Side-by-side table of all architectures; the champion is the best per-patient VAL Dice."""
    rows, records = [], {}
    for arch in cfg.model.architectures:
        metrics_path = paths.report_dir(arch) / "all_metrics.json"
        if not metrics_path.is_file():
            raise FileNotFoundError(f"{metrics_path} is missing (run evaluate@{arch})")
        metrics = json.loads(metrics_path.read_text())
        shown = [key for k in COMPARISON_METRICS for key in (k, f"{k}_ci_low", f"{k}_ci_high")]
        # write_json writes a NaN metric (e.g. the AUC of a one-class split) as null: a number again here
        rows.append({"architecture": arch, **{k: math.nan if metrics[k] is None else metrics[k]
                                              for k in shown if k in metrics}})
        records[arch] = json.loads((paths.report_dir(arch) / "mlflow_model.json").read_text())
    table = comparison_table(rows)
    champion = choose_champion(table)
    record = records[champion]
    register = cfg.mlflow.register and record.get("registered")
    if register:  # before anything is written: only the evaluated weights may become champion
        registry = ModelRegistry(MlflowStore(cfg.mlflow, paths.root))
        candidate = registry.resolve_registered(f"models:/{record['registered_model']}/{record['version']}")
        weights = registry.check_holds(
            candidate, paths.model_dir(champion) / "best.pt",
            f"named by {paths.report_dir(champion) / 'mlflow_model.json'}", _redo_evaluate(champion))
    paired = paired_comparisons(paths, champion, list(cfg.model.architectures))
    data_sources = {arch: data_source_of(records[arch].get("trained_on")) for arch in records}
    written = write_comparison(table, paths.reports, champion=champion, paired=paired, data_sources=data_sources)
    if register:
        source = f"{record['registered_model']}/{record['version']}"
        tags = {"architecture": champion, "source_model": source, WEIGHTS_TAG: weights,
                "val_dice_patient": f"{table.set_index('architecture').loc[champion, 'val_dice_patient']:.4f}",
                **git_state(paths.root)}
        tags.update(provenance_tags(record.get("trained_on")))
        name = champion_model(record)
        same = [v for v in registry.versions_holding(name, weights, source_model=source)
                if v.source == candidate.source]  # the same logged model: nothing new to register
        if same:
            version = same[0].version
            registry.move_alias(name, "champion", version, tags)
        else:
            version = registry.register(record["model_uri"], name, "champion", tags)
        print(f"{'registered' if not same else 'kept'} {name} version {version} (@champion) = {champion}")
    return {"table": table, "champion": champion, "markdown": written["markdown"]}


def paired_comparisons(paths: Paths, champion: str, architectures: list[str]) -> list[dict]:
    """The champion against each other architecture on the same test patients (lggseg.evaluation.intervals)."""
    dice = {}
    for arch in architectures:
        table = pd.read_csv(paths.report_dir(arch) / "per_patient.csv", dtype={"patient_id": str})
        dice[arch] = table.set_index("patient_id")["dice"]
    return [paired_comparison(dice[champion], dice[other], champion, other) for other in architectures if other != champion]


def check_champion(cfg: Config, paths: Paths) -> dict:
    """Reload the champion from its checkpoint (as `dvc pull` brings it, no MLflow needed), predict the
    test split again and check it reproduces the per-patient Dice in its metrics.json: pulled artifacts
    are complete and usable, or this fails naming what differs."""
    comparison_path = paths.reports / "comparison.csv"
    if not comparison_path.is_file():
        raise FileNotFoundError(f"{comparison_path} is missing (run the compare stage, or dvc pull)")
    champion = choose_champion(pd.read_csv(comparison_path))
    registry = check_registry_champion(cfg, paths, champion)
    model, _ = load_checkpoint(paths.model_dir(champion) / "best.pt")
    runtime = inference_runtime(cfg.train.device, cfg.evaluate.precision)
    test = predict_split(prepare_for_inference(model, runtime), paths, "test", cfg, runtime)
    dice = segmentation_summary(count_table(test.truth, test.pred, test.table))["dice_patient_mean"]
    recorded = json.loads((paths.report_dir(champion) / "metrics.json").read_text())["dice_patient_mean"]
    if not math.isclose(dice, recorded, abs_tol=1e-4):
        raise ValueError(f"champion {champion}: models/{champion}/best.pt gives test per-patient Dice {dice:.4f}, "
                         f"but {paths.report_dir(champion) / 'metrics.json'} records {recorded:.4f}")
    return {"architecture": champion, "dice_patient_mean": dice, "slices": len(test.pred), "registry": registry}


def check_registry_champion(cfg: Config, paths: Paths, champion: str) -> str:
    """The registry's `@champion` must hold exactly models/<champion>/best.pt, the file check-champion scores
    (its artifact's bytes hashed, not only its tag). Returns what was checked, or why nothing could be: no
    store where one is looked for (a clone that only pulled files), or no MLflow in the run."""
    uri = resolve_tracking_uri(cfg.mlflow, paths.root)
    record_path = paths.report_dir(champion) / "mlflow_model.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if not cfg.mlflow.register or not record.get("registered"):
        return f"registry not checked: {champion} was evaluated without registering (mlflow.register, {record_path})"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"registry not checked: no MLflow store at {uri.removeprefix('sqlite:///')}"
    registry = ModelRegistry(MlflowStore(cfg.mlflow, paths.root, read_only=True))
    name = champion_model(record)
    version = registry.resolve_registered(f"models:/{name}@champion")
    where = f"{name} version {version.version}"
    if version.tags.get("architecture") != champion:
        raise ValueError(f"{where} (@champion) is {version.tags.get('architecture')}, but {paths.reports / 'comparison.csv'} "
                         f"makes {champion} the champion: re-run compare")
    held = registry.check_holds(version, paths.model_dir(champion) / "best.pt", "@champion",
                                f"{_redo_evaluate(champion)} to register the weights that were scored")
    return f"registry {where} (@champion) holds these weights (sha256 {held[:12]}...)"
