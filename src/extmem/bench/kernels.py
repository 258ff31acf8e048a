"""`extmem bench kernels`: each fused CPU kernel of the memory step against its portable path.

See docs/performance.md. Times, side by side in one run, every numba kernel (the `fast` extra)
and the torch path it replaces. The defaults are the shapes of `extmem bench pkm`'s 1M-slot
setting: `tokens` = 4,096, `heads` = 4, `topk` = 32, key width `key_dim` = 256, a table of
`n_keys`^2 = 1,048,576 rows x `dim` = 256 fp32:

- topk:             tokens x 2 heads rows of n_keys scores, k = topk, vs `torch.topk`
- topk_model:       tokens x heads rows of n_keys scores, k = 8 (the memory of `extmem bench
                    model`) vs `torch.topk`
- read_weight_grad: per-read weight gradient of `tokens` bags x heads * topk reads vs ATen's op
- subkey_grad:      sub-key gradient of 2 heads x tokens queries x topk kept scores vs sort +
                    bag
- best_pairs:       best topk of the candidate pairs (i * j <= topk) of heads x tokens rows vs
                    index_select + add + torch.topk
- usage_record:     usage counters of tokens x heads x topk reads vs index_add_ x 2 + index_fill_
- lazy_adam:        `adam_rows` touched rows of the table vs the unfused torch update
- expert_gather_grad: the dense gradient of `tokens` x heads * topk rows gathered from the
                    table (PEER's experts, `extmem.memory.experts`): `dense_gather`'s
                    `index_add_` vs autograd's `index_put_(accumulate=True)` (torch both
                    ways, timed with or without numba)

Fused calls run under `use_kernels("numba")`, portable ones under `use_kernels("torch")`
(`extmem.memory.kernels`); the rounds alternate them (`extmem.bench.timing.timed_rounds`).
`speedup` = portable median / fused median. Without numba only the portable paths are timed
(install it with `pip install "extmem[fast]"`). The defaults need ~4 GiB of memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import torch

from extmem.bench.markdown import command_lines, environment_line
from extmem.bench.timing import Ops, environment, finish_environment, log_progress, timed_rounds, warm_up
from extmem.config import require, require_valid_fields
from extmem.memory import kernels
from extmem.memory import topk as topk_module
from extmem.memory.pair_topk import best_pairs
from extmem.memory.read_weight_grad import read_weight_grad
from extmem.memory.sparse import dense_gather, row_sparse_grad
from extmem.memory.stats import UsageCounters
from extmem.train.sparse_optim import LazyAdam

Kernel = Literal["topk", "topk_model", "read_weight_grad", "subkey_grad", "best_pairs",
                 "usage_record", "lazy_adam", "expert_gather_grad"]
KERNELS: tuple[str, ...] = get_args(Kernel)
WITHOUT_NUMBA = {"expert_gather_grad"}  # both sides are torch: timed whether numba is installed
MODEL_TOPK = 8  # top-k of the memory in `extmem bench model` (configs/quickstart.toml)
INSTALL_HINT = 'pip install "extmem[fast]"'


@dataclass
class KernelsBenchConfig:
    kernels: list[Kernel] = field(default_factory=lambda: list(KERNELS))
    tokens: int = 4096
    heads: int = 4
    topk: int = 32
    key_dim: int = 256          # two halves of key_dim / 2
    n_keys: int = 1024          # sub-keys per half; the table has n_keys^2 rows
    dim: int = 256              # table row width (fp32)
    adam_rows: int = 400_000    # rows lazy Adam updates (<= n_keys^2)
    repeats: int = 7
    warmup: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        p = "bench.kernels"
        require_valid_fields(self, p)
        require(len(self.kernels) > 0, f"{p}.kernels: empty; list at least one of "
                                       f"{', '.join(KERNELS)}")
        for name, low in {"tokens": 1, "heads": 1, "topk": 1, "key_dim": 2, "n_keys": 1,
                          "dim": 1, "adam_rows": 1, "repeats": 1, "warmup": 0,
                          "seed": 0}.items():
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"{p}.{name}: expected an integer, got {value!r}")
            require(value >= low, f"{p}.{name}: {value} must be >= {low}")
        require(self.key_dim % 2 == 0, f"{p}.key_dim: {self.key_dim} must be even (two halves)")
        require(self.topk <= self.n_keys,
                f"{p}.topk: {self.topk} exceeds n_keys={self.n_keys} (sub-keys per half)")
        require("topk_model" not in self.kernels or MODEL_TOPK <= self.n_keys,
                f"{p}.n_keys: {self.n_keys} is below the top-{MODEL_TOPK} of topk_model; "
                "raise it or leave topk_model out of kernels")
        require(self.adam_rows <= self.n_keys ** 2,
                f"{p}.adam_rows: {self.adam_rows} exceeds the table's n_keys^2 = "
                f"{self.n_keys ** 2} rows")


def _using(choice: str, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` run with kernel back-end `choice` ('numba': the kernels whatever the thread counts;
    'torch': the portable paths)."""
    def run() -> object:
        with kernels.use_kernels(choice):
            return fn()
    return run


