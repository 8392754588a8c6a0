"""The registry holds exactly the weights that were evaluated: every registered version carries the SHA-256 of
the `best.pt` it was logged from, `compare` promotes only a version whose weights are the evaluated
`models/<arch>/best.pt`, re-running `evaluate` completes the version it made instead of adding one,
`check-champion` verifies the champion's own artifact bytes, and MLflow runs left RUNNING by a killed process
are ended the next time that model folder is trained or evaluated. Real `lggseg` processes, really killed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import TINY, cli_args, mlflow_client, start_lggseg, tiny_config
from lggseg import pipeline
from lggseg.core.paths import Paths
from lggseg.tracking.registry import ModelRegistry
from lggseg.tracking.store import MlflowStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")

SETTINGS = (*TINY, "model.architectures=[unet]", "train.epochs=1")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _project(prepared_project: Paths, root: Path) -> Paths:
    """A project of its own on the session's prepared data (no models, no store yet)."""
    shutil.copytree(prepared_project.root / "data", root / "data")
    return Paths.at(root)


@pytest.fixture(scope="module")
def retrained_project(prepared_project, tmp_path_factory) -> Paths:
    """unet trained and evaluated (lgg-synthetic-unet version 1 @candidate), then trained again with another seed: its
    best.pt holds new weights that no evaluate has registered yet."""
    paths = _project(prepared_project, tmp_path_factory.mktemp("registry"))
    cfg = tiny_config(*SETTINGS)
    pipeline.train(cfg, paths, "unet")
    pipeline.evaluate(cfg, paths, "unet")
    pipeline.train(tiny_config(*SETTINGS, "train.seed=11"), paths, "unet")
    return paths


def _lggseg(stage: str, paths: Paths, log: Path, *settings: str, arch: str | None = "unet") -> subprocess.Popen:
    with open(log, "wb") as out:
        return start_lggseg(cli_args(stage, paths.root, *SETTINGS, *settings, arch=arch), cwd=paths.root,
                            stdout=out, stderr=subprocess.STDOUT, text=False)


def _finish(stage: str, paths: Paths, log: Path, *settings: str, arch: str | None = "unet") -> tuple[int, str]:
    process = _lggseg(stage, paths, log, *settings, arch=arch)
    return process.wait(timeout=300), log.read_text()


