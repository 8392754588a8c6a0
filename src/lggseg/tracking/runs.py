"""The one place that talks to MLflow: store location, runs, metrics, artifacts, model registry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from lggseg.core.atomic import write_json
from lggseg.core.config import Config, MlflowConfig, changed_params, committed_config, param_text
from lggseg.core.redaction import redact

log = logging.getLogger(__name__)

DVC_TEMP_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep
MODEL_PIP_REQUIREMENTS = ["torch", "segmentation-models-pytorch"]
# a registered version's tag (and its logged model's metadata): the SHA-256 of the best.pt it was logged from,
# so the registry can be checked to hold exactly the weights that were evaluated
WEIGHTS_TAG = "weights_sha256"
EXPERIMENT_TAGS = {
    # MLflow 3's UI opens an experiment of unknown kind on its GenAI pages (traces); this opens "Training runs"
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "lggseg: FLAIR-abnormality (lower-grade glioma) segmentation on the LGG MRI Segmentation data set. "
        "One run per architecture and pipeline run: per-epoch training and validation metrics, then `test_*` "
        "metrics on held-out patients (headline: test_dice_patient_mean, the mean per-patient 3-D Dice), "
        "figures under evaluation/, and registered models `lgg-<arch>` (@candidate) and `lgg-segmentation` (@champion)."
    ),
}


class TrackingError(RuntimeError):
    """The tracking server or store cannot be reached or used."""


# MLflow's own HTTP settings retry a request for minutes (7 retries, back-off factor 2, 120 s per attempt).
# lggseg derives them from mlflow.server_timeout_s instead; values set in the environment before lggseg
# started win.
HTTP_WAIT_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER")
_HTTP_WAIT_SET_BY_USER = frozenset(k for k in HTTP_WAIT_ENV if k in os.environ)


def http_wait_settings(timeout_s: int) -> dict[str, str]:
    """MLflow HTTP settings under which one request gives up on a server within `timeout_s` seconds: about
    half of it in back-off between retries (urllib3 sleeps 0, 2, 4, 8 ... s, so a restarting server is waited
    for), the rest in the attempts themselves (each waits its share for an answer; MLflow takes whole seconds)."""
    retries = max(1, int(math.log2(timeout_s / 2 + 2)))
    backoff = 2**retries - 2
    per_attempt = max(1, (timeout_s - backoff) // (retries + 1))
    return {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_attempt), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}


def bound_http_waits(timeout_s: int) -> None:
    """Apply http_wait_settings (MLflow reads them at every request), except what the user's environment set."""
    for key, value in http_wait_settings(timeout_s).items():
        if key not in _HTTP_WAIT_SET_BY_USER:
            os.environ[key] = value


def weights_sha256(path: Path) -> str:
    """SHA-256 (hex) of a checkpoint file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def project_root(start: Path) -> Path:
    """The repository whose `mlruns/` a run logs into. `dvc exp run --temp/--queue` runs in a copy
    under `<repo>/.dvc/tmp/exps/`; those runs still log into the repo's own store."""
    text = str(Path(start).resolve())
    marker = text.find(DVC_TEMP_MARKER)
    return Path(text[:marker]) if marker >= 0 else Path(text)


