"""The MLflow store both the run log (lggseg.tracking.runs) and the model registry (lggseg.tracking.registry)
use: where it is, one client connected to it (server checked, local tables created, experiment made), its
HTTP waits bounded, its failures reported as one TrackingError line, and the SHA-256 that ties a checkpoint
to what the store holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from lggseg.core.config import MlflowConfig
from lggseg.core.redaction import redact
from lggseg.core.stop_signals import stop_deferred

DVC_TEMP_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep
# a registered version's tag (and its logged model's metadata): the SHA-256 of the best.pt it was logged from,
# so the registry can be checked to hold exactly the weights that were evaluated
WEIGHTS_TAG = "weights_sha256"
EXPERIMENT_TAGS = {
    # MLflow 3's UI opens an experiment of unknown kind on its GenAI pages (traces); this opens "Training runs"
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "lggseg: FLAIR-abnormality (lower-grade glioma) segmentation on the LGG MRI Segmentation data set. "
        "One run per architecture and pipeline run: per-epoch `train/` and `val/` metrics, then `test/` "
        "metrics on held-out patients (headline: test/dice_patient_mean, the mean per-patient 3-D Dice), "
        "figures under evaluation/, and registered models `lgg-<arch>` (@candidate) and `lgg-segmentation` (@champion), "
        "`lgg-synthetic-*` when trained on synthetic data. The view `Test Dice` (Views menu) sorts the runs by it."
    ),
}
# A saved view of the runs table (MLflow >= 3.15): the experiment tag `mlflow.sharedViewState.<key>`, opened by
# `#/experiments/<id>/runs?viewStateShareKey=<key>`. A link alone carries the sort but not the columns; a fresh
# browser otherwise shows Source, Models and Dataset and no metric at all.
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "lggseg-test-dice"
RUNS_VIEW_NAME = "Test Dice"
TEST_PREFIX = "test/"  # evaluation's numbers on the test patients: `test/dice_patient_mean` ...
HEADLINE_METRIC = TEST_PREFIX + "dice_patient_mean"
RUNS_VIEW_SORT = HEADLINE_METRIC
# the columns, in this order; their widths fit their names (the table's default, about 100 px, cuts them to
# `test/dice_pat...`). Test and val Dice and the params a run changed fit a 1400 px window beside the run names;
# the intervals are one click away (Columns) and in reports/comparison.md
RUNS_VIEW_METRICS = {RUNS_VIEW_SORT: 190, "val/best_dice_patient": 180}
RUNS_VIEW_TAGS = {"params_changed": 240}


def column_key(kind: str, name: str) -> str:
    """The runs table's name of a column: `metrics.`test/dice_patient_mean``, `tags.`params_changed``."""
    return f"{kind}.`{name}`"


def runs_view_state() -> dict:
    """The runs table of the saved view: Dice columns first, best test per-patient Dice on top."""
    widths = {**{column_key("metrics", m): w for m, w in RUNS_VIEW_METRICS.items()},
              **{column_key("tags", t): w for t, w in RUNS_VIEW_TAGS.items()}}
    return {"orderByKey": column_key("metrics", RUNS_VIEW_SORT), "orderByAsc": False, "searchFilter": "",
            "selectedColumns": list(widths), "columnOrder": list(widths), "columnWidths": widths,
            "runsHiddenMode": "SHOW_ALL"}


def runs_view_tag(now_ms: int) -> dict[str, str]:
    """The saved view as MLflow's UI stores one: an envelope (name, times) around the state as JSON text."""
    envelope = {"name": RUNS_VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms,
                "state": json.dumps(runs_view_state())}
    return {SAVED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY: json.dumps(envelope)}


def runs_view_link(ui_url: str, experiment_id: str) -> str:
    """The link that opens the experiment's runs in the saved view (sorted by test per-patient Dice).
    `workflowType=machine_learning`: the UI's "Model training" side bar, whatever the browser's GenAI |
    Model training switch says (GenAI in a fresh browser, with GenAI pages and pop-overs)."""
    return (f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={RUNS_VIEW_KEY}&workflowType=machine_learning")


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


class MlflowStore:
    """One MLflow tracking store and experiment with a client connected to it, opened once per stage and shared
    by the run log and the registry."""

    def __init__(self, cfg: MlflowConfig, root: Path, read_only: bool = False):
        """read_only: only read an existing store (the registry, for `lggseg predict`): no local store or
        experiment is created where there is none."""
        import mlflow
        from mlflow import MlflowClient

        self.cfg = cfg
        self.root = project_root(root)
        self.uri = resolve_tracking_uri(cfg, root)
        self.mlflow = mlflow
        # MLflow prints "View run ... at: <server URI>" whenever a run on a server ends, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        if self.uri.startswith(("http://", "https://")):
            bound_http_waits(cfg.server_timeout_s)
            self._check_server()
        if read_only and self.uri.startswith("sqlite:///") and not self._sqlite_database().is_file():
            raise TrackingError(f"no MLflow store at {self._sqlite_database()}: run the pipeline first (dvc repro), "
                                "point MLFLOW_TRACKING_URI at the store that has the model, or give a local "
                                "models/<arch>/ folder")
        with self.guard(), self._creation_lock():
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = None if read_only else self._experiment()
            self.client.search_registered_models(max_results=1)  # the registry's tables exist too

    @contextlib.contextmanager
    def guard(self, doing: str = "use") -> Iterator[None]:
        """Any failure of the store becomes one TrackingError line naming the store (credentials hidden). On a
        database store (sqlite, PostgreSQL) a stop signal waits for the block to end: a transaction cut by it can
        leave the database locked. A server's waits (up to mlflow.server_timeout_s) stay interruptible."""
        deferred = (contextlib.nullcontext() if self.uri.startswith(("http://", "https://"))
                    else stop_deferred())
        try:
            with deferred:
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

    @contextlib.contextmanager
    def fluent(self) -> Iterator[None]:
        """Point MLflow's global (fluent) API at this store for one call, then put it back:
        `mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI, which would leak into later stores."""
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        self.mlflow.set_tracking_uri(self.uri)
        self.mlflow.set_registry_uri(self.uri)
        try:
            yield
        finally:
            self.mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or "")
            self.mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"] or "")
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

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
        self._mark_experiment(experiment_id, tags)
        return experiment_id

    def _mark_experiment(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        """Kind, note and saved view, where missing: also marks experiments made before these tags existed,
        and leaves a view the user changed in the UI as it is."""
        for key, value in {**EXPERIMENT_TAGS, **runs_view_tag(int(time.time() * 1000))}.items():
            if key not in tags:
                self.client.set_experiment_tag(experiment_id, key, value)

    def ui_links(self, ui_url: str) -> dict[str, str]:
        """Experiment name -> the link into `ui_url` (an MLflow UI on this store) that opens its runs sorted by
        test per-patient Dice, for each experiment lggseg made (its note), last updated first; each is marked
        first (kind, saved view), so stores made by older lggseg versions get the view too."""
        with self.guard("read"):
            experiments = self.client.search_experiments(
                filter_string="tags.`mlflow.note.content` LIKE 'lggseg:%'", order_by=["last_update_time DESC"])
            for experiment in experiments:
                self._mark_experiment(experiment.experiment_id, experiment.tags)
        return {e.name: runs_view_link(ui_url, e.experiment_id) for e in experiments}

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
