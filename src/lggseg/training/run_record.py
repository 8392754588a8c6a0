"""The MLflow record of a training run: its params and tags, the epochs a kill left unlogged, and how the run
ends (FINISHED, FAILED, KILLED), with the one line each way of failing is reported in."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

from lggseg.core.config import Config
from lggseg.core.diskspace import DiskSpaceError
from lggseg.core.stop_signals import StopRequested, signal_name, stop_signal_of
from lggseg.model.devices import Runtime
from lggseg.model.distributed import Group
from lggseg.tracking.runs import (
    VAL_DICE_PATIENT,
    Tracker,
    environment_tags,
    epoch_metrics,
    git_state,
    params_changed_tag,
    run_name,
    save_run_pointer,
)
from lggseg.tracking.store import TrackingError
from lggseg.training.divergence import TrainingDiverged
from lggseg.training.state import TrainingState

log = logging.getLogger(__name__)

TRAIN_SECTIONS = ("split", "preprocess", "augment", "model", "train")  # what a run depends on (split: which patients)


class TrainingInterrupted(StopRequested):
    """Ctrl-C, SIGTERM or SIGHUP during training; the message says where it stopped and how to resume."""


def run_tags(cfg: Config, arch: str, root: Path, runtime: Runtime, group: Group, trained_on: dict) -> dict:
    """`data_source` as the download stage resolved it (`data.source: auto` is `kaggle` or `local` here)."""
    return {
        **git_state(root), **environment_tags(), **params_changed_tag(cfg, root), "architecture": arch,
        "data_fingerprint": trained_on["data_fingerprint"], "device": runtime.name,
        "data_source": trained_on["data_source"], "stage": "train",
        "processes": str(group.world_size), **{f"runtime.{k}": v for k, v in runtime.describe().items() if k != "device"},
    }


def run_params(cfg: Config, arch: str, train_slices: int, val_slices: int) -> dict:
    return {**cfg.flat(TRAIN_SECTIONS), "data.source": cfg.data.source, "train.architecture": arch,
            "data.train_slices": train_slices, "data.val_slices": val_slices}


def start_run(tracker: Tracker, cfg: Config, arch: str, model_dir: Path, state: TrainingState, params: dict,
              tags: dict) -> None:
    """Start (or, resuming, reopen) the run of `model_dir` into `state.run_id` and point the folder at it."""
    # under this folder's lock: a RUNNING run of it, other than the one resumed here, lost its process
    tracker.end_interrupted_run(model_dir / "mlflow_run.json", "trained", resuming=state.run_id)
    state.run_id = tracker.start_run(run_name(arch), params, tags, run_id=state.run_id)
    save_run_pointer(model_dir / "mlflow_run.json", state.run_id, tracker.uri, cfg.mlflow.experiment)


def log_missing_epochs(tracker: Tracker, state: TrainingState, lr_scheduled: bool) -> None:
    """A resumed run: log the epochs of `state.history` that a kill left unlogged after last.pt was written."""
    logged = {m.step for m in tracker.client.get_metric_history(state.run_id, VAL_DICE_PATIENT)}
    for row in state.history:
        if row["epoch"] not in logged:
            tracker.log_metrics(state.run_id, epoch_metrics(row, lr_scheduled), step=row["epoch"])


@contextlib.contextmanager
def run_outcome(arch: str, state: TrainingState, tracker: Tracker | None, last_path: Path) -> Iterator[None]:
    """Around the epochs: the run ends FINISHED, or FAILED / KILLED with the failure raised again as one line
    (what is saved, how to resume). `tracker` is None on the ranks that do not log."""
    status: str | None = "FAILED"
    try:
        yield
        status = "FINISHED"
    except TrainingDiverged as exc:
        kept = (f"best.pt and last.pt keep the last finite state (epoch {state.epoch})" if state.epoch
                else "nothing was saved")
        if tracker is not None:
            with contextlib.suppress(TrackingError):  # the divergence is the news; a store failure is logged
                tracker.set_tags(state.run_id, {"failure_reason": str(exc)[:5000]})
        raise TrainingDiverged(f"{arch}: {exc}; {kept}") from None
    except KeyboardInterrupt as exc:
        status = "KILLED"
        signum = stop_signal_of(exc)
        how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal_name(signum)}"
        done = f"{state.epoch} epoch(s) completed and saved in {last_path}" if state.epoch else "no epoch completed"
        raise TrainingInterrupted(signum, f"{arch}: {how} in epoch {state.epoch + 1} ({done}); "
                                          "resume with train.resume=true") from None
    except DiskSpaceError as exc:  # a checkpoint, the history or the summary did not fit: the run ends FAILED
        raise DiskSpaceError(_disk_full_message(arch, exc, state, tracker, last_path), exc.path) from None
    except TrackingError as exc:
        status = None  # the store does not answer: marking the run would wait as long again
        raise TrackingError(_store_lost_message(arch, exc, state, last_path)) from None
    finally:
        if tracker is not None and status is not None:
            _end_run(tracker, state, status, last_path, arch)


def _store_lost_message(arch: str, exc: TrackingError, state: TrainingState, last_path) -> str:
    saved = f"epochs 1-{state.epoch} are saved in {last_path}" if state.epoch else "no epoch was saved"
    return (f"{arch}: training stopped after epoch {state.epoch} because MLflow did not take its record: {exc} "
            f"{saved}; the MLflow run stays RUNNING until it is resumed: when the store answers again, run with "
            "train.resume=true (the epochs it missed are logged then)")


def _disk_full_message(arch: str, exc: DiskSpaceError, state: TrainingState, tracker: Tracker | None,
                       last_path) -> str:
    """The full disk in one line: what is kept, and whether the MLflow run could be given the reason (a store
    on the same full disk cannot take it: the run then stays RUNNING until a resume)."""
    # the write that failed left its target as it was: say what is on disk, not what the loop had reached
    kept = (f"{last_path.name} keeps the last epoch it held (resume with train.resume=true once there is space)"
            if last_path.is_file() else f"no {last_path.name} was saved")
    record = ""
    if tracker is not None and state.run_id:
        try:
            tracker.set_tags(state.run_id, {"failure_reason": str(exc)[:5000]})
        except TrackingError:
            record = (f"; the MLflow run {state.run_id} could not be marked FAILED either (its store cannot be "
                      "written) and stays RUNNING: resume with train.resume=true once there is space")
    return f"{arch}: {exc}; {kept}{record}"


def _end_run(tracker: Tracker, state: TrainingState, status: str, last_path, arch: str) -> None:
    """Mark the run; when the store fails here, a finished training says how to complete its record, and an
    interrupted or failed one keeps its own message (the store's failure is logged)."""
    try:
        tracker.end_run(state.run_id, status=status)
    except TrackingError as exc:
        if status == "FINISHED":
            raise TrackingError(_store_lost_message(arch, exc, state, last_path)) from None
        log.warning("could not mark MLflow run %s %s: %s", state.run_id, status, exc)