def resolve_tracking_uri(cfg: MlflowConfig, root: Path) -> str:
    """MLFLOW_TRACKING_URI, else `mlflow.tracking_uri`, else sqlite under the repo's mlruns/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri:
        return uri
    return f"sqlite:///{project_root(root) / 'mlruns' / 'mlflow.db'}"


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the working tree (empty when not a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def environment_tags() -> dict[str, str]:
    """DVC's stage and experiment context when the run happens inside `dvc repro` / `dvc exp run`."""
    tags = {}
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
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
    """An MLflow client bound to one store and experiment, created once per stage."""

    def __init__(self, cfg: MlflowConfig, root: Path, read_only: bool = False):
        """read_only: only read an existing store (the registry, for `lggseg predict`): no local store or
        experiment is created where there is none."""
        import mlflow
        from mlflow import MlflowClient

        self.cfg = cfg
        self.root = project_root(root)
        self.uri = resolve_tracking_uri(cfg, root)
        self._mlflow = mlflow
        # MLflow prints "View run ... at: <server URI>" whenever a run on a server ends, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        if self.uri.startswith(("http://", "https://")):
            bound_http_waits(cfg.server_timeout_s)
            self._check_server()
        if read_only and self.uri.startswith("sqlite:///") and not self._sqlite_database().is_file():
            raise TrackingError(f"no MLflow store at {self._sqlite_database()}: run the pipeline first (dvc repro), "
                                "point MLFLOW_TRACKING_URI at the store that has the model, or give a local "
                                "models/<arch>/ folder")
        with self._store_guard(), self._creation_lock():
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = None if read_only else self._experiment()
            self.client.search_registered_models(max_results=1)  # the registry's tables exist too

    @contextlib.contextmanager
    def _creation_lock(self) -> Iterator[None]:
        """Serialise first use of a local sqlite store: two first runs at once would both try to create
        its tables, and one died in alembic's migration."""
        if not self.uri.startswith("sqlite:///"):
            yield
            return
        from filelock import FileLock

        database = self._sqlite_database()
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{database}.lock", timeout=120):
            yield

    def _sqlite_database(self) -> Path:
        return Path(self.uri.removeprefix("sqlite:///"))

    @contextlib.contextmanager
    def _store_guard(self, doing: str = "use") -> Iterator[None]:
        """Any failure of the store becomes one TrackingError line naming the store (credentials hidden)."""
        try:
            yield
        except TrackingError:
            raise
        except Exception as exc:  # mlflow raises MlflowException, requests errors, sqlalchemy errors...
            raise TrackingError(
                f"cannot {doing} the MLflow tracking store {redact(self.uri)} (experiment {self.cfg.experiment!r}): "
                f"{type(exc).__name__}: {redact(str(exc)).splitlines()[0][:300] if str(exc) else ''}. "
                + (f"Is the server up? (waited up to mlflow.server_timeout_s={self.cfg.server_timeout_s} s)"
                   if self.uri.startswith(("http://", "https://")) else
                   "Check the store (a damaged mlruns/mlflow.db can be moved aside to start a new one) or "
                   "MLFLOW_TRACKING_URI / mlflow.tracking_uri.")
            ) from None

    def require_run(self, run_id: str, pointer: Path) -> None:
        """The training run `pointer` (models/<arch>/mlflow_run.json) names must be in this store."""
        from mlflow.exceptions import MlflowException

        with self._store_guard("read"):
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

    def _experiment(self) -> str:
        """Get or create the experiment; this is also the early connectivity check."""
        experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        if experiment is None:
            artifacts = None
            if self.uri.startswith("sqlite:///"):
                # beside the database, wherever it is: MLflow's default (./mlruns under the working
                # directory) would scatter artifacts into whichever folder a stage runs in
                artifacts = (self._sqlite_database().parent / "artifacts").as_uri()
            experiment_id = self.client.create_experiment(self.cfg.experiment, artifact_location=artifacts)
            tags: Mapping[str, str] = {}
        else:
            experiment_id, tags = experiment.experiment_id, experiment.tags
        for key, value in EXPERIMENT_TAGS.items():
            if key not in tags:  # also marks experiments made before these tags existed
                self.client.set_experiment_tag(experiment_id, key, value)
        return experiment_id

    def _check_server(self, timeout: float = 5.0) -> None:
        """One quick request instead of MLflow's retries with back-off (minutes) on a dead server."""
        import requests

        try:
            requests.get(self.uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
        except requests.RequestException as exc:
            raise TrackingError(
                f"MLflow tracking server {redact(self.uri)} is not reachable ({type(exc).__name__}); "
                "start it, fix MLFLOW_TRACKING_URI / mlflow.tracking_uri, or unset them to use the local store."
            ) from None

    # runs -----------------------------------------------------------------------------------------

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str], run_id: str | None = None) -> str:
        """A new run (or the existing `run_id`, when resuming) with params and tags logged."""
        with self._store_guard("start a run in"):
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
        with self._store_guard("log params to"):
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            with self._store_guard("set tags in"):
                self.client.log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        """Numeric metrics (non-numbers are skipped). NaN and inf are logged as what they are: a diverging
        loss must show, not vanish."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(prefix + key, float(value), now, step or 0) for key, value in metrics.items()
                 if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))]
        if items:
            with self._store_guard("log metrics to"):
                self.client.log_batch(run_id, metrics=items)

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        with self._store_guard(f"mark the run {status} in"):
            self.client.set_terminated(run_id, status=status)

    # models ---------------------------------------------------------------------------------------

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
        with self._fluent(), self._mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id):
            info = self._mlflow.pytorch.log_model(
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

    def register(self, model_uri: str, name: str, alias: str, tags: Mapping[str, str]) -> str:
        """A new version of registered model `name` for `model_uri`, with `alias` moved to it."""
        with self._fluent():
            version = self._mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
        self.client.set_registered_model_alias(name, alias, version.version)
        return version.version

    def move_alias(self, name: str, alias: str, version: str, tags: Mapping[str, str]) -> None:
        """Point `alias` of registered model `name` at an existing `version`, updating its `tags`."""
        with self._store_guard("update"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, str(value))
            self.client.set_registered_model_alias(name, alias, version)

    def versions_holding(self, name: str, checkpoint_sha256: str, **tags: str) -> list:
        """READY versions of registered model `name` tagged with these weights (and `tags`), newest first; by
        tag only: check what they really hold with `registered_files`."""
        query = f"name='{name}' and tags.{WEIGHTS_TAG}='{checkpoint_sha256}'"
        query += "".join(f" and tags.{key}='{value}'" for key, value in tags.items())
        with self._store_guard("read"):
            found = self.client.search_model_versions(query)
        return sorted((v for v in found if v.status == "READY"), key=lambda v: int(v.version), reverse=True)

    def registered_files(self, version) -> tuple[str, dict]:
        """(SHA-256 of the best.pt, inference settings) a registered version's logged model really holds:
        read from its artifact's bytes, because a tag alone can lie."""
        with tempfile.TemporaryDirectory(prefix="lggseg-registered-") as tmp:
            folder = self.download_model_files(version, Path(tmp), f"models:/{version.name}/{version.version}")
            return weights_sha256(folder / "best.pt"), json.loads((folder / "inference.json").read_text())

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
        with self._store_guard("update"):
            try:
                run = self.client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                return None  # another store's run: nothing of this store to end
            if run.info.status != "RUNNING":
                return None
            folder = os.path.relpath(Path(pointer).parent, self.root)
            self.set_tags(run_id, {"interrupted": (
                f"left RUNNING by a process killed while it wrote {folder}; ended as KILLED when {folder} was next "
                f"{doing} (process {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})")})
            self.client.set_terminated(run_id, status="KILLED")
        log.warning("MLflow run %s of %s was left RUNNING by a killed process: marked KILLED", run_id, folder)
        return run_id

    def load_model(self, model_uri: str, device: str = "cpu"):
        """Load a logged or registered model (`models:/lgg-segmentation@champion`, `models:/lgg-unet/1`) as
        MLflow users do: a torch.export module (already in inference mode: do not call .eval())."""
        with self._fluent():
            return self._mlflow.pytorch.load_model(model_uri, map_location=device)

    def resolve_registered(self, model_uri: str):
        """The ModelVersion behind `models:/<name>@<alias>` or `models:/<name>/<version>`; a URI that names
        nothing fails with what the registry does hold."""
        from mlflow.exceptions import MlflowException

        match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
        if not match:
            raise ValueError(f"model {model_uri!r}: expected models:/<name>@<alias>, models:/<name>/<version> "
                             "or a local models/<arch>/ folder")
        name, alias, version = match.groups()
        with self._store_guard("read"):
            try:
                if alias is not None:
                    return self.client.get_model_version_by_alias(name, alias)
                return self.client.get_model_version(name, version)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
        raise ValueError(f"model {model_uri!r} is not in the registry at {redact(self.uri)}. {self.registry_listing()}")

    def registry_listing(self) -> str:
        """`Registered: lgg-unet (versions 1, 2; @candidate=2), ...`, or that there are none."""
        with self._store_guard("read"):
            models = self.client.search_registered_models()
            parts = []
            for model in sorted(models, key=lambda m: m.name):
                versions = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{model.name}'"))
                aliases = "; ".join(f"@{a}={v}" for a, v in sorted(model.aliases.items()))
                parts.append(f"{model.name} (versions {', '.join(map(str, versions))}{'; ' + aliases if aliases else ''})")
        if not parts:
            return "The registry holds no models yet (run the pipeline: dvc repro)."
        return "Registered: " + ", ".join(parts) + "."

    def download_model_files(self, version, dst: Path, model_uri: str) -> Path:
        """Download the `extra_files/` of a registered model version (the weights-only checkpoint and the
        inference settings) into dst."""
        from mlflow.exceptions import MlflowException

        stale = (f"{model_uri} (version {version.version} of {version.name}) has no lggseg checkpoint and inference "
                 "settings: it was logged by an older lggseg. Re-run the evaluate stage to log it again")
        # registry versions made by mlflow.register_model point at their logged model by `source`
        match = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
        model_id = getattr(version, "model_id", None) or (match.group(1) if match else None)
        if not model_id:
            raise ValueError(stale)
        with self._store_guard("read"), self._fluent():
            location = self.client.get_logged_model(model_id).artifact_location
            try:
                folder = Path(self._mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/extra_files",
                                                                         dst_path=str(dst)))
            except (MlflowException, OSError):
                folder = None
        if folder is None or not (folder / "best.pt").is_file() or not (folder / "inference.json").is_file():
            raise ValueError(stale)
        return folder

    @contextlib.contextmanager
    def _fluent(self) -> Iterator[None]:
        """Point MLflow's global (fluent) API at this store for one call, then put it back:
        `mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI, which would leak into later stores."""
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        self._mlflow.set_tracking_uri(self.uri)
        self._mlflow.set_registry_uri(self.uri)
        try:
            yield
        finally:
            self._mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or "")
            self._mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"] or "")
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


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
