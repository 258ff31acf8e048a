"""Statistics over seeds: mean, sample std, the interval of a mean, Welch's t-test and its
confidence interval.

With 3-5 seeds these are rough: the report says so, and shows every seed's value too.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def welch_t_test(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test for mean(a) != mean(b); nan when undefined."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def welch_interval(a: list[float], b: list[float],
                   confidence: float = 0.95) -> tuple[float, float]:
    """Welch's confidence interval of mean(a) - mean(b): t quantile with the
    Welch-Satterthwaite degrees of freedom (the interval of `welch_t_test`; with 3 seeds per
    group it is honest where a percentile bootstrap of 3 values is too narrow); (nan, nan)
    with fewer than 2 values a side."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    if np.std(a) == 0 and np.std(b) == 0:
        diff = float(np.mean(a) - np.mean(b))
        return diff, diff
    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    low, high = result.confidence_interval(confidence)
    return float(low), float(high)


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student's t confidence interval of the mean of `values` (the one-sample analogue of
    `welch_interval`); (mean, mean) for a single value, which has no spread to show."""
    mean, std = mean_std(values)
    if len(values) < 2:
        return mean, mean
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean - half, mean + half


def significance_note(p_value: float, interval: tuple[float, float]) -> str:
    if math.isnan(p_value):
        return "one seed: no test"
    excludes_zero = interval[0] > 0 or interval[1] < 0
    if p_value < 0.05 and excludes_zero:
        return f"significant (p={p_value:.3f})"
    return f"not significant (p={p_value:.3f})"
