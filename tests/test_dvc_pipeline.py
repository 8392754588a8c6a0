"""The pipeline as users run it: `dvc repro` and `dvc exp run` in a fresh git repository."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, mlflow_client
from dvc_project import make_dvc_repo, set_params, stages_run
from dvc_project import run as _run
from lggseg.core.paths import Paths
from lggseg.tracking.experiments import EXPERIMENT_MARK, dvc_experiments, experiments_table, format_experiments

pytestmark = pytest.mark.slow


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    return make_dvc_repo(tmp_path / "repo")


def _check_split_and_processed(repo: Path, n_patients: int) -> None:
    splits = json.loads((repo / "data/interim/splits.json").read_text())
    assert sum(len(splits[s]) for s in ("train", "val", "test")) == n_patients
    summary = json.loads((repo / "reports/split_summary.json").read_text())
    for split in ("train", "val", "test"):
        table = pd.read_csv(repo / f"data/processed/{split}/slices.csv")
        assert set(table["patient_id"]) == set(splits[split])
        assert len(table) == summary[split]["slices"]


def test_repro_data_stages_synthetic(dvc_repo):
    set_params(dvc_repo, "data.source=synthetic", "data.synthetic.patients=7", "preprocess.size=64")
    _run(["dvc", "repro", "preprocess"], dvc_repo)
    slices = pd.read_csv(dvc_repo / "data/interim/slices.csv")
    assert slices["patient_id"].nunique() == 7 and slices["has_tumor"].any()
    _check_split_and_processed(dvc_repo, 7)
    status = _run(["dvc", "status", "preprocess"], dvc_repo).stdout
    assert "up to date" in status


def _zip_tree(tree: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(tree.rglob("*")):
            if f.is_file():
                for prefix in ("kaggle_3m", "lgg-mri-segmentation/kaggle_3m"):
                    zf.write(f, f"{prefix}/{f.relative_to(tree)}")
    return archive


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_repro_data_stages_local_real_sample(dvc_repo, real_sample, tmp_path, as_zip):
    local = _zip_tree(real_sample, tmp_path / "lgg-mri-segmentation.zip") if as_zip else real_sample
    set_params(dvc_repo, "data.source=local", f"data.local_path={local}")
    _run(["dvc", "repro", "preprocess"], dvc_repo)
    slices = pd.read_csv(dvc_repo / "data/interim/slices.csv")
    assert len(slices) == 116 and int(slices["has_tumor"].sum()) == 37
    assert slices["RNASeqCluster"].notna().any()  # joined with the real data.csv
    _check_split_and_processed(dvc_repo, 5)
    manifest = json.loads((dvc_repo / "data/processed/manifest.json").read_text())
    assert manifest["size"] == 256 and manifest["in_channels"] == 3


def _exp_settings(*extra: str) -> list[str]:
    settings = [s for s in TINY if not s.startswith("data.synthetic.patients")] + [
        "data.synthetic.patients=10", "train.epochs=2", *extra]
    return [arg for s in settings for arg in ("-S", s)]


def test_exp_run_whole_pipeline_then_changed_params_add_versions(dvc_repo):
    _run(["dvc", "exp", "run", *_exp_settings()], dvc_repo)
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], dvc_repo).stdout)
    workspace = next(iter(metrics.values()))["data"] if "workspace" not in metrics else metrics["workspace"]["data"]
    for arch in ("unet", "fpn"):
        numbers = workspace[f"reports/arch/{arch}/metrics.json"]["data"]
        assert 0 <= numbers["dice_patient_mean"] <= 1 and "detection_auc" in numbers
    assert "up to date" in _run(["dvc", "status"], dvc_repo).stdout
    # `lggseg exps`: the experiment with its headline Dice and changed params, in 100 columns
    table = experiments_table(dvc_experiments(dvc_repo))
    experiment = table[table["experiment"].str.startswith(EXPERIMENT_MARK)].iloc[0]
    test_dice = workspace["reports/arch/unet/metrics.json"]["data"]["dice_patient_mean"]
    assert experiment["unet test Dice %"] == f"{100 * test_dice:.1f}"  # percent, as the README reports Dice
    assert "train.epochs=2" in experiment["params changed"] and "data.source=synthetic" in experiment["params changed"]
    assert max(len(line) for line in format_experiments(table).splitlines()) <= 100
    assert (dvc_repo / "reports/comparison.md").is_file()
    assert (dvc_repo / "reports/arch/unet/train_history.csv").is_file()
    plots = _run(["dvc", "plots", "show", "--json"], dvc_repo).stdout
    assert "train_history.csv" in plots and "roc.csv" in plots

    client = mlflow_client(Paths.at(dvc_repo))
    assert int(client.get_model_version_by_alias("lgg-synthetic-unet", "candidate").version) == 1
    champion = client.get_model_version_by_alias("lgg-synthetic-segmentation", "champion")
    assert champion.tags["architecture"] in ("unet", "fpn")
    runs = client.search_runs([client.get_experiment_by_name("lggseg-tests").experiment_id])
    # runs tell their DVC experiment and what it changed apart in the MLflow UI
    exp_name = runs[0].data.tags["dvc_exp_name"]
    assert {r.info.run_name for r in runs} == {f"unet ({exp_name})", f"fpn ({exp_name})"}
    assert all(r.data.tags.get("dvc_stage", "").startswith("train@") for r in runs)
    assert all("train.epochs=2" in r.data.tags["params_changed"] for r in runs)
    # the -S overrides changed params.yaml in the experiment's copy, and DVC rewrote dvc.lock: no code changed
    assert all(r.data.tags["git_dirty"] == "false" for r in runs), [r.data.tags.get("git_dirty_files") for r in runs]
    assert champion.tags["git_dirty"] == "false" and champion.tags["data_source"] == "synthetic"

    # a changed evaluation param re-runs evaluate + compare only, adding registry versions; --temp runs
    # in a copy under .dvc/tmp/exps/ and still logs into this repository's store
    _run(["git", "add", "-A"], dvc_repo)
    _run(["git", "commit", "-qm", "first experiment"], dvc_repo)
    result = _run(["dvc", "exp", "run", "--temp", *_exp_settings("evaluate.threshold=0.4")], dvc_repo)
    assert set(stages_run(result.stdout)) == {"evaluate@unet", "evaluate@fpn", "compare"}
    assert int(client.get_model_version_by_alias("lgg-synthetic-unet", "candidate").version) == 2
    assert len(client.search_model_versions("name='lgg-synthetic-segmentation'")) == 2
    latest = client.get_model_version_by_alias("lgg-synthetic-unet", "candidate")
    assert latest.tags["git_dirty"] == "false", latest.tags.get("git_dirty_files")  # --temp: in a copy, the same


@pytest.mark.parametrize("layout", ["slices", "nifti"])
def test_repro_whole_pipeline_on_your_own_data_layout(dvc_repo, tmp_path, layout):
    """`dvc repro` on a data set in the images/ + masks/ layout or the NIfTI-cases layout, as a user with
    their own data sets it up (data.source: local, data.local_path: the folder); then predict on NIfTI."""
    from lggseg.data.synthetic_layouts import generate_layout

    tree = generate_layout(tmp_path / "own", layout, patients=9, slices_min=12, slices_max=14, seed=5)
    settings = [s for s in TINY if not s.startswith("data.")] + [
        "data.source=local", f"data.local_path={tree}", "train.epochs=3", "model.architectures=[unet]"]
    set_params(dvc_repo, *settings)
    _run(["dvc", "repro"], dvc_repo)
    slices = pd.read_csv(dvc_repo / "data/interim/slices.csv")
    assert slices["patient_id"].nunique() == 9 and slices["has_tumor"].any()
    _check_split_and_processed(dvc_repo, 9)
    splits = json.loads((dvc_repo / "data/interim/splits.json").read_text())
    owners = {p: s for s in ("train", "val", "test") for p in splits[s]}
    assert len(owners) == 9 and all(len(splits[s]) >= 1 for s in ("train", "val", "test"))  # patient-wise
    metrics = json.loads((dvc_repo / "reports/arch/unet/metrics.json").read_text())
    per_patient = pd.read_csv(dvc_repo / "reports/arch/unet/per_patient.csv")
    assert sorted(per_patient["patient_id"]) == sorted(splits["test"])  # scored on the held-out patients only
    assert metrics["dice_patient_mean"] == pytest.approx(per_patient["dice"].mean())
    assert json.loads((dvc_repo / "data/processed/manifest.json").read_text())["layout"] == layout
    assert "up to date" in _run(["dvc", "status"], dvc_repo).stdout
    if layout == "nifti":  # the champion on the test cases' NIfTI files: masks in their grid
        import nibabel as nib

        case = splits["test"][0]
        out = tmp_path / "predicted"
        _run(["lggseg", "predict", str(tree / "imagesTr"), "--model", "models:/lgg-synthetic-segmentation@champion",
              "--out", str(out)], dvc_repo)
        mask = nib.load(out / case / f"{case}_mask.nii.gz")
        source = nib.load(tree / "imagesTr" / f"{case}_0001.nii.gz")
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        report = json.loads((out / case / "report.json").read_text())
        assert report["input"]["geometry"]["channels"]["FLAIR"].endswith(f"{case}_0001.nii.gz")
        assert report["patient"]["dice"] is not None  # labelsTr/<case>.nii.gz is the truth
        assert len(list(out.iterdir())) == 9 + 3  # every case, summary.csv, index.html, the marker