def _same_op(fn: Callable[[], object]) -> dict[str, Callable[[], object]]:
    """One operation whose module dispatches: fused under numba, portable under torch."""
    return {"fused": _using("numba", fn), "portable": _using("torch", fn)}


def _topk(cfg: KernelsBenchConfig, g: torch.Generator, rows: int, k: int) -> dict:
    scores = torch.randn(rows, cfg.n_keys, generator=g)  # (rows, n)
    return {"fused": _using("numba", lambda: topk_module.topk(scores, k)),
            "portable": lambda: scores.topk(k, dim=-1)}


def _subkey_grad(cfg: KernelsBenchConfig, g: torch.Generator) -> dict:
    from extmem.memory.kernels.subkey_grad import subkey_grad

    h2, n, k, half = 2 * cfg.heads, cfg.n_keys, cfg.topk, cfg.key_dim // 2
    q = torch.randn(h2, cfg.tokens, half, generator=g)  # (2H, M, half)
    kept = torch.randint(0, n, (h2, cfg.tokens, k), generator=g)  # (2H, M, k)
    kept_grad = torch.randn(h2, cfg.tokens, k, generator=g)  # (2H, M, k)
    offsets = (torch.arange(h2) * n).view(h2, 1, 1)

    def portable() -> torch.Tensor:
        flat_bags = (kept + offsets).reshape(-1, k)
        return row_sparse_grad(q.reshape(-1, half), flat_bags, kept_grad.reshape(-1, k),
                               h2 * n).to_dense()
    return {"fused": _using("numba", lambda: subkey_grad(q, kept, kept_grad, n)),
            "portable": portable}


def _best_pairs(cfg: KernelsBenchConfig, g: torch.Generator) -> dict:
    rows, k = cfg.heads * cfg.tokens, cfg.topk
    top1 = torch.randn(rows, k, generator=g).sort(-1, descending=True).values  # (H*M, k)
    top2 = torch.randn(rows, k, generator=g).sort(-1, descending=True).values  # (H*M, k)
    grid = torch.arange(1, k + 1)
    first, second = (grid[:, None] * grid[None, :] <= k).nonzero().unbind(1)
    first, second = first.contiguous(), second.contiguous()
    return _same_op(lambda: best_pairs(top1, top2, first, second, k))


