"""SIGTERM (what CI cancels, `timeout`, Slurm, `docker stop` and Kubernetes send) and SIGHUP (a closed terminal)
stop a long command as Ctrl-C does: one line, exit 128 + signal, a resumable state, nothing half-written.
Real `lggseg` processes, really signalled."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.entities import Metric

from conftest import TINY, cli_args, mlflow_client, start_lggseg, tiny_config
from lggseg import pipeline
from lggseg.core.config import MlflowConfig
from lggseg.core.paths import Paths
from lggseg.core.stop_signals import StopRequested, stop_deferred, stop_signals_as_interrupts
from lggseg.tracking.runs import Tracker, read_run_pointer

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

UNET = ("model.architectures=[unet]",)


@pytest.fixture(scope="module")
def trained_unet(tmp_path_factory, prepared_project) -> Paths:
    """A project with a 1-epoch unet (models/unet/ with its MLflow run), read-only for the tests."""
    paths = Paths.at(tmp_path_factory.mktemp("signals"))
    shutil.copytree(prepared_project.processed, paths.processed)
    pipeline.train(tiny_config(*UNET, "train.epochs=1"), paths, "unet")
    return paths


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and staging folders of atomic writes (lggseg.core.atomic) under `folder`."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or ".staging." in p.name)


def _one_line(stderr: str, word: str) -> str:
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if word in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _wait_for(predicate, process: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if predicate():
            return
        time.sleep(0.02)
    process.kill()
    _, err = process.communicate()
    pytest.fail(f"{what} did not happen while the process ran (exit code {process.returncode}): {err[-2000:]}")


def test_sigterm_during_training_is_one_line_143_a_killed_run_and_resumable(tmp_path, trained_unet):
    paths = Paths.at(tmp_path / "project")
    shutil.copytree(trained_unet.root, paths.root)
    model_dir = paths.model_dir("unet")
    old_summary = json.loads((model_dir / "train_summary.json").read_text())

    process = start_lggseg(cli_args("train", paths.root, *TINY, *UNET, "train.epochs=50", arch="unet"))
    try:
        for line in process.stdout:  # epoch 1 of the new run is done: best.pt and last.pt are the new run's
            if line.startswith("unet epoch 1/50"):
                break
        # the previous run's summary never sits beside the new run's best.pt
        assert not (model_dir / "train_summary.json").exists()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-3000:]
    message = _one_line(stderr, "SIGTERM")
    assert re.search(r"lggseg train: unet: stopped by SIGTERM in epoch \d+ \(\d+ epoch\(s\) completed and saved in "
                     r".*last\.pt\); resume with train\.resume=true$", message), message
    assert not (model_dir / "train_summary.json").exists()
    assert _leftovers(paths.root / "models") == [] and _leftovers(paths.root / "reports") == []
    run_id = read_run_pointer(model_dir / "mlflow_run.json")["run_id"]
    assert run_id != old_summary["run_id"]
    client = mlflow_client(paths)
    assert client.get_run(run_id).info.status == "KILLED"
    completed = torch.load(model_dir / "last.pt", weights_only=True)["state"]["epoch"]
    assert completed >= 1
    with pytest.raises(FileNotFoundError, match="training of unet did not finish .*resume it"):
        pipeline.evaluate(tiny_config(*UNET), paths, "unet")  # not the stopped run's half-made results

    pipeline.train(tiny_config(*UNET, f"train.epochs={completed + 1}", "train.resume=true"), paths, "unet")
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    assert history["epoch"].tolist() == list(range(1, completed + 2))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/dice_patient")) == list(range(1, completed + 2))
    assert json.loads((model_dir / "train_summary.json").read_text())["run_id"] == run_id


def test_sigterm_during_evaluate_is_one_line_143_and_frees_the_lock(tmp_path, trained_unet):
    paths = Paths.at(tmp_path / "project")
    shutil.copytree(trained_unet.root, paths.root)
    owner = paths.locks / "unet.owner.json"
    process = start_lggseg(cli_args("evaluate", paths.root, *TINY, *UNET, arch="unet"))
    try:
        _wait_for(lambda: owner.is_file() and f'"pid": {process.pid}' in owner.read_text(), process,
                  "evaluate taking its lock")
        time.sleep(0.5)  # at work: loading the model, predicting
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-3000:]
    assert _one_line(stderr, "SIGTERM") == "lggseg evaluate: stopped by SIGTERM before it finished: run it again"
    assert not owner.exists()
    assert _leftovers(paths.root / "reports") == [] and _leftovers(paths.root / "models") == []


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_during_predict_of_a_folder_leaves_no_output(tmp_path, trained_unet, synthetic_tree, signum, code):
    out = tmp_path / "predictions"
    process = start_lggseg(["predict", str(synthetic_tree), "--model", str(trained_unet.model_dir("unet")),
                            "--out", str(out), "--device", "cpu", "--root", str(tmp_path)], cwd=tmp_path)
    try:
        _wait_for(lambda: any(tmp_path.glob(".predictions.staging.*")), process, "predict staging its output")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    name = signal.Signals(signum).name
    assert process.returncode == code, stderr[-3000:]
    assert _one_line(stderr, name) == f"lggseg predict: stopped by {name} before it finished: run it again"
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_sigterm_to_a_two_process_training_reaches_the_workers_and_does_not_hang(tmp_path, prepared_project):
    """train.nproc=2 (torchrun, gloo on CPU): SIGTERM to `lggseg train` alone (what `timeout` or a container
    runtime sends to the process it started) is passed on to the workers; rank 0 marks the run KILLED."""
    paths = Paths.at(tmp_path / "ddp")
    shutil.copytree(prepared_project.processed, paths.processed)
    ddp = (*TINY, *UNET, "train.nproc=2", "train.device=cpu", "train.epochs=50", "train.batch_size=8",
           "train.precision=fp32")
    process = start_lggseg(cli_args("train", paths.root, *ddp, arch="unet"))
    try:
        for line in process.stdout:
            if line.startswith("unet epoch 1/50"):
                break
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        stopped_in = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-3000:]
    assert stopped_in < 60, stopped_in
    assert "Traceback" not in stderr, stderr[-3000:]
    assert _one_line(stderr, "lggseg train:") == ("lggseg train: training with 2 processes stopped by SIGTERM (sent on "
                                                 "to the workers); resume with train.resume=true")
    run_id = read_run_pointer(paths.model_dir("unet") / "mlflow_run.json")["run_id"]
    assert mlflow_client(paths).get_run(run_id).info.status == "KILLED"
    assert torch.load(paths.model_dir("unet") / "last.pt", weights_only=True)["state"]["epoch"] >= 1


def test_sigterm_to_the_process_group_with_loader_workers_is_the_same_stop(tmp_path, prepared_project):
    """Slurm, CI runners and a terminal's Ctrl-C signal the whole process group, DataLoader workers included:
    the workers end quietly (not as a 'DataLoader worker killed' failure) and the training stops as above."""
    paths = Paths.at(tmp_path / "project")
    shutil.copytree(prepared_project.processed, paths.processed)
    process = start_lggseg(cli_args("train", paths.root, *TINY, *UNET, "train.epochs=50", "train.num_workers=1",
                                    arch="unet"), start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("unet epoch 1/50"):
                break
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM in epoch" in _one_line(stderr, "SIGTERM")
    run_id = read_run_pointer(paths.model_dir("unet") / "mlflow_run.json")["run_id"]
    assert mlflow_client(paths).get_run(run_id).info.status == "KILLED"


def test_sigterm_while_cv_queues_its_folds_says_what_goes_on_in_the_queue(tmp_path):
    """`lggseg cv` stopped while it queues the fold experiments: one line saying that what is queued stays in
    DVC's queue (its workers are processes of their own), how to stop it and how to get the report later."""
    psutil = pytest.importorskip("psutil")
    from dvc_project import make_dvc_repo, run

    repo = make_dvc_repo(tmp_path / "repo")
    process = start_lggseg(["cv", "--folds", "3", "--name", "cvs", "-S", "train.epochs=1"], cwd=repo)
    try:
        # the first `dvc exp ...` of the queueing has started: the stop comes before any worker does
        _wait_for(lambda: any("dvc" in " ".join(c.cmdline()) for c in psutil.Process(process.pid).children()),
                  process, "cv calling dvc", timeout_s=300)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        run(["dvc", "queue", "remove", "--all"], repo, check=False)  # nothing left for a later worker
    assert process.returncode == 143, stderr[-3000:]
    message = _one_line(stderr, "SIGTERM")
    assert message.startswith("lggseg cv: stopped by SIGTERM while queuing or waiting for the folds of cvs"), message
    assert "dvc queue kill" in message and "lggseg cv --name cvs --report-only" in message, message
    assert not (repo / "reports" / "cv").exists()


