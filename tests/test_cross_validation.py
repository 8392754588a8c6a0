"""`lggseg cv` (what `make cv` runs): one queued DVC experiment per fold, an out-of-fold report over every patient."""

from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd
import pytest

from conftest import TINY, mlflow_client
from dvc_project import make_dvc_repo, run
from lggseg.core.paths import Paths
from lggseg.evaluation.cross_validation import CrossValidationError, FoldResult, out_of_fold


def _fold(fold: int, patients: list[str], everyone: list[str]) -> FoldResult:
    table = pd.DataFrame({"patient_id": patients, "institution": ["CS"] * len(patients), "dice": [0.8] * len(patients)})
    return FoldResult(f"cv-fold{fold}", fold, "rev", {"unet": table}, everyone)


def test_out_of_fold_needs_every_patient_exactly_once():
    everyone = ["A", "B", "C", "D"]
    oof = out_of_fold([_fold(0, ["A", "B"], everyone), _fold(1, ["C", "D"], everyone)])
    assert sorted(oof["patient_id"]) == everyone and oof.groupby("patient_id")["fold"].nunique().eq(1).all()
    with pytest.raises(CrossValidationError, match=r"twice: \['B'\], never: \['D'\]"):
        out_of_fold([_fold(0, ["A", "B"], everyone), _fold(1, ["B", "C"], everyone)])


@pytest.mark.slow
def test_cv_runs_every_fold_through_the_dvc_queue_and_reports_out_of_fold_dice(tmp_path):
    repo = make_dvc_repo(tmp_path / "repo")
    settings = [s for s in TINY if not s.startswith("data.synthetic.patients")]
    settings += ["data.synthetic.patients=9", "model.architectures=[unet, fpn]", "train.epochs=1"]
    result = subprocess.run([sys.executable, "-m", "lggseg.cli", "cv", "--folds", "3", "--name", "cvt",
                             *[a for s in settings for a in ("-S", s)]], cwd=repo, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "queued cvt-fold0, cvt-fold1, cvt-fold2" in result.stdout and "out-of-fold per-patient Dice" in result.stdout

    # every patient once per architecture, each from the fold whose test split held it
    out = repo / "reports" / "cv"
    assert {p.name for p in out.iterdir()} >= {"summary.md", "summary.csv", "institutions.csv", "per_patient.csv",
                                               "paired.csv", "dice_per_patient.png"}
    oof = pd.read_csv(out / "per_patient.csv", dtype={"patient_id": str})
    patients = oof["patient_id"].unique()
    assert len(patients) == 9
    for arch in ("unet", "fpn"):
        mine = oof[oof["architecture"] == arch]
        assert sorted(mine["patient_id"]) == sorted(patients) and mine["fold"].nunique() == 3
    for fold in range(3):  # the fold experiment's own per_patient.csv, read back with git
        shown = run(["dvc", "exp", "show", "--json"], repo).stdout
        assert f"cvt-fold{fold}" in shown
        rows = oof[(oof["fold"] == fold) & (oof["architecture"] == "unet")]
        ref = _exp_ref(repo, f"cvt-fold{fold}")
        git = run(["git", "show", f"refs/exps/{ref}:reports/arch/unet/per_patient.csv"], repo).stdout
        theirs = pd.read_csv(io.StringIO(git), dtype={"patient_id": str}).set_index("patient_id")["dice"]
        assert rows.set_index("patient_id")["dice"].sort_index().tolist() == pytest.approx(theirs.sort_index().tolist())
    summary = pd.read_csv(out / "summary.csv").set_index("architecture")
    for arch in ("unet", "fpn"):
        assert summary.loc[arch, "dice_patient_mean"] == pytest.approx(oof[oof["architecture"] == arch]["dice"].mean())
        assert summary.loc[arch, "n_patients"] == 9
    markdown = (out / "summary.md").read_text()
    assert "every patient was predicted exactly once" in markdown.lower() and "Is the difference real?" in markdown

    # MLflow: a parent run with every fold's training runs nested under it
    client = mlflow_client(Paths.at(repo))
    experiment = client.get_experiment_by_name("lggseg-tests").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.cv_group = 'cvt' and tags.stage = 'cv'")
    assert parent.data.metrics["oof/unet_dice_patient_mean"] == pytest.approx(summary.loc["unet", "dice_patient_mean"])
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 6  # 3 folds x 2 architectures
    for child in children:
        assert child.data.params["split.fold"] == child.data.tags["cv_fold"] and child.data.params["split.folds"] == "3"
    # CV measures: nothing registered
    assert not client.search_registered_models()


def _exp_ref(repo, name: str) -> str:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], repo).stdout.split()
    (ref,) = [r for r in refs if r.endswith("/" + name)]
    return ref.removeprefix("refs/exps/")