def _lazy_adam(cfg: KernelsBenchConfig, g: torch.Generator, table: torch.Tensor) -> dict:
    slots = table.shape[0]
    param = torch.nn.Parameter(table.clone())  # (N, d)
    touched = torch.randperm(slots, generator=g)[:cfg.adam_rows].sort().values  # (R,)
    grad = torch.sparse_coo_tensor(touched.unsqueeze(0),
                                   torch.randn(cfg.adam_rows, cfg.dim, generator=g),
                                   (slots, cfg.dim), is_coalesced=True, check_invariants=False)

    def step(opt: LazyAdam) -> Callable[[], None]:
        def run() -> None:
            param.grad = grad
            opt.step()
        return run
    return {"fused": _using("numba", step(LazyAdam([param]))),
            "portable": _using("torch", step(LazyAdam([param])))}


def _expert_gather_grad(cfg: KernelsBenchConfig, g: torch.Generator,
                        table: torch.Tensor) -> dict:
    weight = table.clone().requires_grad_()  # (N, d)
    reads = torch.randint(0, table.shape[0], (cfg.tokens, cfg.heads * cfg.topk), generator=g)
    upstream = torch.randn(*reads.shape, cfg.dim, generator=g)  # (T, H*k, d)
    return {"fused": lambda: torch.autograd.grad(dense_gather(weight, reads), weight, upstream),
            "portable": lambda: torch.autograd.grad(weight[reads], weight, upstream)}


def subjects(cfg: KernelsBenchConfig) -> dict[str, dict[str, Callable[[], object]]]:
    """kernel name -> {"fused": one call, "portable": one call}, for the kernels of `cfg`."""
    g = torch.Generator().manual_seed(cfg.seed)
    slots, reads = cfg.n_keys ** 2, cfg.heads * cfg.topk
    table = torch.randn(slots, cfg.dim, generator=g)  # (N, d)
    out: dict[str, dict[str, Callable[[], object]]] = {}
    for name in cfg.kernels:
        if name == "topk":
            out[name] = _topk(cfg, g, 2 * cfg.heads * cfg.tokens, cfg.topk)
        elif name == "topk_model":
            out[name] = _topk(cfg, g, cfg.heads * cfg.tokens, MODEL_TOPK)
        elif name == "read_weight_grad":
            bags = torch.randint(0, slots, (cfg.tokens, reads), generator=g)  # (T, H*k)
            grad_out = torch.randn(cfg.tokens, cfg.dim, generator=g)  # (T, d)
            out[name] = _same_op(lambda b=bags, go=grad_out: read_weight_grad(table, b, go))
        elif name == "subkey_grad":
            out[name] = _subkey_grad(cfg, g)
        elif name == "best_pairs":
            out[name] = _best_pairs(cfg, g)
        elif name == "expert_gather_grad":
            out[name] = _expert_gather_grad(cfg, g, table)
        elif name == "usage_record":
            idx = torch.randint(0, slots, (1, cfg.tokens, cfg.heads, cfg.topk), generator=g)
            w = torch.rand(1, cfg.tokens, cfg.heads, cfg.topk, generator=g)  # (B, T, H, k)
            counters = UsageCounters(slots)
            out[name] = _same_op(lambda i=idx, w=w, c=counters: c.record(i, w))
        else:
            out[name] = _lazy_adam(cfg, g, table)
    return out


def run_kernels_bench(cfg: KernelsBenchConfig, progress: bool = True) -> dict:
    """Fused and portable call of every kernel, in alternating rounds; JSON-serialisable."""
    started = time.perf_counter()
    env = environment()
    fused = kernels.numba_installed()
    log_progress(progress, f"bench kernels: {len(cfg.kernels)} kernels"
                 + ("" if fused else f" (portable only: numba is not installed; {INSTALL_HINT})"))
    pairs = subjects(cfg)
    timed: dict[str, Ops] = {"portable": {name: ops["portable"] for name, ops in pairs.items()}}
    timed["fused"] = {name: ops["fused"] for name, ops in pairs.items()
                      if fused or name in WITHOUT_NUMBA}
    warm_up(timed, cfg.warmup)
    timings = timed_rounds(timed, cfg.repeats)
    results = {}
    for name in cfg.kernels:
        portable = timings["portable"][name]
        entry: dict = {"portable_ms": portable, "fused_ms": None, "speedup": None}
        if name in timed["fused"]:
            entry["fused_ms"] = timings["fused"][name]
            entry["speedup"] = round(portable["median"] / entry["fused_ms"]["median"], 3)
        results[name] = entry
    finish_environment(env)
    return {"benchmark": "kernels", "config": asdict(cfg), "environment": env,
            "numba": fused, "kernels": results,
            "wall_s": round(time.perf_counter() - started, 2)}


