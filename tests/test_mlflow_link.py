"""`lggseg mlflow-link` and the saved runs view it opens: on a real sqlite store made by the project's Tracker.
The browser side (the view as MLflow's UI applies it) is tests/test_mlflow_ui.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lggseg import cli
from lggseg.core.config import MlflowConfig
from lggseg.tracking.runs import Tracker
from lggseg.tracking.store import HEADLINE_METRIC, RUNS_VIEW_KEY, SAVED_VIEW_TAG_PREFIX

UI = "http://127.0.0.1:5000"


@pytest.fixture
def store(tmp_path) -> Path:
    """A project root whose store has an lggseg experiment and one MLflow did not make through lggseg."""
    tracker = Tracker(MlflowConfig(experiment="lggseg-demo"), tmp_path)
    tracker.client.create_experiment("someone-elses")
    return tmp_path


def _links(root: Path, capsys) -> dict[str, str]:
    assert cli.main(["mlflow-link", "--ui", UI, "--root", str(root), "--params", str(root / "none.yaml")]) == 0
    return dict(re.findall(r"^  (\S+): (http\S+)$", capsys.readouterr().out, flags=re.M))


def test_the_link_opens_the_saved_view_of_each_lggseg_experiment(store, capsys):
    links = _links(store, capsys)
    assert list(links) == ["lggseg-demo"]  # not the experiment lggseg did not make
    client = Tracker(MlflowConfig(experiment="lggseg-demo"), store).client
    experiment = client.get_experiment_by_name("lggseg-demo")
    assert links["lggseg-demo"] == (f"{UI}/#/experiments/{experiment.experiment_id}/runs"
                                    f"?viewStateShareKey={RUNS_VIEW_KEY}&workflowType=machine_learning")
    view = json.loads(experiment.tags[SAVED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY])
    state = json.loads(view["state"])
    assert view["name"] == "Test Dice"
    assert state["orderByKey"] == f"metrics.`{HEADLINE_METRIC}`" and state["orderByAsc"] is False
    assert state["selectedColumns"][:2] == ["metrics.`test/dice_patient_mean`", "metrics.`val/best_dice_patient`"]
    assert "tags.`params_changed`" in state["selectedColumns"]


def test_a_view_the_user_changed_in_the_ui_is_kept(store, capsys):
    client = Tracker(MlflowConfig(experiment="lggseg-demo"), store).client
    experiment_id = client.get_experiment_by_name("lggseg-demo").experiment_id
    client.set_experiment_tag(experiment_id, SAVED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY, '{"name": "mine"}')
    assert "lggseg-demo" in _links(store, capsys)
    assert client.get_experiment(experiment_id).tags[SAVED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY] == '{"name": "mine"}'


def test_without_a_store_it_says_so_and_the_ui_still_starts(tmp_path, capsys):
    assert cli.main(["mlflow-link", "--ui", UI, "--root", str(tmp_path), "--params", str(tmp_path / "none.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"MLflow UI: {UI} (no links: no MLflow store at {tmp_path / 'mlruns' / 'mlflow.db'}")
    assert not (tmp_path / "mlruns").exists()  # nothing created
