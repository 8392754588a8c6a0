"""The MLflow run log: a stage's run started or resumed, its params, tags, metrics and artifacts, the model logged
into it, how it ends, and the run pointer (models/<arch>/mlflow_run.json) that leads evaluation back to it.
The store itself is lggseg.tracking.store; registered versions and aliases are lggseg.tracking.registry."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lggseg.core.atomic import write_json
from lggseg.core.config import Config, MlflowConfig, changed_params, committed_config, param_text
from lggseg.core.redaction import redact
from lggseg.tracking.store import WEIGHTS_TAG, MlflowStore, TrackingError, project_root, weights_sha256

log = logging.getLogger(__name__)

MODEL_PIP_REQUIREMENTS = ["torch", "segmentation-models-pytorch"]

# MLflow names of the per-epoch numbers (train_history.csv's columns). MLflow's run page draws one chart per
# metric and puts `train/...` into a section `train`, `val/...` into `val`, `test/...` into `test`: the
# curves stay apart from evaluation's single numbers. The DVC files (metrics.json, train_history.csv) keep
# their own names.
EPOCH_METRICS = {"train_loss": "train/loss", "val_loss": "val/loss", "val_dice_slice": "val/dice_slice",
                 "val_dice_patient": "val/dice_patient", "lr": "train/lr", "epoch_seconds": "train/epoch_seconds",
                 "train_images_per_second": "train/images_per_second"}
VAL_DICE_PATIENT = EPOCH_METRICS["val_dice_patient"]


def epoch_metrics(row: Mapping[str, Any], lr_scheduled: bool) -> dict[str, Any]:
    """One epoch's row under its MLflow names. A constant learning rate (no scheduler) is left out: its chart
    is a flat line on a -1..1 axis that reads as 0; the value is the run's `train.lr` param."""
    return {EPOCH_METRICS[key]: value for key, value in row.items()
            if key in EPOCH_METRICS and (lr_scheduled or key != "lr")}


NOT_CODE = ("params.yaml", "dvc.lock", "data", "models", "reports")
"""Tracked paths whose changes are no code change: params (recorded as `params_changed`; `dvc exp run -S` writes them
into its copy of the repository), the lock file DVC rewrites as stages run, and the folders the stages write their
outputs to (dvc.yaml's outs: the `cache: false` ones, metrics and per-patient tables, are committed, and a run
rewrites them before the next stage records its git state)."""


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the working tree (empty when not a git checkout): `git_dirty` is `true` when tracked
    files outside NOT_CODE differ from the commit (inside `dvc exp run`, from the experiment's baseline), and
    `git_dirty_files` then names them."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        changed = git("diff", "HEAD", "--name-only", "--", ":/",
                      *(f":(top,exclude){name}" for name in NOT_CODE)).splitlines() if commit else []
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    state = {"git_commit": commit, "git_dirty": str(bool(changed)).lower()}
    if changed:
        files = " ".join(changed)
        state["git_dirty_files"] = files if len(files) <= 500 else files[:497] + "..."
    return state


def environment_tags() -> dict[str, str]:
    """DVC's stage and experiment context when the run happens inside `dvc repro` / `dvc exp run`."""
    tags = {}
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name"),
                     ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def run_name(arch: str) -> str:
    """`unet`, or `unet (bold-oryx)` inside `dvc exp run`, so experiments tell apart in the MLflow UI."""
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{arch} ({experiment})" if experiment else arch


