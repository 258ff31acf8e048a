"""Memory usage counters and metrics (Lample et al. 2019; Kim & Jung 2020, "Large Product Key
Memory for Pretrained Language Models"; the README's `extmem usage`).

Counters live on the memory's device as tensors and are updated with index_add / index_fill,
so no indices are copied to the host during training (on CPU with the `fast` extra, one fused
numba pass does all three updates). Metrics:
- usage: fraction of slots read at least once (Lample et al. 2019);
- KL to uniform, weighted by read weight and unweighted (by read counts);
- entropy of the weight distribution; load balance as the coefficient of variation of the
  read counts (experts);
- Gini of the weight distribution and top-50/90/99: slots holding that share of the mass;
- windowed usage: fraction of slots read in the last W training steps, and staleness (steps
  since a slot was last read; Kim & Jung 2020's "outdated" slots).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from extmem.memory.kernels import backend
from extmem.memory.kernels import usage as usage_kernel

FUSED_MIN_READS = 1 << 14  # below this, the three index ops cost less than a kernel call


class UsageCounters(nn.Module):
    """Per-slot read counts, read weight and the last step each slot was read (-1: never).

    The buffers keep their dtypes (int64 counts and steps, float32 weight) when the model is
    converted (`.to(torch.bfloat16)`, `.half()`, `.double()`): a sum of many reads in bf16
    would stop growing, and the updates below need them. `.to(device)` moves them as usual.
    """

    def __init__(self, num_slots: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_slots, dtype=torch.int64))
        self.register_buffer("weight", torch.zeros(num_slots, dtype=torch.float32))
        self.register_buffer("last_step", torch.full((num_slots,), -1, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        """Apply `fn` (a move or conversion) to the buffers, but undo a dtype change: each buffer
        goes to the device `fn` picks in its own dtype, from its original values. (This module
        holds buffers only: no parameters or children for nn.Module._apply to visit.)"""
        for name, buf in self._buffers.items():
            if buf is None:
                continue
            moved = fn(buf)
            self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    @torch.no_grad()
    def record(self, indices: torch.Tensor, weights: torch.Tensor,
               padding_mask: torch.Tensor | None = None) -> None:
        """indices, weights (B, T, H, k); padding_mask (B, T) True where padded (not counted)."""
        if padding_mask is not None:
            keep = ~padding_mask  # (B, T)
            indices, weights = indices[keep], weights[keep]  # (n, H, k)
        flat = indices.reshape(-1)
        read_weights = weights.reshape(-1).float()  # (R,): the counters sum in float32
        if backend.fused_available(self.weight, read_weights) and flat.numel() >= FUSED_MIN_READS:
            # kernels.usage: one pass for all three updates (CPU: no device sync)
            usage_kernel.record(self.counts, self.weight, self.last_step, flat, read_weights,
                                int(self.step))
            return
        self.counts.index_add_(0, flat, torch.ones_like(flat))
        self.weight.index_add_(0, flat, read_weights.to(self.weight.dtype))
        self.last_step.index_fill_(0, flat, self.step)  # 0-dim tensor value: no host sync

    def read_ages(self) -> torch.Tensor:
        """(n_read,) steps since each slot that was ever read was last read (its staleness)."""
        read = self.last_step[self.last_step >= 0]
        return self.step - read

    def summary(self, window: int = 100) -> dict[str, float]:
        """All metrics of this counter set as plain floats (one host copy of small results)."""
        out = distribution_metrics(self.weight, self.counts)
        out["windowed_usage"] = windowed_usage(self.last_step, int(self.step), window)
        out["never_read"] = float((self.last_step < 0).float().mean())
        out["rows_read_last_step"] = int((self.last_step == int(self.step)).sum())
        return out


def gini(mass: torch.Tensor) -> float:
    """Gini coefficient of a non-negative vector (0: uniform, -> 1: all mass on one slot)."""
    values = mass.double().sort().values
    n, total = values.numel(), values.sum()
    if total <= 0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=values.device)
    return float((2 * (ranks * values).sum() / (n * total)) - (n + 1) / n)


def top_share_counts(mass: torch.Tensor, shares: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict:
    """How many of the heaviest slots hold each share of the total mass."""
    values = mass.double().sort(descending=True).values
    total = values.sum()
    out = {}
    for share in shares:
        key = f"top{round(share * 100)}"
        if total <= 0:
            out[key] = 0
            continue
        cumulative = values.cumsum(0) / total
        out[key] = int((cumulative < share - 1e-12).sum()) + 1
    return out


def kl_to_uniform(mass: torch.Tensor) -> float:
    """KL(p || uniform) = log N + sum p log p, p = mass / sum(mass)."""
    total = mass.double().sum()
    if total <= 0:
        return 0.0
    p = mass.double() / total
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    return float(math.log(mass.numel()) + plogp.sum())


def entropy(mass: torch.Tensor) -> float:
    """Entropy (nats) of p = mass / sum(mass); log N for a uniform spread."""
    if float(mass.double().sum()) <= 0:
        return 0.0
    return math.log(mass.numel()) - kl_to_uniform(mass)


def load_cv(counts: torch.Tensor) -> float:
    """Coefficient of variation (std / mean) of the read counts: 0 is perfectly balanced load."""
    values = counts.double()
    mean = values.mean()
    return float(values.std(unbiased=False) / mean) if mean > 0 else 0.0


def distribution_metrics(weight: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {
        "usage": float((counts > 0).double().mean()),
        "entropy": entropy(weight),
        "kl_uniform_weighted": kl_to_uniform(weight),
        "kl_uniform_counts": kl_to_uniform(counts),
        "gini": gini(weight),
        "load_cv": load_cv(counts),
    }
    out.update(top_share_counts(weight))
    return out


def windowed_usage(last_step: torch.Tensor, step: int, window: int) -> float:
    """Fraction of slots read within the last `window` steps (step - window, step]."""
    return float(((last_step >= 0) & (last_step > step - window)).double().mean())


def staleness_histogram(last_step: torch.Tensor, step: int,
                        bins: int = 20) -> tuple[list[int], list[float]]:
    """Histogram of steps since each read slot was last read (never-read slots excluded)."""
    seen = last_step[last_step >= 0]
    if seen.numel() == 0:
        return [], []
    age = (step - seen).double()
    hi = max(float(age.max()), 1.0)
    counts = torch.histc(age, bins=bins, min=0.0, max=hi)
    edges = torch.linspace(0.0, hi, bins + 1)
    return [int(c) for c in counts.tolist()], [float(e) for e in edges.tolist()]


def staleness_figures(last_step: torch.Tensor, step: int, bins: int = 20) -> dict:
    """Kim & Jung 2020's outdated slots at training step `step`: histogram of steps since each read slot
    was last read (`counts` per bin, bin `edges` in steps), its mean and median, and the
    fraction of slots never read."""
    seen = last_step[last_step >= 0]
    age = (step - seen).double()  # (n_read,)
    counts, edges = staleness_histogram(last_step, step, bins)
    return {
        "staleness_hist": {"counts": counts, "edges": edges},
        "staleness_mean": float(age.mean()) if age.numel() else 0.0,
        "staleness_median": float(age.median()) if age.numel() else 0.0,
        "never_selected": float((last_step < 0).double().mean()),
    }
