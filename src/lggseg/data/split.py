"""Patient-wise train/val/test splits (and k folds), stratified by institution and tumor burden.

Slices of one patient are strongly correlated: a split that puts one patient on both sides leaks
and inflates Dice. Everything here works on patients; `check_no_leak` is the one guard every stage
calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from lggseg.core.config import SplitConfig
from lggseg.core.paths import SPLITS


class SplitError(ValueError):
    """A split cannot be made as configured (e.g. it would be empty)."""


class PatientLeakError(RuntimeError):
    """A patient appears in more than one split."""


def check_no_leak(splits: Mapping[str, Iterable[str]]) -> None:
    """Raise `PatientLeakError` naming every patient that sits in two or more splits."""
    seen: dict[str, list[str]] = {}
    for split_name, patients in splits.items():
        for patient in set(patients):
            seen.setdefault(patient, []).append(split_name)
    leaks = {p: names for p, names in seen.items() if len(names) > 1}
    if leaks:
        listing = "; ".join(f"{p} in {' and '.join(sorted(n))}" for p, n in sorted(leaks.items()))
        raise PatientLeakError(f"patient leakage between splits: {listing}")


def patient_table(slices: pd.DataFrame, tumor_bins: int) -> pd.DataFrame:
    """One row per patient: institution, slices, positive slices, tumor fraction and its stratum."""
    patients = slices.groupby("patient_id").agg(
        institution=("institution", "first"), slices=("slice", "size"), positive=("has_tumor", "sum"),
    ).reset_index()
    patients["tumor_fraction"] = patients["positive"] / patients["slices"]
    # rank-based bins stay balanced even when many patients share a fraction
    ranks = patients["tumor_fraction"].rank(method="first") - 1
    patients["tumor_bin"] = np.floor(ranks * tumor_bins / len(patients)).astype(int)
    patients["stratum"] = patients["institution"] + "/" + patients["tumor_bin"].astype(str)
    return patients


def _stratified_order(patients: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """Patients grouped by stratum (strata in random order, shuffled within), so that dealing
    consecutive positions to splits in an interleaved pattern gives each split a share of each stratum."""
    strata = sorted(patients["stratum"].unique())
    rng.shuffle(strata)
    order: list[str] = []
    for stratum in strata:
        members = sorted(patients.loc[patients["stratum"] == stratum, "patient_id"])
        rng.shuffle(members)
        order.extend(members)
    return order


def _interleaved_labels(counts: Mapping[str, int]) -> list[str]:
    """Labels with exact counts, spread evenly: each label's k-th copy sits at position (k+0.5)/count."""
    keyed = [((k + 0.5) / n, name) for name, n in counts.items() for k in range(n)]
    return [name for _, name in sorted(keyed)]


def split_counts(n_patients: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    n_test = int(round(n_patients * test_fraction))
    n_val = int(round(n_patients * val_fraction))
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    n_train = n_patients - n_val - n_test
    if n_train < 1:
        raise SplitError(
            f"{n_patients} patient(s) cannot fill train/val/test with val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}: the train split would be empty "
            f"(val {n_val}, test {n_test}). Use more patients or smaller fractions."
        )
    return {"train": n_train, "val": n_val, "test": n_test}


def make_splits(slices: pd.DataFrame, cfg: SplitConfig) -> dict:
    """The content of splits.json: patient IDs per split, plus all folds when cfg.folds > 1."""
    patients = patient_table(slices, cfg.tumor_bins)
    rng = np.random.default_rng(cfg.seed)
    order = _stratified_order(patients, rng)
    n = len(order)
    result: dict = {"seed": cfg.seed, "folds": cfg.folds, "fold": cfg.fold}
    if cfg.folds == 1:
        labels = _interleaved_labels(split_counts(n, cfg.val_fraction, cfg.test_fraction))
        assignment = dict(zip(order, labels))
    else:
        if cfg.folds > n:
            raise SplitError(f"split.folds={cfg.folds} is more than the {n} patients available")
        fold_of = {pid: i % cfg.folds for i, pid in enumerate(order)}
        result["fold_patients"] = [sorted(p for p, f in fold_of.items() if f == k) for k in range(cfg.folds)]
        rest = [p for p in order if fold_of[p] != cfg.fold]  # keeps the stratified order
        n_val = max(1, int(round(n * cfg.val_fraction))) if cfg.val_fraction > 0 else 0
        if len(rest) - n_val < 1:
            raise SplitError(f"fold {cfg.fold} of {cfg.folds}: too few patients left for train and val")
        labels = _interleaved_labels({"train": len(rest) - n_val, "val": n_val})
        assignment = {p: "test" for p, f in fold_of.items() if f == cfg.fold}
        assignment.update(zip(rest, labels))
    for name in SPLITS:
        result[name] = sorted(p for p, s in assignment.items() if s == name)
    empty = [name for name in SPLITS if not result[name] and _wanted(name, cfg)]
    if empty:
        raise SplitError(f"split(s) {', '.join(empty)} would be empty with {n} patients")
    check_no_leak({name: result[name] for name in SPLITS})
    return result


def _wanted(name: str, cfg: SplitConfig) -> bool:
    return (name == "train" or (name == "val" and cfg.val_fraction > 0)
            or (name == "test" and (cfg.test_fraction > 0 or cfg.folds > 1)))


def split_summary(slices: pd.DataFrame, splits: Mapping[str, list[str]]) -> dict[str, dict[str, int]]:
    """Patients, slices and tumor-positive slices per split (a DVC metrics file)."""
    summary = {}
    for name in SPLITS:
        part = slices[slices["patient_id"].isin(splits[name])]
        summary[name] = {
            "patients": int(part["patient_id"].nunique()),
            "slices": int(len(part)),
            "positive_slices": int(part["has_tumor"].sum()),
            "institutions": int(part["institution"].nunique()),
        }
    return summary


def slices_for(slices: pd.DataFrame, patients: Iterable[str]) -> pd.DataFrame:
    """The rows of `slices` for these patients, in patient then slice order."""
    keep = set(patients)
    return slices[slices["patient_id"].isin(keep)].sort_values(["patient_id", "slice"], ignore_index=True)
