import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lggseg.evaluation.intervals import (
    SEED,
    mean_interval,
    median_interval,
    paired_comparison,
    patient_interval,
    with_intervals,
)

DICE = np.random.default_rng(1).uniform(0.2, 1.0, 16)  # 16 test patients, as in the real split


def test_mean_interval_is_scipys_seeded_bca_interval_and_holds_the_mean():
    expected = stats.bootstrap((DICE,), np.mean, confidence_level=0.95, n_resamples=2000, method="BCa",
                               rng=np.random.default_rng(SEED)).confidence_interval
    assert mean_interval(DICE) == pytest.approx((expected.low, expected.high))
    low, high = mean_interval(DICE)
    assert low < DICE.mean() < high and high - low > 0.1  # 16 patients: wide
    assert mean_interval(DICE) == mean_interval(DICE)  # seeded: the same interval every run


def test_more_patients_narrow_the_interval():
    many = np.random.default_rng(1).uniform(0.2, 1.0, 160)
    assert np.subtract(*mean_interval(many)[::-1]) < np.subtract(*mean_interval(DICE)[::-1]) / 2


def test_no_interval_where_resampling_cannot_vary():
    assert mean_interval(np.ones(8)) is None and mean_interval(DICE[:1]) is None
    assert median_interval(DICE) is not None
    # a statistic over patients' rows (a cluster bootstrap): pooled over two arrays
    tp, fn = np.arange(1, 17, dtype=float), np.full(16, 4.0)
    low, high = patient_interval(lambda i: tp[i].sum() / (tp[i].sum() + fn[i].sum()), 16)
    assert low < tp.sum() / (tp.sum() + fn.sum()) < high


def test_intervals_follow_their_metric_and_missing_ones_are_none():
    out = with_intervals({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": (0.5, 1.5), "c": None})
    assert list(out) == ["a", "a_ci_low", "a_ci_high", "b", "c", "c_ci_low", "c_ci_high"]
    assert out["a_ci_low"] == 0.5 and out["c_ci_high"] is None


def _series(values):
    return pd.Series(values, index=[f"TCGA_{i:02d}" for i in range(len(values))])


def test_paired_comparison_names_a_clear_winner():
    better = _series(DICE + 0.1 + np.random.default_rng(2).normal(0, 0.02, 16))
    result = paired_comparison(better, _series(DICE), "unet", "fpn")
    assert result["wilcoxon_p"] < 0.001 and result["ci_low"] > 0
    assert result["verdict"].startswith("**unet is better**")


def test_paired_comparison_does_not_crown_noise():
    noisy = _series(DICE + np.random.default_rng(2).normal(0, 0.05, 16))
    result = paired_comparison(noisy, _series(DICE), "unet", "fpn")
    assert result["wilcoxon_p"] > 0.05 and result["ci_low"] < 0 < result["ci_high"]
    assert result["verdict"].startswith("**No significant difference** between unet and fpn")
    same = paired_comparison(_series(DICE), _series(DICE), "unet", "fpn")
    assert same["wilcoxon_p"] is None and "the same per-patient Dice on all 16 of these test patients" in same["verdict"]


def test_paired_comparison_refuses_different_patients():
    with pytest.raises(ValueError, match="not scored on the same patients"):
        paired_comparison(_series(DICE), _series(DICE[:15]), "unet", "fpn")