def _kill_when(process: subprocess.Popen, happened: Callable[[], bool], what: str, timeout_s: float = 240) -> None:
    """SIGKILL `process` as soon as `happened()` is true (polled as fast as the store answers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if happened():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.002)
    process.kill()
    process.wait()
    pytest.fail(f"{what} did not happen while the process ran (exit code {process.returncode})")


def _versions(client, name: str) -> dict[int, object]:
    return {int(v.version): v for v in client.search_model_versions(f"name='{name}'")}


def _artifact_weights_sha256(client, version) -> str:
    """The SHA-256 of the best.pt a registered version's logged model really holds, read from the store's
    files (not from any tag)."""
    model_id = version.source.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    return _sha256(Path(unquote(urlparse(location).path)) / "extra_files" / "best.pt")


def _run_id(paths: Paths) -> str:
    return json.loads((paths.model_dir("unet") / "mlflow_run.json").read_text())["run_id"]


@pytest.mark.slow
def test_an_evaluate_killed_after_registering_is_completed_by_the_next_run_and_compare_promotes_only_its_weights(
        retrained_project, tmp_path):
    paths = retrained_project
    client = mlflow_client(paths)
    weights, run_id = _sha256(paths.model_dir("unet") / "best.pt"), _run_id(paths)
    assert set(_versions(client, "lgg-synthetic-unet")) == {1}

    # killed right after the new version (2) of lgg-unet exists, before the stage could finish
    process = _lggseg("evaluate", paths, tmp_path / "killed.log")
    _kill_when(process, lambda: len(client.search_model_versions("name='lgg-synthetic-unet'")) >= 2,
               "lgg-synthetic-unet version 2")
    assert process.returncode == -signal.SIGKILL
    status_at_kill = client.get_run(run_id).info.status
    champions_before = {v.version for v in client.search_model_versions("name='lgg-synthetic-segmentation'")}

    # compare, now: it promotes the evaluated weights or nothing (before: version 1's weights as champion)
    code, output = _finish("compare", paths, tmp_path / "compare.log", arch=None)
    if code == 0:
        champion = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
        assert _artifact_weights_sha256(client, champion) == weights
    else:
        error = [line for line in output.splitlines() if line.startswith("lggseg compare: error:")]
        assert len(error) == 1 and "Traceback" not in output, output
        assert weights in error[0] and "evaluate" in error[0], error[0]
        assert {v.version for v in client.search_model_versions("name='lgg-synthetic-segmentation'")} == champions_before

    # the next evaluate completes version 2 instead of adding a third, and ends the run the kill left RUNNING
    code, output = _finish("evaluate", paths, tmp_path / "rerun.log")
    assert code == 0, output
    versions = _versions(client, "lgg-synthetic-unet")
    assert set(versions) == {1, 2}
    assert str(client.get_model_version_by_alias("lgg-synthetic-unet", "candidate").version) == "2"
    assert versions[2].tags["weights_sha256"] == weights == _artifact_weights_sha256(client, versions[2])
    assert versions[1].tags.get("weights_sha256", weights) != weights  # version 1 holds the earlier training's
    record = json.loads((paths.report_dir("unet") / "mlflow_model.json").read_text())
    assert str(record["version"]) == "2" and record["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    if status_at_kill == "RUNNING":
        assert "killed" in run.data.tags["interrupted"], run.data.tags

    code, output = _finish("compare", paths, tmp_path / "compare2.log", arch=None)
    assert code == 0, output
    champion = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
    assert champion.tags["weights_sha256"] == weights == _artifact_weights_sha256(client, champion)
    assert champion.tags["source_model"] == "lgg-synthetic-unet/2"
    # compare again: the same champion version, not one more
    champions = len(client.search_model_versions("name='lgg-synthetic-segmentation'"))
    pipeline.compare(tiny_config(*SETTINGS), paths)
    assert len(client.search_model_versions("name='lgg-synthetic-segmentation'")) == champions
    assert client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion").version == champion.version

    code, output = _finish("check-champion", paths, tmp_path / "check.log", arch=None)
    assert code == 0 and "registry" in output, output


def _evaluated(paths: Paths) -> None:
    """The retrained unet evaluated and compared (a no-op on the registry when the kill test ran first)."""
    cfg = tiny_config(*SETTINGS)
    pipeline.evaluate(cfg, paths, "unet")
    pipeline.compare(cfg, paths)


@pytest.mark.parametrize("stale", ["names_the_earlier_version", "best_pt_retrained_since"])
def test_compare_refuses_a_version_whose_weights_are_not_the_evaluated_best_pt(retrained_project, stale):
    paths = retrained_project
    _evaluated(paths)
    client = mlflow_client(paths)
    champion_before = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion").version
    record_path, best = paths.report_dir("unet") / "mlflow_model.json", paths.model_dir("unet") / "best.pt"
    record, best_bytes = record_path.read_text(), best.read_bytes()
    earlier = _versions(client, "lgg-synthetic-unet")[1]
    try:
        if stale == "names_the_earlier_version":  # as a kill between registering and writing the record leaves it
            record_path.write_text(json.dumps({**json.loads(record), "model_uri": earlier.source, "version": "1"}))
            evaluated, registered, version = _sha256(best), _artifact_weights_sha256(client, earlier), "1"
        else:  # trained again after evaluate: the record is right, but best.pt is not what it evaluated
            registered, version = _sha256(best), json.loads(record)["version"]
            best.write_bytes(best_bytes + b"\0")
            evaluated = _sha256(best)
        with pytest.raises(ValueError) as error:
            pipeline.compare(tiny_config(*SETTINGS), paths)
        message = str(error.value)
        assert evaluated in message and registered in message, message
        assert f"lgg-synthetic-unet version {version}" in message and "evaluate --arch unet" in message, message
        assert client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion").version == champion_before
    finally:
        record_path.write_text(record)
        best.write_bytes(best_bytes)


def test_check_champion_verifies_the_registry_champion_holds_the_weights_it_scored(retrained_project, tmp_path):
    paths = retrained_project
    _evaluated(paths)
    client = mlflow_client(paths)
    champion = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
    weights = _sha256(paths.model_dir("unet") / "best.pt")
    # a champion whose tag lies: the earlier training's weights, tagged with the evaluated hash
    earlier = _versions(client, "lgg-synthetic-unet")[1]
    registry = ModelRegistry(MlflowStore(tiny_config(*SETTINGS).mlflow, paths.root))
    liar = client.get_model_version("lgg-synthetic-segmentation", registry.register(
        earlier.source, "lgg-synthetic-segmentation", "champion", {**champion.tags, "weights_sha256": weights}))
    try:
        code, output = _finish("check-champion", paths, tmp_path / "check.log", arch=None)
        lines = [line for line in output.splitlines() if line.startswith("lggseg check-champion: error:")]
        assert code == 1 and len(lines) == 1 and "Traceback" not in output, output
        assert weights in lines[0] and _artifact_weights_sha256(client, liar) in lines[0], lines[0]
        assert f"lgg-synthetic-segmentation version {liar.version}" in lines[0], lines[0]
    finally:
        client.set_registered_model_alias("lgg-synthetic-segmentation", "champion", champion.version)
        client.delete_model_version("lgg-synthetic-segmentation", liar.version)


def test_a_killed_training_run_is_ended_by_the_next_training_unless_it_is_resumed(prepared_project, tmp_path_factory):
    paths = _project(prepared_project, tmp_path_factory.mktemp("stale-runs"))
    client = mlflow_client(paths)
    logs = tmp_path_factory.mktemp("stale-run-logs")
    pipeline.train(tiny_config(*SETTINGS), paths, "unet")
    first = _run_id(paths)

    # killed as soon as the resumed run is RUNNING again; the next resume continues that very run
    process = _lggseg("train", paths, logs / "resume-killed.log", "train.resume=true", "train.epochs=2")
    _kill_when(process, lambda: client.get_run(first).info.status == "RUNNING", f"run {first} RUNNING")
    pipeline.train(tiny_config(*SETTINGS, "train.resume=true", "train.epochs=2"), paths, "unet")
    resumed = client.get_run(first)
    assert _run_id(paths) == first and resumed.info.status == "FINISHED" and "interrupted" not in resumed.data.tags

    # killed as soon as a new run exists; a fresh training ends that one and runs its own
    process = _lggseg("train", paths, logs / "fresh-killed.log")
    _kill_when(process, lambda: _run_id(paths) != first, "a new run in models/unet/mlflow_run.json")
    killed = _run_id(paths)
    assert client.get_run(killed).info.status == "RUNNING"
    pipeline.train(tiny_config(*SETTINGS), paths, "unet")
    stale = client.get_run(killed)
    assert stale.info.status == "KILLED" and stale.info.end_time is not None
    assert "killed" in stale.data.tags["interrupted"] and "models/unet" in stale.data.tags["interrupted"]
    assert _run_id(paths) not in (first, killed) and client.get_run(_run_id(paths)).info.status == "FINISHED"
