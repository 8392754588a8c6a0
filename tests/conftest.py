"""Shared fixtures: synthetic data built once per session, the real sample when it is there,
and the committed params.yaml shrunk to CPU-test size.

Tests never read the user's working tree state (params.yaml, data/, mlruns/): `make demo` or an
experiment may have changed params.yaml, so the defaults come from git (`git show HEAD:params.yaml`)."""

from __future__ import annotations

import os

# before any import of albumentations, huggingface_hub, mlflow or matplotlib
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use their own sqlite stores

import atexit  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lggseg import pipeline  # noqa: E402
from lggseg.core.config import Config, load_config  # noqa: E402
from lggseg.core.paths import Paths  # noqa: E402
from lggseg.data import synthetic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def committed_params_text() -> str:
    """params.yaml as committed in git HEAD (the file itself only outside a git checkout, e.g. an sdist)."""
    try:
        return subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return (REPO / "params.yaml").read_text()


def _write_committed_params() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="lggseg-tests-params-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "params.yaml"
    path.write_text(committed_params_text())
    return path


PARAMS = _write_committed_params()  # the committed defaults, as a file for load_config and --params
REAL_SAMPLE = Path(os.environ.get("LGGSEG_REAL_SAMPLE", REPO.parent / "shared" / "realdata" / "kaggle_3m_sample"))

# The real params.yaml, shrunk: 64x64, a light encoder without downloads, few epochs, no workers.
TINY = (
    "data.source=synthetic",
    "data.synthetic.patients=12",
    "data.synthetic.slices_min=20",
    "data.synthetic.slices_max=22",
    "data.synthetic.seed=7",
    "preprocess.size=64",
    "model.encoder=resnet18",
    "model.encoder_weights=null",
    "train.epochs=2",
    "train.batch_size=16",
    "train.lr=0.002",
    "train.loss=bce_dice",
    "train.num_workers=0",
    "evaluate.batch_size=64",
    "mlflow.experiment=lggseg-tests",
)


def tiny_config(*overrides: str) -> Config:
    """The committed params.yaml with the TINY settings plus `overrides` (later ones win)."""
    return load_config(PARAMS, [*TINY, *overrides])


@pytest.fixture
def project(tmp_path, synthetic_tree) -> Paths:
    """A project whose data/raw/kaggle_3m is a private copy of the synthetic tree (safe to damage)."""
    paths = Paths.at(tmp_path)
    shutil.copytree(synthetic_tree, paths.dataset)
    return paths


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory) -> Path:
    """A small synthetic data set in the Kaggle layout (read-only for tests: copy before changing)."""
    return synthetic.generate_dataset(tmp_path_factory.mktemp("synthetic"), patients=8, slices_min=20,
                                      slices_max=22, seed=3)


@pytest.fixture(scope="session")
def real_sample() -> Path:
    if not (REAL_SAMPLE / "data.csv").is_file():
        pytest.skip(f"real LGG sample not present at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def prepared_project(tmp_path_factory) -> Paths:
    """A project root with download, index, split and preprocess done on TINY synthetic data."""
    paths = Paths.at(tmp_path_factory.mktemp("project"))
    cfg = tiny_config()
    for stage in (pipeline.download, pipeline.index, pipeline.split, pipeline.preprocess):
        stage(cfg, paths)
    return paths


TRAINED_EPOCHS = 8


@pytest.fixture(scope="session")
def trained_project(prepared_project) -> tuple[Paths, Config]:
    """prepared_project after train, evaluate (U-Net and FPN) and compare, all through pipeline stages."""
    cfg = tiny_config(f"train.epochs={TRAINED_EPOCHS}")
    for arch in cfg.model.architectures:
        pipeline.train(cfg, prepared_project, arch)
    for arch in cfg.model.architectures:
        pipeline.evaluate(cfg, prepared_project, arch)
    pipeline.compare(cfg, prepared_project)
    return prepared_project, cfg


def mlflow_client(paths: Paths):
    from mlflow import MlflowClient

    uri = f"sqlite:///{paths.root / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def cli_args(stage: str, root: Path, *settings: str, arch: str | None = None) -> list[str]:
    """`lggseg <stage>` arguments on the committed params, `root` as project root, `settings` as --set."""
    args = [stage, "--params", str(PARAMS), "--root", str(root)]
    if arch is not None:
        args += ["--arch", arch]
    return args + [arg for setting in settings for arg in ("--set", setting)]


def start_lggseg(args: list[str], **popen) -> subprocess.Popen:
    """A real `python -m lggseg.cli ...` process (text pipes unless `popen` says otherwise), on the repo's
    own sqlite store, with SIGINT at its default: a shell's background jobs (CI runners among them)
    inherit it ignored, where Ctrl-C in a terminal would reach the process."""
    import signal

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    options = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.Popen([sys.executable, "-m", "lggseg.cli", *args], **{**options, **popen})
