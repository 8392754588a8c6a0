"""A team's setup: the pipeline logs to a real `mlflow server` over HTTP, backed by PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from conftest import tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from servers import free_port, mlflow_server, postgres_bindir, postgres_cluster, skip_or_fail

pytestmark = pytest.mark.slow

ARCHITECTURES = ("unet", "fpn")
PASSWORD = "hunter2-tracking"  # the server has no auth and ignores it; it must never show up anywhere


@pytest.fixture
def tracking_server(tmp_path):
    """(server URL, PostgreSQL URI) of an MLflow server on a fresh PostgreSQL database."""
    if postgres_bindir() is None:
        skip_or_fail("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install -e '.[dev]'")
    with postgres_cluster(tmp_path) as database, mlflow_server(database, tmp_path / "artifacts", free_port()) as url:
        yield url, database


def test_pipeline_logs_and_registers_through_a_tracking_server(tracking_server, prepared_project, tmp_path,
                                                                monkeypatch, capfd):
    import mlflow
    import sqlalchemy
    from mlflow import MlflowClient

    url, database = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url.replace("http://", f"http://lggseg:{PASSWORD}@"))
    paths = Paths.at(tmp_path / "project")
    shutil.copytree(prepared_project.processed, paths.processed)
    cfg = tiny_config("train.epochs=2", "mlflow.experiment=lggseg-team", f"model.architectures=[{','.join(ARCHITECTURES)}]")
    for arch in ARCHITECTURES:
        pipeline.train(cfg, paths, arch)
    for arch in ARCHITECTURES:
        pipeline.evaluate(cfg, paths, arch)
    pipeline.compare(cfg, paths)

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    experiment = client.get_experiment_by_name("lggseg-team")
    runs = {r.data.tags["architecture"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(ARCHITECTURES)
    for arch, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploaded through the server
        history = client.get_metric_history(run.info.run_id, "val/dice_patient")
        assert sorted(m.step for m in history) == [1, 2]  # epochs count from 1
        assert 0 <= run.data.metrics["test/dice_patient_mean"] <= 1
        assert json.loads((paths.model_dir(arch) / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
        candidate = client.get_model_version_by_alias(f"lgg-synthetic-{arch}", "candidate")
        assert candidate.run_id == run.info.run_id
    champion = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
    assert champion.tags["architecture"] in ARCHITECTURES

    # the champion comes back through the server
    assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"]
    model = mlflow.pytorch.load_model("models:/lgg-synthetic-segmentation@champion", map_location="cpu")
    with torch.no_grad():
        output = model(torch.zeros(3, 3, 64, 64))  # torch.export module: any batch size, no .eval()
    assert output.shape == (3, 1, 64, 64)

    # the server really stored everything in PostgreSQL
    engine = sqlalchemy.create_engine(database)
    try:
        with engine.connect() as connection:
            count = lambda sql: connection.execute(sqlalchemy.text(sql)).scalar()  # noqa: E731
            assert count("SELECT count(*) FROM runs") == 2
            assert count("SELECT count(*) FROM registered_models WHERE name LIKE 'lgg-%'") == 3
            assert count("SELECT count(*) FROM metrics WHERE key = 'val/dice_patient'") == 4
    finally:
        engine.dispose()

    # the password is in no message, file or run: stage output, logs, run pointers, reports, params and tags
    out, err = capfd.readouterr()
    files = [p for p in paths.root.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".md", ".txt")]
    places = {"stdout": out, "stderr": err, **{str(p): p.read_text(errors="replace") for p in files},
              **{f"run {arch}": repr((run.data.params, run.data.tags)) for arch, run in runs.items()}}
    leaks = [f"{place}: {line.replace(PASSWORD, '<password>')}"
             for place, text in places.items() for line in text.splitlines() if PASSWORD in line]
    assert not leaks, "the tracking URI's password leaked:\n" + "\n".join(leaks[:10])
