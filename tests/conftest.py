"""Shared fixtures: synthetic data built once per session, the real sample when it is there,
and the real params.yaml shrunk to CPU-test size."""

from __future__ import annotations

import os

# before any import of albumentations, huggingface_hub, mlflow or matplotlib
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use their own sqlite stores

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lggseg import pipeline  # noqa: E402
from lggseg.config import Config, load_config  # noqa: E402
from lggseg.data import synthetic  # noqa: E402
from lggseg.paths import Paths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
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
    """The repository's params.yaml with the TINY settings plus `overrides` (later ones win)."""
    return load_config(REPO / "params.yaml", [*TINY, *overrides])


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
