"""Each fused CPU kernel of the memory step (numba, the `fast` extra) against its portable path.

See docs/performance.md. Times, side by side in one run, every numba kernel and the
torch path it replaces, at the shapes of `extmem bench pkm`'s 1M-slot setting (4,096 tokens,
4 heads, top-32, key width 256, 1,048,576 x 256 fp32 table) unless stated:

- topk:            32,768 rows of 1,024 scores, k = 32 (and 16,384 rows, k = 8: the
                   whole-model bench's memory) vs `torch.topk`
- read_weight_grad: per-read weight gradient of 4,096 bags x 128 reads vs ATen's op
- subkey_grad:     sub-key gradient of 8 x 4,096 queries x 32 kept scores vs sort + bag
- best_pairs:      best 32 of the ~130 candidate pairs of 16,384 (token, head) rows vs
                   index_select + add + torch.topk
- usage_record:    usage counters of 524,288 reads of 1M slots vs index_add_ x 2 + index_fill_
- lazy_adam:       400,000 touched rows of the table vs the unfused torch update

Fused calls run under `use_kernels("numba")`, portable ones under `use_kernels("torch")`
(`extmem.memory.kernels`). Rounds alternate fused and portable calls
(`extmem.bench.timing.timed_rounds`); prints one JSON object with the median ms of each and the
speed-up. Needs numba (`pip install -e ".[fast]"`) and ~4 GiB of memory.

    python benchmarks/kernels.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json

import torch

from extmem.allocator import reuse_freed_memory
from extmem.bench.timing import environment, timed_rounds, warm_up
from extmem.memory import kernels
from extmem.memory import topk as topk_module
from extmem.memory.kernels.subkey_grad import subkey_grad
from extmem.memory.pair_topk import best_pairs
from extmem.memory.read_weight_grad import read_weight_grad
from extmem.memory.sparse import row_sparse_grad
from extmem.memory.stats import UsageCounters
from extmem.train.sparse_optim import LazyAdam


def _using(choice: str, fn):
    """Run `fn` with the kernel back-end `choice` ('numba': the kernels whatever the thread
    counts; 'torch': the portable paths)."""
    def run() -> object:
        with kernels.use_kernels(choice):
            return fn()
    return run


def _fused(fn):
    return _using("numba", fn)


def _portable(fn):
    return _using("torch", fn)


def subjects(g: torch.Generator) -> dict[str, dict]:
    rows, n_slots, d = 4096, 1 << 20, 256
    table = torch.randn(n_slots, d, generator=g)  # (N, d)
    bags = torch.randint(0, n_slots, (rows, 128), generator=g)  # (tokens, H*k)
    grad_out = torch.randn(rows, d, generator=g)  # (tokens, d)

    scores32 = torch.randn(32768, 1024, generator=g)  # (tokens*2H, n)
    scores8 = torch.randn(16384, 1024, generator=g)

    q = torch.randn(8, rows, 128, generator=g)  # (2H, M, half)
    kept = torch.randint(0, 1024, (8, rows, 32), generator=g)  # (2H, M, k)
    kept_grad = torch.randn(8, rows, 32, generator=g)
    offsets = (torch.arange(8) * 1024).view(8, 1, 1)

    top1 = torch.randn(16384, 32, generator=g).sort(-1, descending=True).values  # (H*M, k)
    top2 = torch.randn(16384, 32, generator=g).sort(-1, descending=True).values
    grid = torch.arange(1, 33)
    first, second = (grid[:, None] * grid[None, :] <= 32).nonzero().unbind(1)
    first, second = first.contiguous(), second.contiguous()

    reads = torch.randint(0, n_slots, (1, rows, 4, 32), generator=g)  # (B, T, H, k)
    read_w = torch.rand(1, rows, 4, 32, generator=g)
    counters = UsageCounters(n_slots)

    param = torch.nn.Parameter(table.clone())
    touched = torch.randperm(n_slots, generator=g)[:400_000].sort().values
    grad = torch.sparse_coo_tensor(touched.unsqueeze(0), torch.randn(400_000, d, generator=g),
                                   (n_slots, d), is_coalesced=True, check_invariants=False)
    fused_opt, plain_opt = LazyAdam([param]), LazyAdam([param])

    def adam(opt: LazyAdam):
        def step() -> None:
            param.grad = grad
            opt.step()
        return step

    def pairs():
        return best_pairs(top1, top2, first, second, 32)

    def portable_subkeys():
        flat_bags = (kept + offsets).reshape(-1, 32)
        return row_sparse_grad(q.reshape(-1, 128), flat_bags, kept_grad.reshape(-1, 32),
                               8 * 1024).to_dense()

    return {
        "topk_k32": {"fused": _fused(lambda: topk_module.topk(scores32, 32)),
                     "portable": lambda: scores32.topk(32, dim=-1)},
        "topk_k8": {"fused": _fused(lambda: topk_module.topk(scores8, 8)),
                    "portable": lambda: scores8.topk(8, dim=-1)},
        "read_weight_grad": {"fused": _fused(lambda: read_weight_grad(table, bags, grad_out)),
                             "portable": _portable(lambda: read_weight_grad(table, bags,
                                                                            grad_out))},
        "subkey_grad": {"fused": _fused(lambda: subkey_grad(q, kept, kept_grad, 1024)),
                        "portable": portable_subkeys},
        "best_pairs": {"fused": _fused(pairs), "portable": _portable(pairs)},
        "usage_record": {"fused": _fused(lambda: counters.record(reads, read_w)),
                         "portable": _portable(lambda: counters.record(reads, read_w))},
        "lazy_adam": {"fused": _fused(adam(fused_opt)), "portable": _portable(adam(plain_opt))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if not kernels.numba_installed():
        raise SystemExit("error: numba is not installed: pip install -c constraints.txt -e '.[fast]'")
    reuse_freed_memory()  # as the CLI does
    results = {}
    for name, ops in subjects(torch.Generator().manual_seed(0)).items():
        pair = {name: ops}
        warm_up(pair, args.warmup)
        timing = timed_rounds({"fused": {"ms": ops["fused"]},
                               "portable": {"ms": ops["portable"]}}, args.repeats)
        fused, portable = timing["fused"]["ms"]["median"], timing["portable"]["ms"]["median"]
        results[name] = {"fused_ms": round(fused, 2), "portable_ms": round(portable, 2),
                         "speedup": round(portable / fused, 2)}
    print(json.dumps({"benchmark": "kernels", "environment": environment(),
                      "repeats": args.repeats, "kernels": results}, indent=1))


if __name__ == "__main__":
    main()
