"""A hyperparameter sweep with DVC's own queue: `dvc exp run --queue -S ...`, then `dvc queue start`."""

from __future__ import annotations

import json
import time

import pytest

from conftest import TINY, mlflow_client
from dvc_project import make_dvc_repo, run
from lggseg.core.paths import Paths

pytestmark = pytest.mark.slow

LEARNING_RATES = {"sweep-lr-a": "0.002", "sweep-lr-b": "0.0005"}


def _wait_for_queue(repo, timeout: float = 900) -> str:
    """`dvc queue status` until nothing is queued or running; its last output."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(word in status for word in (" Queued", " Running")):
            return status
        if time.monotonic() > deadline:
            run(["dvc", "queue", "stop", "--kill"], repo, check=False)
            raise AssertionError(f"the queue did not finish in {timeout:.0f} s:\n{status}")
        time.sleep(3)


def test_queued_sweep_runs_each_experiment_into_mlflow_with_its_name_and_params(tmp_path):
    repo = make_dvc_repo(tmp_path / "repo")
    settings = [arg for s in (*TINY, "data.synthetic.patients=8", "model.architectures=[unet]", "train.epochs=1",
                              "mlflow.register=false") for arg in ("-S", s)]
    for name, lr in LEARNING_RATES.items():
        queued = run(["dvc", "exp", "run", "--queue", "--name", name, *settings, "-S", f"train.lr={lr}"], repo)
        assert "Queued experiment" in queued.stdout + queued.stderr
    run(["dvc", "queue", "start", "-j", "1"], repo)
    status = _wait_for_queue(repo)
    assert status.count("Success") == 2 and "Failed" not in status, status

    # both are DVC experiments with their params and metrics (what `dvc exp show` / `make exps` list)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = {exp["name"]: exp for baseline in shown for exp in (baseline.get("experiments") or [])}
    assert set(LEARNING_RATES) <= set(experiments)
    for name, lr in LEARNING_RATES.items():
        data = experiments[name]["revs"][0]["data"]
        assert data["params"]["params.yaml"]["data"]["train"]["lr"] == float(lr)
        assert 0 <= data["metrics"]["reports/arch/unet/metrics.json"]["data"]["dice_patient_mean"] <= 1

    # and MLflow runs in the repository's own store, each tagged with its experiment's name and params
    client = mlflow_client(Paths.at(repo))
    runs = client.search_runs([client.get_experiment_by_name("lggseg-tests").experiment_id],
                              filter_string="tags.stage = 'train'")
    by_name = {r.data.tags.get("dvc_exp_name"): r for r in runs}
    assert set(by_name) == set(LEARNING_RATES), [r.data.tags for r in runs]
    for name, lr in LEARNING_RATES.items():
        assert float(by_name[name].data.params["train.lr"]) == float(lr)
        assert by_name[name].info.run_name == f"unet ({name})" and by_name[name].info.status == "FINISHED"
