"""Fused CPU kernels (numba, the `fast` extra) of the memory step and the switch between them and
their portable torch paths (docs/performance.md).

- `backend`: the switch (`EXTMEM_KERNELS=auto|numba|torch`, `use_kernels`), the one eligibility
  rule every dispatch asks (`fused_available`) and `jit_once`;
- `topk`: top-k of rows (for `extmem.memory.topk`);
- `pair_topk`: best k of a product-key search's candidate pairs (for `extmem.memory.pair_topk`);
- `read_weight_grad`: per-read weight gradient of an embedding bag (for
  `extmem.memory.read_weight_grad`);
- `subkey_grad`: sub-key gradient of the kept scores (for `extmem.memory.score_topk`);
- `usage`: usage counters (for `extmem.memory.stats`);
- `lazy_adam`: lazy-Adam row update (for `extmem.train.fused_rows`).

Each kernel file holds the numba kernel (compiled on first use) and a wrapper taking tensors;
the operation's own module decides which path runs and keeps the portable one.
"""

from extmem.memory.kernels.backend import (
    CHOICES,
    ENV_VAR,
    active_backend,
    current_choice,
    fused_available,
    numba_installed,
    use_kernels,
)

__all__ = ["CHOICES", "ENV_VAR", "active_backend", "current_choice", "fused_available",
           "numba_installed", "use_kernels"]