def test_a_stop_signal_during_a_store_write_arrives_after_the_write(tmp_path):
    """SIGTERM in the middle of a write to a sqlite store: the write completes, then the stop arrives, and the
    run can be marked KILLED at once (a transaction cut in two could keep the database locked: CI saw
    'database is locked' when rank 0 of a two-process training marked its run)."""
    tracker = Tracker(MlflowConfig(experiment="deferred"), tmp_path)
    run_id = tracker.start_run("deferred", {}, {})
    reached_the_write = False
    with stop_signals_as_interrupts(), pytest.raises(StopRequested) as stopped:
        with tracker.store.guard("log metrics to"):
            signal.raise_signal(signal.SIGTERM)  # to this thread: os.kill may reach another thread, handled later
            reached_the_write = True
            tracker.client.log_batch(run_id, metrics=[Metric("val_dice_patient", 0.5, 0, 1)])
    assert stopped.value.signum == signal.SIGTERM and reached_the_write
    started = time.monotonic()
    tracker.end_run(run_id, status="KILLED")
    assert time.monotonic() - started < 5
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.metrics["val_dice_patient"] == 0.5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back as they were outside


@pytest.fixture
def python_sigint():
    """Ctrl-C as Python's default (KeyboardInterrupt): an earlier test in the same process (a library it ran)
    may have left SIGINT ignored, and an ignored signal is rightly not deferred."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_stop_signal_during_a_deferred_block_goes_through_at_once(python_sigint):
    after_the_second = False
    with stop_signals_as_interrupts(), pytest.raises(KeyboardInterrupt):
        with stop_deferred():
            # raise_signal: to this thread, handled before it returns (two os.kill to the process can reach
            # another thread and merge into one delivery: Python keeps one pending flag per signal)
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            after_the_second = True
    assert not after_the_second
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
