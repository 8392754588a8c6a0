"""The tracking server goes away mid-training: within mlflow.server_timeout_s the training stops, one line naming
the server (no credentials) and how to resume, last.pt kept; with the server back, the resume logs what it missed.
A real `mlflow server` on 127.0.0.1, really stopped and started again."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pandas as pd
import pytest
import torch

from conftest import TINY, cli_args, start_lggseg, tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.tracking.runs import read_run_pointer
from lggseg.tracking.store import http_wait_settings
from servers import free_port, mlflow_server

PASSWORD = "hunter2-outage"
TIMEOUT_S = 5  # mlflow.server_timeout_s for the test


@pytest.mark.parametrize("timeout_s", [5, 6, 10, 30, 61, 120, 600, 3600])
def test_http_wait_settings_give_up_within_the_timeout(timeout_s):
    """Worst case of one request: every attempt waits its full timeout, with urllib3's back-off (0, 2, 4 ... s
    after consecutive failures, factor 1, no jitter) between them."""
    settings = http_wait_settings(timeout_s)
    retries, per_attempt = int(settings["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), int(settings["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    backoff = sum(0 if k <= 1 else int(settings["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]) * 2 ** (k - 1)
                  for k in range(1, retries + 1))
    assert settings["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] == "0"
    assert 1 <= retries <= 10 and per_attempt >= 1  # MLflow refuses more than 10 retries
    assert (retries + 1) * per_attempt + backoff <= timeout_s
    assert backoff >= timeout_s / 5  # a server that restarts in a few seconds is waited for


@pytest.mark.slow
def test_a_server_that_goes_away_stops_training_cleanly_and_the_resume_catches_up(tmp_path, prepared_project,
                                                                                  monkeypatch):
    paths = Paths.at(tmp_path / "project")
    shutil.copytree(prepared_project.processed, paths.processed)
    port, backend, artifacts = free_port(), f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    uri = f"http://lggseg:{PASSWORD}@127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # credentials travel in the environment, never in params
    settings = (*TINY, "model.architectures=[unet]", f"mlflow.server_timeout_s={TIMEOUT_S}")

    lines: list[tuple[float, str]] = []
    with mlflow_server(backend, artifacts, port):
        process = start_lggseg(cli_args("train", paths.root, *settings, "train.epochs=50", arch="unet"),
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        first_epoch = threading.Event()

        def read_stdout() -> None:
            for line in process.stdout:
                lines.append((time.monotonic(), line))
                if line.startswith("unet epoch 1/50"):
                    first_epoch.set()
            first_epoch.set()

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        assert first_epoch.wait(timeout=600), "no epoch finished"
    # the server is gone (stopped with its workers); the training finds out when it logs the next epoch
    try:
        stderr = process.stderr.read()
        process.wait(timeout=600)
        ended = time.monotonic()
    finally:
        process.kill()
    reader.join(timeout=10)

    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and PASSWORD not in stderr, stderr[-3000:]
    assert "Retrying" not in stderr, stderr[-3000:]  # no line per HTTP retry: the one error line says it
    errors = [line for line in stderr.splitlines() if line.startswith("lggseg train: error:")]
    assert len(errors) == 1, stderr[-3000:]
    message = errors[0]
    assert f"http://***@127.0.0.1:{port}" in message and "train.resume=true" in message, message
    assert "last.pt" in message and "stays RUNNING" in message, message
    # bounded: from the last epoch printed (its metrics are sent right after) to the exit, the timeout and a margin
    last_epoch_printed = [t for t, line in lines if line.startswith("unet epoch")][-1]
    assert ended - last_epoch_printed < TIMEOUT_S + 30, ended - last_epoch_printed
    completed = torch.load(paths.model_dir("unet") / "last.pt", weights_only=True)["state"]["epoch"]
    assert completed >= 1

    with mlflow_server(backend, artifacts, port) as url:  # back, on the same store
        pipeline.train(tiny_config(*settings, f"train.epochs={completed + 1}", "train.resume=true"), paths, "unet")
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url)
        run_id = read_run_pointer(paths.model_dir("unet") / "mlflow_run.json")["run_id"]
        assert client.get_run(run_id).info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run_id, "val/dice_patient"))
        assert steps == list(range(1, completed + 2))  # what the outage missed, once; nothing twice
    history = pd.read_csv(paths.report_dir("unet") / "train_history.csv")
    assert history["epoch"].tolist() == list(range(1, completed + 2))