def params_changed_tag(cfg: Config, root: Path) -> dict[str, str]:
    """`params_changed`: the params that differ from the committed params.yaml (of the experiment's
    baseline inside `dvc exp run`), e.g. `train.lr=0.001 train.epochs=8`; `-` when none differ."""
    repo = os.environ.get("DVC_ROOT") or str(project_root(root))
    base = committed_config(repo, os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD")
    if base is None:
        return {}
    changed = changed_params(cfg, base)
    text = " ".join(f"{k}={param_text(v)}" for k, v in changed.items())
    return {"params_changed": redact(text)[:5000] or "-"}


class Tracker:
    """The runs of one MLflow store and experiment (lggseg.tracking.store), opened once per stage."""

    def __init__(self, cfg: MlflowConfig, root: Path):
        self.store = MlflowStore(cfg, root)
        self.client, self.uri, self.experiment_id = self.store.client, self.store.uri, self.store.experiment_id

    def require_run(self, run_id: str, pointer: Path) -> None:
        """The training run `pointer` (models/<arch>/mlflow_run.json) names must be in this store."""
        from mlflow.exceptions import MlflowException

        with self.store.guard("read"):
            try:
                self.client.get_run(run_id)
                return
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        raise TrackingError(
            f"{pointer} points at MLflow run {run_id}, which the tracking store {redact(self.uri)} does not have "
            "(a different or re-created store?). Re-train (dvc repro -f train@<arch>, or lggseg train), point "
            "MLFLOW_TRACKING_URI at the store that has the run, or set mlflow.register: false to evaluate "
            "without MLflow."
        )

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str], run_id: str | None = None) -> str:
        """A new run (or the existing `run_id`, when resuming) with params and tags logged."""
        with self.store.guard("start a run in"):
            return self._start_run(name, params, tags, run_id)

    def _start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str], run_id: str | None) -> str:
        if run_id is not None:
            try:
                logged = self.client.get_run(run_id).data.params
            except Exception:
                log.warning("MLflow run %s not found in %s; starting a new one", run_id, redact(self.uri))
            else:
                # params are immutable in MLflow: a resumed run records what changed as `resumed.<key>` tags
                changed = {f"resumed.{k}": _param_value(v) for k, v in params.items()
                           if logged.get(k, _param_value(v)) != _param_value(v)}
                self.client.update_run(run_id, status="RUNNING")
                self.set_tags(run_id, {**tags, **changed})
                return run_id
        # every param and tag passes through redact: anyone with API access reads them
        tags = {k: redact(str(v)) for k, v in tags.items()}
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, "mlflow.runName": name})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        with self.store.guard("log params to"):
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            with self.store.guard("set tags in"):
                self.client.log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        """Numeric metrics (non-numbers are skipped). NaN and inf are logged as what they are: a diverging
        loss must show, not vanish."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(prefix + key, float(value), now, step or 0) for key, value in metrics.items()
                 if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))]
        if items:
            with self.store.guard("log metrics to"):
                self.client.log_batch(run_id, metrics=items)

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        with self.store.guard(f"mark the run {status} in"):
            self.client.set_terminated(run_id, status=status)

    def end_interrupted_run(self, pointer: Path, doing: str, resuming: str | None = None) -> str | None:
        """End the run `pointer` (models/<arch>/mlflow_run.json) names if it is still RUNNING: the caller holds
        that model folder's lock (lggseg.core.locks), so no live process writes that run; a killed one left it so.
        `resuming`: the run this process continues, left as it is. Returns the id of the run it ended."""
        from mlflow.exceptions import MlflowException

        try:
            run_id = read_run_pointer(pointer)["run_id"]
        except (FileNotFoundError, ValueError, KeyError):  # none, or damaged: it names no run to end
            return None
        if run_id == resuming:
            return None
        with self.store.guard("update"):
            try:
                run = self.client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                return None  # another store's run: nothing of this store to end
            if run.info.status != "RUNNING":
                return None
            folder = os.path.relpath(Path(pointer).parent, self.store.root)
            self.set_tags(run_id, {"interrupted": (
                f"left RUNNING by a process killed while it wrote {folder}; ended as KILLED when {folder} was next "
                f"{doing} (process {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})")})
            self.client.set_terminated(run_id, status="KILLED")
        log.warning("MLflow run %s of %s was left RUNNING by a killed process: marked KILLED", run_id, folder)
        return run_id

    def log_model(self, run_id: str, model, checkpoint: Path, settings_file: Path, settings: dict,
                  checkpoint_sha256: str, name: str = "model") -> str:
        """Log a torch model into the run without pickle; returns its `models:/<model_id>` URI.

        The network is saved with torch.export (`pt2`: a graph and raw tensors, loadable by
        `mlflow.pytorch.load_model` / `mlflow.pyfunc.load_model`, batch size free). `lggseg predict` reads
        `extra_files/`: the weights-only checkpoint and the inference settings (preprocessing, threshold,
        post-processing), which are also the model's metadata (`lggseg`) in the MLmodel file.
        `checkpoint_sha256`: the hash of `checkpoint` as the caller evaluated it, in the metadata and a tag."""
        import torch
        from mlflow.models import infer_signature

        size, channels = int(settings["preprocess"]["size"]), int(settings["spec"]["in_channels"])
        example = np.zeros((2, channels, size, size), dtype=np.float32)  # batch 2: exported with a free batch size
        with torch.inference_mode():
            output = model(torch.from_numpy(example)).numpy()
        with self.store.fluent(), self.store.mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id):
            info = self.store.mlflow.pytorch.log_model(
                model, name=name, input_example=example, signature=infer_signature(example, output),
                serialization_format="pt2", pip_requirements=MODEL_PIP_REQUIREMENTS,
                metadata={"lggseg": settings, WEIGHTS_TAG: checkpoint_sha256}, tags={WEIGHTS_TAG: checkpoint_sha256},
                extra_files=[str(checkpoint), str(settings_file)],
            )
        if weights_sha256(checkpoint) != checkpoint_sha256:  # the file was replaced while it was evaluated
            raise ValueError(f"{checkpoint} changed while it was evaluated (sha256 {checkpoint_sha256} when read, "
                             f"{weights_sha256(checkpoint)} now): re-run evaluate")
        # start_run(run_id=...) ends the run on exit: put the status back to what the stage decides
        self.client.update_run(run_id, status="RUNNING")
        return info.model_uri


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return redact(text)[:6000]


def save_run_pointer(path: Path, run_id: str, tracking_uri: str, experiment: str) -> Path:
    """`models/<arch>/mlflow_run.json`: how evaluation finds the training run."""
    return write_json(path, {"run_id": run_id, "tracking_uri": redact(tracking_uri), "experiment": experiment})


def read_run_pointer(path: Path) -> dict[str, str]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no MLflow run pointer (run the train stage first)")
    return json.loads(Path(path).read_text())
