import math

import torch

from extmem.memory.stats import (
    distribution_metrics,
    gini,
    kl_to_uniform,
    staleness_histogram,
    top_share_counts,
    windowed_usage,
)


def test_gini_hand_values():
    assert gini(torch.ones(4)) == 0.0
    # all mass on one of 4 slots: (n - 1) / n
    assert math.isclose(gini(torch.tensor([0.0, 0.0, 0.0, 5.0])), 0.75)
    # [1, 3]: mean abs difference / (2 * mean) = (2*|1-3|/4) / (2*2) = 0.25
    assert math.isclose(gini(torch.tensor([1.0, 3.0])), 0.25)


def test_kl_to_uniform_hand_values():
    assert math.isclose(kl_to_uniform(torch.ones(8)), 0.0, abs_tol=1e-12)
    assert math.isclose(kl_to_uniform(torch.tensor([1.0, 0.0, 0.0, 0.0])), math.log(4))
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    expected = math.log(3) + float((p * p.log()).sum())
    assert math.isclose(kl_to_uniform(p * 12), expected, rel_tol=1e-9)


def test_top_share_counts():
    mass = torch.tensor([50.0, 30.0, 15.0, 4.0, 1.0])
    assert top_share_counts(mass) == {"top50": 1, "top90": 3, "top99": 4}


def test_usage_and_windowed_usage_disagree_on_stale_slots():
    counts = torch.tensor([3, 1, 0, 2])
    metrics = distribution_metrics(counts.float(), counts)
    assert metrics["usage"] == 0.75
    last_step = torch.tensor([99, 10, -1, 95])
    assert windowed_usage(last_step, step=100, window=10) == 0.5  # slots read at 95 and 99
    assert windowed_usage(last_step, step=100, window=1000) == 0.75


def test_staleness_histogram_excludes_never_read():
    counts, edges = staleness_histogram(torch.tensor([10, 0, -1, 5]), step=10, bins=2)
    assert sum(counts) == 3 and len(edges) == 3
    assert counts == [1, 2]  # age 0 in [0, 5); ages 5 and 10 in [5, 10]
