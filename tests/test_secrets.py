"""No credential reaches a tag, param, artifact, log line, report, store, dvc.lock or traceback, whichever
way it is given: `--set` / params.yaml (refused at load), MLFLOW_TRACKING_URI with user info,
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, KAGGLE_USERNAME / KAGGLE_KEY."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
import requests

from conftest import PARAMS, TINY, committed_params_text
from lggseg.cli import main
from lggseg.core.redaction import MASK, credentials_in, redact
from servers import free_port, mlflow_server

CHAMPION = ("--model", "models:/lgg-synthetic-segmentation@champion")  # TINY trains on synthetic data
URI_PASSWORD = "S3cr3t-xyz-123"  # in the tracking URI's user info
ENV_PASSWORD = "Pa55-env-789"  # MLFLOW_TRACKING_PASSWORD
KAGGLE_KEY = "K4ggle-key-456"
KAGGLE_USERNAME = "kaggle-user-q7w"
SECRETS = (URI_PASSWORD, ENV_PASSWORD, KAGGLE_KEY, KAGGLE_USERNAME,
           base64.b64encode(f"alice:{URI_PASSWORD}".encode()).decode(),  # basic-auth header forms
           base64.b64encode(f"alice:{ENV_PASSWORD}".encode()).decode())
SETTINGS = (*TINY, "train.epochs=1", "model.architectures=[unet]", "evaluate.figures_patients=1")


# ------------------------------------------------------------------------------------ the one function


@pytest.mark.parametrize("text, expected", [
    ("http://alice:s3cret@mlflow.example:5000/api", "http://***@mlflow.example:5000/api"),
    ("https://alice@mlflow.example", "https://***@mlflow.example"),  # a token as the user
    ("postgresql+psycopg2://u:p%40ss@db:5432/mlflow", "postgresql+psycopg2://***@db:5432/mlflow"),
    ("mysql://u:p@ss@db/mlflow", "mysql://***@db/mlflow"),  # a raw `@` in the password
    ("API request to http://a:b@127.0.0.1:5000/api/2.0/x failed", "API request to http://***@127.0.0.1:5000/api/2.0/x failed"),
    ("uri='http://a:b@h:1' and 'https://c:d@e'", "uri='http://***@h:1' and 'https://***@e'"),
    ("https://host/x?token=abc123&size=3", "https://host/x?token=***&size=3"),
    ("https://acct.blob.core.windows.net/c?sv=2022&sig=AbC%2F9", "https://acct.blob.core.windows.net/c?sv=2022&sig=***"),
    ("s3://b/k?X-Amz-Signature=f00d&X-Amz-Credential=AKIA", "s3://b/k?X-Amz-Signature=***&X-Amz-Credential=***"),
    ("postgresql://db/mlflow?user=u&password=hunter22", "postgresql://db/mlflow?user=u&password=***"),
    ("dbname=mlflow password=hunter22 host=db", "dbname=mlflow password=*** host=db"),
    ("MLFLOW_TRACKING_TOKEN=dapi123 lggseg train", "MLFLOW_TRACKING_TOKEN=*** lggseg train"),
])
def test_redact_hides_credentials_in_uris_queries_and_keywords(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "sqlite:////abs/mlruns/mlflow.db", "file:///data/a@b/c.zip", "/data/user@host/kaggle_3m",
    "models:/lgg-segmentation@champion", "expected key=value, e.g. train.epochs=2", "mlflow-artifacts:/1/abc",
    "lggseg train: error: train.batch_size must be >= 1; got 0", "see https://github.com/x/y@v1.2",
])
def test_redact_leaves_text_without_credentials_alone(text):
    assert redact(text) == text


@pytest.mark.parametrize("variable, value", [
    ("MLFLOW_TRACKING_PASSWORD", ENV_PASSWORD), ("MLFLOW_TRACKING_TOKEN", "dapi-0123456789"),
    ("KAGGLE_KEY", KAGGLE_KEY), ("KAGGLE_API_TOKEN", "KGAT_abcdef123"), ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG"),
    ("AZURE_STORAGE_CONNECTION_STRING", "DefaultEndpointsProtocol=https;AccountKey=Zm9vYmFy"),
])
def test_redact_hides_the_environments_secrets_wherever_they_appear(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert value not in redact(f"some error echoing {value} (and '{value}')")
    assert MASK in redact(value)


def test_redact_hides_the_tracking_uris_password_in_every_spelling(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:p%40ss-w0rd@127.0.0.1:5000")
    basic = base64.b64encode(b"alice:p@ss-w0rd").decode()
    text = redact(f"password authentication failed: p@ss-w0rd; p%40ss-w0rd; Authorization: Basic {basic}")
    assert "p@ss-w0rd" not in text and "p%40ss-w0rd" not in text and basic not in text


@pytest.mark.parametrize("value, found", [
    ("http://alice:pw@host:5000", True), ("https://token123@host", True), ("postgresql://db/x?password=pw", True),
    ("https://host/x?token=t", True), ("http://host:5000", False), ("sqlite:////a/b@c/mlflow.db", False),
    ("/data/me@work/lgg.zip", False), ("mateuszbuda/lgg-mri-segmentation", False),
])
def test_credentials_in_finds_what_a_param_must_not_hold(value, found):
    assert (credentials_in(value) is not None) == found


def test_whatever_a_process_prints_by_way_of_python_is_redacted(tmp_path):
    """An uncaught exception (and its cause), one in a thread, a log record with a traceback, a warning."""
    code = (
        "import logging, threading, warnings\n"
        "from lggseg.core.redaction import redact_everything_printed\n"
        "redact_everything_printed()\n"
        "logging.basicConfig()\n"
        "uri = 'http://alice:' + 'S3cr3t-xyz-123' + '@127.0.0.1:9'\n"
        "logging.getLogger('mlflow').warning('retrying %s', uri)\n"
        "try:\n"
        "    raise OSError(f'cannot reach {uri}')\n"
        "except OSError:\n"
        "    logging.getLogger('x').exception('failed')\n"
        "warnings.warn(f'slow server {uri}')\n"
        "def fail():\n"
        "    raise ValueError(uri)\n"
        "thread = threading.Thread(target=fail)\n"
        "thread.start(); thread.join()\n"
        "try:\n"
        "    raise ConnectionError(uri)\n"
        "except ConnectionError as exc:\n"
        "    raise RuntimeError(f'API request to {uri}/api/2.0 failed') from exc\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    printed = result.stdout + result.stderr
    assert URI_PASSWORD not in printed, printed
    for shown in ("retrying http://***@127.0.0.1:9", "OSError: cannot reach http://***@", "slow server http://***@",
                  "ValueError: http://***@", "RuntimeError: API request to http://***@"):
        assert shown in printed, printed


def test_a_credential_given_by_set_or_in_params_yaml_is_refused_in_one_line(tmp_path, capsys):
    uri = f"http://alice:{URI_PASSWORD}@127.0.0.1:5000"
    params = tmp_path / "params.yaml"
    params.write_text(committed_params_text().replace("tracking_uri: null", f"tracking_uri: {uri}"))
    runs = [["train", "--arch", "unet", "--params", str(PARAMS), "--root", str(tmp_path), "--set", f"mlflow.tracking_uri={uri}"],
            ["evaluate", "--arch", "unet", "--params", str(params), "--root", str(tmp_path)],
            ["compare", "--params", str(PARAMS), "--root", str(tmp_path),
             "--set", "mlflow.tracking_uri=postgresql://db/m?password=" + URI_PASSWORD],
            ["predict", str(tmp_path), "--params", str(params), "--root", str(tmp_path)]]
    for args in runs:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert URI_PASSWORD not in err
        assert len(err.strip().splitlines()) == 1, err
        assert "mlflow.tracking_uri holds" in err and "MLFLOW_TRACKING_USERNAME" in err, err


def test_argparse_errors_do_not_repeat_a_credential(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "scans", "--set", f"mlflow.tracking_uri=http://alice:{URI_PASSWORD}@127.0.0.1:5000"])
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and URI_PASSWORD not in err and "http://***@127.0.0.1:5000" in err


# ------------------------------------------------------------------------------------ end to end


def _lggseg(args: list[str], env: dict[str, str], printed: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """A real `lggseg` process; what it printed is kept in `printed`."""
    result = subprocess.run([sys.executable, "-m", "lggseg.cli", *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    command = " ".join(args).replace(URI_PASSWORD, "<password>")  # the test's own echo of a --set credential
    printed.append(f"$ lggseg {command}\n{result.stdout}\n{result.stderr}")
    return result


def _settings(*extra: str) -> list[str]:
    return [arg for setting in (*SETTINGS, *extra) for arg in ("--set", setting)]


def _rest_answers(url: str) -> list[str]:
    """What anyone with API access reads: experiments, runs (search and get), logged and registered models."""
    api = f"{url}/api/2.0/mlflow"
    experiments = requests.post(f"{api}/experiments/search", json={"max_results": 1000}, timeout=30).json()
    ids = [e["experiment_id"] for e in experiments.get("experiments", [])]
    runs = requests.post(f"{api}/runs/search", json={"experiment_ids": ids, "max_results": 1000}, timeout=30).json()
    answers = [json.dumps(experiments), json.dumps(runs)]
    for run in runs.get("runs", []):
        answers.append(requests.get(f"{api}/runs/get", params={"run_id": run["info"]["run_id"]}, timeout=30).text)
    answers.append(requests.get(f"{api}/registered-models/search", timeout=30).text)
    answers.append(requests.get(f"{api}/model-versions/search", timeout=30).text)
    answers.append(requests.post(f"{api}/logged-models/search", json={"experiment_ids": ids}, timeout=30).text)
    assert runs.get("runs"), answers
    return answers


def _leaks(places: dict[str, str | bytes]) -> list[str]:
    """`place: ...text around the secret...` for each secret found, the secret itself masked."""
    found = []
    for place, content in places.items():
        text = content.decode(errors="replace") if isinstance(content, bytes) else content
        for secret in SECRETS:
            if (at := text.find(secret)) >= 0:
                found.append(f"{place}: ...{text[max(at - 200, 0):at + 100].replace(secret, '<SECRET>')!r}...")
    return found


@pytest.mark.slow
def test_no_credential_reaches_the_store_the_files_or_the_output(tmp_path, prepared_project):
    """train, evaluate, compare and predict against a real `mlflow server`, with a credential given every
    way; then the server dies mid-training. The secrets appear in no file of the project or the server (its
    sqlite database dumped too), in no REST answer and in nothing printed."""
    project, scans = tmp_path / "project", tmp_path / "scans"
    shutil.copytree(prepared_project.processed, project / "data" / "processed")
    patient = sorted(p for p in prepared_project.dataset.iterdir() if p.is_dir())[0]
    shutil.copytree(patient, scans / patient.name)
    (project / "params.yaml").write_text(committed_params_text())
    for git in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(["git", *git], cwd=project, check=True, capture_output=True)  # params_changed is tagged
    secret_params = tmp_path / "secret-params.yaml"
    port, dead_port = free_port(), free_port()
    secret_params.write_text(committed_params_text().replace(
        "tracking_uri: null", f"tracking_uri: http://alice:{URI_PASSWORD}@127.0.0.1:{port}"))
    base_env = {**os.environ, "KAGGLE_USERNAME": KAGGLE_USERNAME, "KAGGLE_KEY": KAGGLE_KEY,
                "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": ENV_PASSWORD,
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "PYTHONUNBUFFERED": "1"}
    base_env.pop("MLFLOW_TRACKING_URI", None)
    root = ["--root", str(project), "--params", str(project / "params.yaml")]
    printed: list[str] = []

    server = tmp_path / "server"
    with mlflow_server(f"sqlite:///{server / 'mlflow.db'}", server / "artifacts", port) as url:
        env = {**base_env, "MLFLOW_TRACKING_URI": url.replace("http://", f"http://alice:{URI_PASSWORD}@")}
        for args in (["train", "--arch", "unet", *root, *_settings()],
                     ["evaluate", "--arch", "unet", *root, *_settings()],
                     ["compare", *root, *_settings()],
                     ["predict", *CHAMPION, str(scans / patient.name), "--out", str(project / "predictions" / "p"), *root]):
            result = _lggseg(args, env, printed)
            assert result.returncode == 0, printed[-1][-3000:]
        # the credential in params (by --set, or in the file): refused before anything reaches the server
        refused = []
        for args in (["train", "--arch", "unet", *root, *_settings(f"mlflow.tracking_uri={env['MLFLOW_TRACKING_URI']}")],
                     ["evaluate", "--arch", "unet", "--root", str(project), "--params", str(secret_params), *_settings()]):
            refused.append(_lggseg(args, base_env, printed))
        # a server that is not there: one line each, or a redacted traceback with -v
        dead = {**base_env, "MLFLOW_TRACKING_URI": f"http://alice:{URI_PASSWORD}@127.0.0.1:{dead_port}"}
        for args in (["train", "--arch", "unet", *root, *_settings()], ["evaluate", "--arch", "unet", *root, *_settings()],
                     ["compare", *root, *_settings()], ["predict", *CHAMPION, str(scans), "--out", str(tmp_path / "p2"), *root],
                     ["-v", "train", "--arch", "unet", *root, *_settings()]):
            result = _lggseg(args, dead, printed)
            assert result.returncode == 1 and "not reachable" in result.stderr, printed[-1][-3000:]
        answers = _rest_answers(url)
        # the server dies while a training logs into it
        training = subprocess.Popen([sys.executable, "-m", "lggseg.cli", "train", "--arch", "unet", *root,
                                     *_settings("train.epochs=40", "train.resume=false")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            for line in training.stdout:
                printed.append(line)
                if line.startswith("unet epoch 1/40"):
                    break
        except BaseException:
            training.kill()
            raise
    try:
        stdout, stderr = training.communicate(timeout=300)
    finally:
        training.kill()
    printed.append(f"$ (server gone) lggseg train\n{stdout}\n{stderr}")
    assert training.returncode != 0 and f"127.0.0.1:{port}" in stderr, stderr[-3000:]

    with sqlite3.connect(server / "mlflow.db") as connection:
        dump = "\n".join(connection.iterdump())
    assert "params_changed" in dump and "train.epochs=1" in dump  # the tag was written, without the secret
    files = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != secret_params}
    assert any("/artifacts/" in p for p in files) and (project / "models" / "unet" / "mlflow_run.json").is_file()
    leaks = _leaks({"printed": "\n".join(printed), "database dump": dump, **files,
                    **{f"REST answer {i}": a for i, a in enumerate(answers)}})
    assert not leaks, "credentials leaked:\n" + "\n".join(leaks)
    for result in refused:
        assert result.returncode == 1 and "MLFLOW_TRACKING_USERNAME" in result.stderr, result.stderr[-3000:]
