"""Statistics over seeds: mean, sample std, Welch's t-test and a bootstrap interval.

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


def bootstrap_interval(a: list[float], b: list[float], confidence: float = 0.95,
                       samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b), resampling each group."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diffs = (rng.choice(xa, (samples, xa.size)).mean(1)
             - rng.choice(xb, (samples, xb.size)).mean(1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(low), float(high)


def significance_note(p_value: float, interval: tuple[float, float]) -> str:
    if math.isnan(p_value):
        return "one seed: no test"
    excludes_zero = interval[0] > 0 or interval[1] < 0
    if p_value < 0.05 and excludes_zero:
        return f"significant (p={p_value:.3f})"
    return f"not significant (p={p_value:.3f})"
