import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lggseg.core.config import SplitConfig
from lggseg.data.layout import build_index
from lggseg.data.split import PatientLeakError, SplitError, check_no_leak, make_splits, split_summary

INSTITUTIONS = ["CS", "DU", "EZ", "FG", "HT"]


def fake_slices(n_patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        inst = INSTITUTIONS[p % len(INSTITUTIONS)]
        n = int(rng.integers(20, 40))
        positive = int(rng.integers(1, n))
        for s in range(1, n + 1):
            rows.append({"patient_id": f"TCGA_{inst}_{p:04d}_20000101", "institution": inst, "slice": s,
                         "has_tumor": s <= positive})
    return pd.DataFrame(rows)


def test_split_is_patient_wise_deterministic_and_covers_everyone():
    slices = fake_slices(40)
    cfg = SplitConfig(seed=5)
    a, b = make_splits(slices, cfg), make_splits(slices, cfg)
    assert a == b
    assert make_splits(slices, SplitConfig(seed=6))["test"] != a["test"]
    everyone = set(a["train"]) | set(a["val"]) | set(a["test"])
    assert everyone == set(slices["patient_id"])
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (28, 6, 6)


def test_split_is_stratified_by_institution():
    slices = fake_slices(50)
    splits = make_splits(slices, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1, tumor_bins=1))
    test_institutions = {p.split("_")[1] for p in splits["test"]}
    val_institutions = {p.split("_")[1] for p in splits["val"]}
    # 10 test patients from 5 institutions of 10 each: stratification gives every institution a share
    assert test_institutions == set(INSTITUTIONS) and val_institutions == set(INSTITUTIONS)


def test_split_balances_tumor_burden():
    slices = fake_slices(60, seed=2)
    splits = make_splits(slices, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=3))
    burden = slices.groupby("patient_id")["has_tumor"].mean()
    means = {name: burden[splits[name]].mean() for name in ("train", "val", "test")}
    assert max(means.values()) - min(means.values()) < 0.12, means


@settings(max_examples=60, deadline=None)
@given(
    n_patients=st.integers(3, 60),
    val=st.floats(0.0, 0.45),
    test=st.floats(0.0, 0.45),
    seed=st.integers(0, 2**31),
    folds=st.integers(1, 6),
)
def test_no_patient_is_ever_in_two_splits(n_patients, val, test, seed, folds):
    slices = fake_slices(n_patients, seed=seed % 1000)
    fold = seed % folds
    cfg = SplitConfig(val_fraction=val, test_fraction=test, seed=seed, folds=folds, fold=fold)
    try:
        splits = make_splits(slices, cfg)
    except SplitError:
        return  # too few patients for these fractions: refused loudly, never leaked
    sets = [set(splits[name]) for name in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(slices["patient_id"])
    assert splits["train"]
    if folds > 1:
        assert set(splits["test"]) == set(splits["fold_patients"][fold])


def test_tiny_dataset_errors_clearly_when_a_split_would_be_empty():
    slices = fake_slices(2)
    with pytest.raises(SplitError, match="train split would be empty"):
        make_splits(slices, SplitConfig())


def test_five_patients_split(real_sample):
    slices, _ = build_index(real_sample)
    splits = make_splits(slices, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=0))
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (3, 1, 1)


def test_kfold_partitions_patients_into_disjoint_folds():
    slices = fake_slices(23)
    result = make_splits(slices, SplitConfig(folds=5, fold=2, seed=9))
    folds = result["fold_patients"]
    assert len(folds) == 5 and sum(len(f) for f in folds) == 23
    assert len(set().union(*map(set, folds))) == 23
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert result["test"] == folds[2]
    for other in range(5):
        r = make_splits(slices, SplitConfig(folds=5, fold=other, seed=9))
        assert r["fold_patients"] == folds and r["test"] == folds[other]


def test_leak_check_names_patient_and_splits():
    check_no_leak({"train": ["a", "b"], "val": ["c"], "test": ["d"]})
    with pytest.raises(PatientLeakError, match="b in test and train"):
        check_no_leak({"train": ["a", "b"], "val": ["c"], "test": ["b"]})


def test_split_stage_writes_json_and_summary(prepared_project):
    splits = json.loads(prepared_project.splits_json.read_text())
    summary = json.loads(prepared_project.split_summary.read_text())
    slices = pd.read_csv(prepared_project.slices_csv)
    assert summary == split_summary(slices, splits)
    assert sum(s["slices"] for s in summary.values()) == len(slices)
    assert all(summary[name]["patients"] >= 1 for name in ("train", "val", "test"))
