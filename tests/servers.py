"""Real servers for tests: an MLflow tracking server, a throw-away PostgreSQL cluster, a headless browser.

Helpers only, no test logic. What a test needs and the machine lacks (Chromium, PostgreSQL) is a skip on
a developer's machine and a failure in CI (`CI=true`), so CI can never pass by skipping."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

PG_USER = "postgres"  # superuser name of the cluster, and the OS user that runs it when tests run as root
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run"]


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it in CI (`CI` set), where every test must really run."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (CI is set: this test must run in CI)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium_executable() -> str | None:
    """The system's Chromium (Playwright never downloads a browser here), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path, port: int, timeout: float = 60.0,
                  env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1:`port` (one worker, no job runner) until the block ends; yields its URL.

    Clients upload and download artifacts through the server (`--serve-artifacts` into `artifacts_dir`), as
    a team's server would: they need no access to the artifact store. `env` adds to its environment. The log is
    `artifacts_dir/../mlflow-server-<port>.log`."""
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log_path = artifacts_dir.parent / f"mlflow-server-{port}.log"
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", backend_uri,
               "--serve-artifacts", "--artifacts-destination", str(artifacts_dir)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log:
        # own process group: the server's workers stop with it
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {server.returncode}; its log ends:\n{_tail(log_path)}")
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy on {url} after {timeout:.0f} s; its log ends:\n"
                                   f"{_tail(log_path)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(server)


def _stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the process group `process` leads, SIGKILL after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def postgres_bindir() -> Path | None:
    """PostgreSQL's binaries (initdb, pg_ctl, createdb): where initdb on PATH links to, or Debian's
    /usr/lib/postgresql/<version>/bin (not on PATH there)."""
    if initdb := shutil.which("initdb"):
        return Path(initdb).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@contextlib.contextmanager
def postgres_cluster(tmp_dir: Path) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a free port of 127.0.0.1 with a database `mlflow`, trust auth,
    no durability (fsync off); yields its SQLAlchemy URI and removes the cluster afterwards.

    As root, the server runs as the `postgres` OS user (initdb refuses root) in a folder of its own under the
    system temp dir, because pytest's tmp_path is not reachable by other users; otherwise under `tmp_dir`."""
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="lggseg-pg-")) if as_root else Path(tmp_dir) / "postgres"
    base.mkdir(parents=True, exist_ok=True)
    owner = {"user": PG_USER, "group": PG_USER, "extra_groups": []} if as_root else {}
    if as_root:
        shutil.chown(base, PG_USER, PG_USER)

    def pg(*args: str) -> None:
        result = subprocess.run([str(bindir / args[0]), *args[1:]], cwd=base, capture_output=True, text=True,
                                timeout=120, **owner)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n"
                               f"server log ends:\n{_tail(base / 'postgres.log')}")

    data, port = base / "data", free_port()
    try:
        pg("initdb", "-D", str(data), "-U", PG_USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{base}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        pg("pg_ctl", "-D", str(data), "-l", str(base / "postgres.log"), "-w", "-t", "60", "start")
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "mlflow")
            yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/mlflow"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
