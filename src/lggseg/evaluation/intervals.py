"""How sure a number is: 95% bootstrap intervals over patients, and paired comparisons of two models.

Patients are the unit everywhere: slices of one patient are not independent, so every interval resamples
whole patients (a cluster bootstrap), with scipy.stats.bootstrap (BCa, seeded). A test split of 16 patients
moves a mean Dice by several points; these intervals say how many.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20190218  # fixed: the same data gives the same interval, run after run
SIGNIFICANCE = 0.05  # the Wilcoxon level a paired verdict uses


def patient_interval(statistic: Callable[[np.ndarray], float], n_patients: int, seed: int = SEED) -> tuple[float, float] | None:
    """95% interval of `statistic(patient_indices)` over patients resampled with replacement; None when it
    cannot be estimated (fewer than 2 patients, or a statistic that does not vary)."""
    if n_patients < 2:
        return None
    indices = np.arange(n_patients)
    with warnings.catch_warnings():  # a degenerate distribution warns and gives nan: reported as None
        warnings.simplefilter("ignore")
        result = stats.bootstrap((indices,), lambda idx: statistic(np.asarray(idx, dtype=int)), vectorized=False,
                                 confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="BCa",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def mean_interval(values: np.ndarray, seed: int = SEED) -> tuple[float, float] | None:
    values = np.asarray(values, dtype=float)
    return patient_interval(lambda idx: float(values[idx].mean()), len(values), seed)


def median_interval(values: np.ndarray, seed: int = SEED) -> tuple[float, float] | None:
    values = np.asarray(values, dtype=float)
    return patient_interval(lambda idx: float(np.median(values[idx])), len(values), seed)


def with_intervals(metrics: dict, intervals: dict[str, tuple[float, float] | None]) -> dict:
    """`metrics` plus `<key>_ci_low` / `<key>_ci_high` after each key that has an interval (None: not estimable)."""
    out = {}
    for key, value in metrics.items():
        out[key] = value
        if key in intervals:
            interval = intervals[key]
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = interval if interval is not None else (None, None)
    return out


def paired_comparison(a: pd.Series, b: pd.Series, name_a: str, name_b: str, seed: int = SEED,
                      patients: str = "these test patients") -> dict:
    """Does `a` beat `b` on the same patients? Per-patient Dice indexed by patient id. Mean difference a - b
    with a paired bootstrap 95% interval, and the Wilcoxon signed-rank test; `verdict` is one sentence."""
    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    if len(both) != len(a) or len(both) != len(b):
        raise ValueError(f"{name_a} and {name_b} were not scored on the same patients "
                         f"({len(a)} and {len(b)}, {len(both)} in common)")
    diff = (both["a"] - both["b"]).to_numpy()
    result = {"a": name_a, "b": name_b, "n_patients": len(diff), "mean_difference": float(diff.mean()) if len(diff) else None,
              "ci_low": None, "ci_high": None, "wilcoxon_p": None}
    interval = mean_interval(diff, seed)
    if interval is not None:
        result["ci_low"], result["ci_high"] = interval
    if len(diff) and np.any(diff != 0):
        result["wilcoxon_p"] = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
    result["n_nonzero"] = int(np.count_nonzero(diff))  # the "wilcox" zero method drops ties of a and b
    result["verdict"] = _verdict(result, patients)
    return result


def smallest_wilcoxon_p(n_differences: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give with `n_differences` non-zero
    paired differences (all of one sign, no ties): 2 / 2**n. With 5 patients or fewer it is above 0.05."""
    return min(1.0, 2.0 / 2**n_differences)


def _verdict(r: dict, patients: str) -> str:
    """One sentence with both results and the rule that turns them into a verdict: a model is called better
    only when the paired bootstrap interval of the mean difference excludes 0 AND Wilcoxon p < 0.05. The two can
    disagree (few patients cap how small p can be), so the sentence says which one held and which did not."""
    if r["wilcoxon_p"] is None:
        return f"{r['a']} and {r['b']} give the same per-patient Dice on all {r['n_patients']} of {patients}."
    interval = "" if r["ci_low"] is None else f", 95% bootstrap CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    floor = smallest_wilcoxon_p(r["n_nonzero"])
    floor_note = (f"; with {r['n_nonzero']} patients that differ the smallest p this test can give is {floor:.3g}"
                  if floor >= SIGNIFICANCE else "")
    numbers = (f"mean per-patient Dice difference {r['a']} - {r['b']} = {r['mean_difference']:+.3f}{interval}; "
               f"Wilcoxon signed-rank p = {r['wilcoxon_p']:.3g}, {r['n_patients']} patients{floor_note}")
    rule = f"rule: a model is called better only when the interval excludes 0 and p < {SIGNIFICANCE:g}"
    excludes_zero = r["ci_low"] is not None and (r["ci_low"] > 0 or r["ci_high"] < 0)
    significant = r["wilcoxon_p"] < SIGNIFICANCE
    if significant and excludes_zero:
        better = r["a"] if r["mean_difference"] > 0 else r["b"]
        return f"**{better} is better** on {patients}: both tests agree ({numbers}; {rule})."
    if excludes_zero or significant:
        held, failed = (("the bootstrap interval excludes 0", f"the Wilcoxon test does not reach p < {SIGNIFICANCE:g}")
                        if excludes_zero else
                        (f"the Wilcoxon test gives p < {SIGNIFICANCE:g}", "the bootstrap interval includes 0"))
        return (f"**Not established** whether {r['a']} and {r['b']} differ on {patients}: {held} but {failed}, "
                f"so the two tests disagree and more patients are needed ({numbers}; {rule}).")
    no_interval = "no interval could be estimated" if r["ci_low"] is None else "the interval includes 0"
    return (f"**No significant difference** between {r['a']} and {r['b']} on {patients}: {no_interval} "
            f"and p >= {SIGNIFICANCE:g} ({numbers}).")
