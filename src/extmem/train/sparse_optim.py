"""Optimizers that update only the table rows read in a step, and clipping for sparse grads.

See docs/performance.md ("Row-sparse training of value tables"). Row-sparse table gradients
come from `extmem.memory.sparse` (sparse COO, one row per distinct row read). Here:

- `LazyAdam`: lazy Adam (torch.optim.SparseAdam / TF LazyAdam semantics): the moments and the
  value of a row change only in steps that read it; bias correction uses the parameter's
  global step count (steps in which it had any gradient), as SparseAdam does. Weight decay is
  *decoupled* (AdamW-style, p <- p (1 - lr wd)) and applied to the touched rows only.
- `RowwiseAdagrad`: row-wise Adagrad (DLRM / FBGEMM's "rowwise_adagrad"): one accumulator
  per row, s_r += mean_j g_rj^2, p_r -= lr g_r / (sqrt(s_r) + eps); decoupled weight decay on
  touched rows. O(N) state instead of Adam's O(N d) x 2.
A dense gradient given to either optimizer counts every row as touched.
`OptimizerSet` drives several optimizers (one per kind) as one, with the merged `param_groups`
and `state` that the LR schedule and checkpoints use. `clip_grad_norm` clips dense and sparse
gradients together (the foreach path of torch's clip_grad_norm_ fails on sparse grads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping

import torch
import torch.distributed
from torch.distributed.tensor import DTensor

from extmem.train import fused_rows


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """A coalesced view of a sparse gradient, without a sort when it already is one.

    Autograd drops the coalesced flag of the gradient that `extmem.memory.sparse` returns
    (AccumulateGrad rebuilds the tensor); strictly increasing row indices restore it in O(U).
    Sums of several sparse gradients (a table read by several layers) are coalesced properly.
    """
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if grad._indices().shape[0] == 1 and bool((rows[1:] > rows[:-1]).all()):
        return grad._coalesced_(True)
    return grad.coalesce()


def touched_rows(param: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (U,), row gradients (U, d...)) of a sparse or dense gradient of `param`."""
    if grad.is_sparse:
        grad = coalesced(grad)
        return grad.indices()[0], grad.values()
    return torch.arange(param.shape[0], device=param.device), grad


class _RowScratch:
    """Reusable row buffers for the gathered rows of one parameter.

    A fresh (U, d) temporary per step costs page faults that dominate a gather on CPU (about
    4x the gather itself, measured in docs/performance.md); these buffers are allocated once
    (grown by 25 % when more rows are touched) and are not optimizer state (not checkpointed).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}

    def get(self, param: torch.Tensor, name: str, rows: int) -> torch.Tensor:
        key = (id(param), name)
        buf = self._buffers.get(key)
        width = param.shape[1:]
        if buf is None or buf.shape[0] < rows or buf.device != param.device:
            cap = max(rows, int(1.25 * (0 if buf is None else buf.shape[0])))
            buf = torch.empty(cap, *width, dtype=torch.float32, device=param.device)
            self._buffers[key] = buf
        return buf[:rows]


def _stepped_state(state: dict, init: Callable[[], dict]) -> dict:
    """A parameter's optimizer state: created by `init()` (plus a step counter) on its first
    step, then its step counter advanced by one."""
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32)
        state.update(init())
    state["step"] += 1
    return state


def _gather(src: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """src[rows] into `out` (float32)."""
    if src.dtype == out.dtype:
        return torch.index_select(src, 0, rows, out=out)
    return out.copy_(src.index_select(0, rows))


class LazyAdam(torch.optim.Optimizer):
    """Adam that updates only the rows present in a (sparse) gradient; decoupled weight decay."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})
        self._scratch = _RowScratch()
        self.fused = True  # CPU fp32 + numba: extmem.train.fused_rows (same update)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = _stepped_state(self.state[p], lambda p=p: {
                    "exp_avg": torch.zeros_like(p, dtype=torch.float32),
                    "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32)})
                step = float(state["step"])  # CPU scalar: no device sync
                rows, g = touched_rows(p, p.grad)  # (U,), (U, d)
                if self.fused and fused_rows.available(p):  # one in-place pass per row
                    fused_rows.lazy_adam_rows(p, state["exp_avg"], state["exp_avg_sq"], rows, g,
                                              lr, beta1, beta2, eps, wd, step)
                    continue
                g = g.float()
                n = rows.shape[0]
                m = _gather(state["exp_avg"], rows, self._scratch.get(p, "m", n))  # (U, d)
                m.lerp_(g, 1 - beta1)
                state["exp_avg"].index_copy_(0, rows, m)
                v = _gather(state["exp_avg_sq"], rows, self._scratch.get(p, "v", n))
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                denom = v.div_(1 - beta2 ** step).sqrt_().add_(eps)  # v's buffer reused
                value = _gather(p, rows, self._scratch.get(p, "p", n))
                if wd:
                    value.mul_(1 - lr * wd)
                value.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))
                p.index_copy_(0, rows, value.to(p.dtype))
        return loss


class RowwiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row (the mean of the row's squared gradient)."""

    def __init__(self, params: Iterable, lr: float = 1e-2, eps: float = 1e-10,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})
        self._scratch = _RowScratch()

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = _stepped_state(self.state[p], lambda p=p: {
                    "sum": torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)})
                rows, g = touched_rows(p, p.grad)  # (U,), (U, d...)
                g = g.float().flatten(1)  # (U, D)
                acc = state["sum"].index_select(0, rows).add_(g.square().mean(1))  # (U,)
                state["sum"].index_copy_(0, rows, acc)
                value = _gather(p, rows, self._scratch.get(p, "p", rows.shape[0])).flatten(1)
                if wd:
                    value.mul_(1 - lr * wd)
                value.addcdiv_(g, acc.sqrt_().add_(eps).unsqueeze(1), value=-lr)
                p.index_copy_(0, rows, value.view(-1, *p.shape[1:]).to(p.dtype))
        return loss


class _MergedState(MutableMapping):
    """param -> state dict, routed to the optimizer that owns the parameter."""

    def __init__(self, owners: dict[torch.Tensor, torch.optim.Optimizer]) -> None:
        self._owners = owners

    def _owner(self, param: torch.Tensor) -> torch.optim.Optimizer:
        try:
            return self._owners[param]
        except KeyError:
            raise KeyError("parameter is in no optimizer of this set") from None

    def __getitem__(self, param):
        return self._owner(param).state[param]  # defaultdict: creates an empty state

    def __setitem__(self, param, value) -> None:
        self._owner(param).state[param] = value

    def __delitem__(self, param) -> None:
        del self._owner(param).state[param]

    def __iter__(self) -> Iterator:
        for opt in dict.fromkeys(self._owners.values()):
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in dict.fromkeys(self._owners.values()))

    def get(self, param, default=None):
        opt = self._owners.get(param)
        return default if opt is None or param not in opt.state else opt.state[param]


class OptimizerSet:
    """Several optimizers stepped as one; `param_groups` and `state` span all of them."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers  # kind -> optimizer
        owners = {p: opt for opt in optimizers.values()
                  for group in opt.param_groups for p in group["params"]}
        self.state = _MergedState(owners)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def kinds(self) -> dict[str, str]:
        """Param-group name -> optimizer kind (recorded in checkpoints)."""
        return {g["name"]: kind for kind, opt in self.optimizers.items()
                for g in opt.param_groups}

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)


@torch.no_grad()
def _local_grad(p: torch.Tensor) -> torch.Tensor:
    """The gradient values this process holds: a sparse gradient's values, a DTensor's
    local shard (FSDP2), or the dense gradient (views: scaling them scales the gradient)."""
    if isinstance(p.grad, DTensor):
        return p.grad.to_local()
    return p.grad.values() if p.grad.is_sparse else p.grad


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float,
                   sharded: set[int] | frozenset[int] = frozenset()) -> torch.Tensor:
    """Scale all gradients (dense and sparse) so their global L2 norm is <= max_norm.

    Returns the norm before clipping, as a tensor (no host sync on one process). Sparse
    gradients are coalesced first (duplicate rows summed), so their norm is the true
    gradient's norm. `sharded` holds the ids of parameters that are one rank's shard of a
    table (torchrun): their squared norms are summed over ranks (the rest is replicated), as
    are those of FSDP2's sharded parameters (DTensor gradients, each rank its local shard).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    norms, shard_norms = [], []
    for p in params:
        if p.grad.is_sparse:
            p.grad = coalesced(p.grad)
        g = _local_grad(p)
        norm = torch.linalg.vector_norm(g, dtype=torch.float32)
        (shard_norms if id(p) in sharded or isinstance(p.grad, DTensor) else norms).append(norm)
    device = _local_grad(params[0]).device
    total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms])) if norms \
        else torch.zeros((), device=device)
    if (sharded or shard_norms) and torch.distributed.is_initialized():
        shard_sq = torch.stack([n.to(device) for n in shard_norms]).square().sum() \
            if shard_norms else torch.zeros((), device=device)
        torch.distributed.all_reduce(shard_sq)
        total = (total.square() + shard_sq).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if device.type == "cpu" and float(coef) >= 1.0:
        return total  # nothing to clip (reading coef syncs nothing on the CPU): skip the pass
    for p in params:
        g = _local_grad(p)  # coalesced: values() is an alias
        g.mul_(coef.to(g.device, g.dtype))
    return total