# --------------------------------------------------------------------------- Markdown report

_WHAT = {
    "topk": lambda c: f"top-k, {2 * c['heads'] * c['tokens']:,} rows of {c['n_keys']:,}, "
                      f"k = {c['topk']} (vs `torch.topk`)",
    "topk_model": lambda c: f"top-k, {c['heads'] * c['tokens']:,} rows of {c['n_keys']:,}, "
                            f"k = {MODEL_TOPK} (vs `torch.topk`)",
    "read_weight_grad": lambda c: f"per-read weight gradient, {c['tokens']:,} x "
                                  f"{c['heads'] * c['topk']} reads of {c['n_keys'] ** 2:,} x "
                                  f"{c['dim']} (vs ATen)",
    "subkey_grad": lambda c: f"sub-key gradient, {2 * c['heads']} x {c['tokens']:,} x "
                             f"{c['topk']} kept scores (vs sort + bag)",
    "best_pairs": lambda c: f"best {c['topk']} candidate pairs, {c['heads'] * c['tokens']:,} "
                            "rows (vs index_select + topk)",
    "usage_record": lambda c: f"usage counters, {c['tokens'] * c['heads'] * c['topk']:,} reads "
                              f"of {c['n_keys'] ** 2:,} slots (vs index ops)",
    "lazy_adam": lambda c: f"lazy Adam, {c['adam_rows']:,} touched rows of "
                           f"{c['n_keys'] ** 2:,} x {c['dim']} (vs unfused torch)",
    "expert_gather_grad": lambda c: f"dense gradient of {c['tokens']:,} x "
                                    f"{c['heads'] * c['topk']} rows gathered from "
                                    f"{c['n_keys'] ** 2:,} x {c['dim']}: index_add_ (vs "
                                    "autograd's index_put_)",
}


def _ms(summary: dict | None) -> str:
    return "-" if summary is None else f"{summary['median']:.1f} / {summary['min']:.1f}"


def render_markdown(result: dict, command: str) -> str:
    """The `## kernels` section for one result of `run_kernels_bench`."""
    cfg = result["config"]
    lines = [
        "## kernels", "",
        "Each numba kernel of the memory step against the torch path it replaces (wrappers "
        "included, e.g. the top-k's value gather), in alternating rounds: wall-clock ms, "
        f"median / min over {cfg['repeats']} rounds after {cfg['warmup']} warmup; speed-up = "
        "portable median / fused median."
        + ("" if result["numba"] else f" numba was not installed ({INSTALL_HINT}): portable "
                                       "paths only."), "",
        *command_lines(command),
        environment_line(result),
        "", "| kernel | fused ms | portable ms | speed-up |", "|---|---|---|---|",
    ]
    for name, entry in result["kernels"].items():
        speedup = "-" if entry["speedup"] is None else f"{entry['speedup']:.2f}"
        lines.append(f"| {_WHAT[name](cfg)} | {_ms(entry['fused_ms'])} | "
                     f"{_ms(entry['portable_ms'])} | {speedup} |")
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    return "\n".join(
        f"{name}: portable {e['portable_ms']['median']:.2f} ms"
        + ("" if e["speedup"] is None else
           f", fused {e['fused_ms']['median']:.2f} ms (x{e['speedup']:.2f})")
        for name, e in result["kernels"].items())
