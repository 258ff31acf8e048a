"""Fast paths against their straightforward versions (docs/performance.md).

Row-sparse bag vs F.embedding_bag; batched/pruned product-key search vs the per-half search;
lazy Adam and row-wise Adagrad vs per-row references; sparse-aware clipping vs
clip_grad_norm_ on the equivalent dense gradients. CPU, tiny shapes, no timing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extmem.errors import ConfigError
from extmem.memory import Memory, MemoryConfig, ProductKeyConfig, kernels
from extmem.memory.product_keys import ProductKeyLookup
from extmem.memory.sparse import sparse_bag
from extmem.run.config import ParamGroupConfig, TrainConfig
from extmem.train.optim import build_optimizer
from extmem.train.sparse_optim import LazyAdam, RowwiseAdagrad, clip_grad_norm, coalesced


def _bag_inputs(n_rows: int = 20, dim: int = 6, bags: int = 9, reads: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_rows, dim, generator=g)
    idx = torch.randint(0, n_rows // 2, (bags, reads), generator=g)  # duplicates, unread rows
    w = torch.rand(bags, reads, generator=g)
    return weight, idx, w


def test_sparse_bag_matches_embedding_bag_outputs_and_gradients() -> None:
    weight, idx, w = _bag_inputs()
    upstream = torch.randn(idx.shape[0], weight.shape[1])
    wa, pa = weight.clone().requires_grad_(), w.clone().requires_grad_()
    wb, pb = weight.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.embedding_bag(idx, wa, mode="sum", per_sample_weights=pa)
    out = sparse_bag(wb, idx, pb)
    assert torch.allclose(out, ref, atol=1e-6)
    (ref * upstream).sum().backward()
    (out * upstream).sum().backward()
    assert wb.grad.is_sparse and coalesced(wb.grad).is_coalesced()
    touched = torch.unique(idx)
    assert torch.equal(wb.grad.indices()[0], touched)  # exactly the rows read, sorted
    assert torch.allclose(wb.grad.to_dense(), wa.grad, atol=1e-6)
    assert torch.allclose(pb.grad, pa.grad, atol=1e-6)


def test_memory_sparse_updates_same_forward_and_dense_equivalent_gradient() -> None:
    pk = ProductKeyConfig(n_keys=6, heads=2, topk=3, key_dim=8)
    torch.manual_seed(0)
    dense = Memory(MemoryConfig(product_keys=pk), 12)
    sparse = Memory(MemoryConfig(product_keys=pk, sparse_updates=True), 12)
    sparse.load_state_dict(dense.state_dict())
    h = torch.randn(2, 5, 12)
    a, b = dense(h), sparse(h)
    assert torch.allclose(a, b, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    assert sparse.table.weight.grad.is_sparse
    assert torch.allclose(sparse.table.weight.grad.to_dense(), dense.table.weight.grad, atol=1e-5)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        if "table" not in name:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_bf16_table_reads_close_to_fp32_with_fp32_output() -> None:
    pk = ProductKeyConfig(n_keys=8, heads=2, topk=4, key_dim=8)
    torch.manual_seed(0)
    mem = Memory(MemoryConfig(product_keys=pk, table_dtype="bfloat16"), 16)
    assert mem.table.weight.dtype == torch.bfloat16
    idx = torch.randint(0, 64, (3, 4, 2, 4))
    w = torch.rand(3, 4, 2, 4)
    out = mem.table.read(idx, w)
    assert out.dtype == torch.float32
    ref = torch.einsum("bthk,bthkd->btd", w, mem.table.weight.float()[idx])  # fp32 on bf16 rows
    assert torch.allclose(out, ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("seed, tokens", [(0, 7), (1, 7), (2, 60)])  # 60: fused top-k rows
def test_batched_pruned_search_matches_reference(seed: int, tokens: int) -> None:
    torch.manual_seed(seed)
    lookup = ProductKeyLookup(ProductKeyConfig(n_keys=16, heads=3, topk=6, key_dim=10), 12)
    q = torch.randn(2, tokens, 3, 10, requires_grad=True)
    scores, slots = lookup.search(q)
    ref_scores, ref_slots = lookup.search_reference(q)
    assert torch.equal(slots, ref_slots)
    assert torch.allclose(scores, ref_scores, atol=1e-6)
    grads = torch.autograd.grad(scores.sin().sum(), [q, lookup.sub_keys])
    ref_grads = torch.autograd.grad(ref_scores.sin().sum(), [q, lookup.sub_keys])
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def _lazy_adam_reference(p, m, v, rows, g, step, lr, b1, b2, eps, wd):
    """Per-row AdamW (decoupled decay, eps outside the bias-corrected sqrt) on touched rows."""
    p, m, v = p.clone(), m.clone(), v.clone()
    for r, gr in zip(rows.tolist(), g, strict=True):
        m[r] = b1 * m[r] + (1 - b1) * gr
        v[r] = b2 * v[r] + (1 - b2) * gr * gr
        m_hat, v_hat = m[r] / (1 - b1 ** step), v[r] / (1 - b2 ** step)
        p[r] = p[r] * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    return p, m, v


def _sparse_grad(n_rows: int, rows: list[int], dim: int, seed: int) -> torch.Tensor:
    g = torch.randn(len(rows), dim, generator=torch.Generator().manual_seed(seed))
    return torch.sparse_coo_tensor(torch.tensor([rows]), g, (n_rows, dim),
                                   check_invariants=True).coalesce()


def test_lazy_adam_touched_rows_match_reference_untouched_rows_unchanged() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(10, 4))
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.95, 1e-8, 0.1
    opt = LazyAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    ref_p, m, v = p.detach().clone(), torch.zeros(10, 4), torch.zeros(10, 4)
    for step, rows in enumerate([[1, 3, 7], [3, 4], [0, 7, 9]], start=1):
        before = p.detach().clone()
        p.grad = _sparse_grad(10, rows, 4, step)
        opt.step()
        ref_p, m, v = _lazy_adam_reference(ref_p, m, v, torch.tensor(rows), p.grad.values(),
                                           step, lr, b1, b2, eps, wd)
        assert torch.allclose(p.detach(), ref_p, atol=1e-6)
        untouched = [r for r in range(10) if r not in rows]
        assert torch.equal(p.detach()[untouched], before[untouched])  # bitwise unchanged
    assert torch.allclose(opt.state[p]["exp_avg"], m) and torch.allclose(opt.state[p]["exp_avg_sq"], v)


def test_lazy_adam_equals_torch_sparse_adam_without_decay() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(12, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours = LazyAdam([a], lr=0.05, betas=(0.9, 0.99), eps=1e-12)
    theirs = torch.optim.SparseAdam([b], lr=0.05, betas=(0.9, 0.99), eps=1e-12)
    for step, rows in enumerate([[0, 5], [5, 6, 11], [2]]):
        a.grad = _sparse_grad(12, rows, 3, step)
        b.grad = a.grad.clone()
        ours.step()
        theirs.step()
        assert torch.allclose(a, b, atol=1e-6)


def test_rowwise_adagrad_matches_reference() -> None:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 5))
    lr, eps, wd = 0.1, 1e-10, 0.01
    opt = RowwiseAdagrad([p], lr=lr, eps=eps, weight_decay=wd)
    ref, acc = p.detach().clone(), torch.zeros(8)
    for step, rows in enumerate([[1, 2], [2, 7]]):
        p.grad = _sparse_grad(8, rows, 5, step)
        before = p.detach().clone()
        opt.step()
        for r, g in zip(rows, p.grad.values(), strict=True):
            acc[r] += g.square().mean()
            ref[r] = ref[r] * (1 - lr * wd) - lr * g / (acc[r].sqrt() + eps)
        assert torch.allclose(p.detach(), ref, atol=1e-6)
        untouched = [r for r in range(8) if r not in rows]
        assert torch.equal(p.detach()[untouched], before[untouched])


def test_clip_grad_norm_with_sparse_matches_dense_clipping() -> None:
    torch.manual_seed(0)
    dense_a, dense_b = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(6, 2))
    table = torch.nn.Parameter(torch.randn(6, 2))
    dense_a.grad = torch.randn(3, 4) * 5
    g = torch.sparse_coo_tensor(torch.tensor([[4, 1, 4]]), torch.randn(3, 2) * 5, (6, 2))  # dup
    table.grad = g
    dense_b.grad = g.to_dense()
    ref_a = dense_a.grad.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.zeros(3, 4))], 1.0)
    del ref_norm
    pa, pb = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(6, 2))
    pa.grad, pb.grad = ref_a.clone(), dense_b.grad.clone()
    expected = torch.nn.utils.clip_grad_norm_([pa, pb], 1.0)
    total = clip_grad_norm([dense_a, table], 1.0)
    assert torch.allclose(total, expected)
    assert torch.allclose(dense_a.grad, pa.grad, atol=1e-6)
    assert torch.allclose(table.grad.to_dense(), pb.grad, atol=1e-6)


def test_clip_grad_norm_below_the_limit_leaves_gradients_unchanged() -> None:
    dense = torch.nn.Parameter(torch.zeros(3, 4))
    table = torch.nn.Parameter(torch.zeros(6, 2))
    dense.grad = torch.full((3, 4), 0.01)
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.full((2, 2), 0.01),
                                         (6, 2)).coalesce()
    before = dense.grad.clone(), table.grad.to_dense().clone()
    total = clip_grad_norm([dense, table], 1.0)
    assert float(total) == pytest.approx((16 * 0.01**2) ** 0.5, rel=1e-5)
    assert torch.equal(dense.grad, before[0]) and torch.equal(table.grad.to_dense(), before[1])


def _sparse_model() -> Memory:
    pk = ProductKeyConfig(n_keys=4, heads=1, topk=2, key_dim=4)
    return Memory(MemoryConfig(product_keys=pk, sparse_updates=True), 8)


def test_adamw_group_with_sparse_table_is_a_config_error() -> None:
    model = torch.nn.ModuleDict({"memories": torch.nn.ModuleList([_sparse_model()])})
    groups = [ParamGroupConfig("memory_values", ["memories.*.table.weight"])]
    with pytest.raises(ConfigError, match=r"param_groups\[memory_values\].optimizer"):
        build_optimizer(model, TrainConfig(param_groups=groups))
    groups = [ParamGroupConfig("memory_values", ["memories.*.table.weight"],
                               optimizer="rowwise_adagrad")]
    optimizer, table = build_optimizer(model, TrainConfig(param_groups=groups))
    assert optimizer.kinds() == {"memory_values": "rowwise_adagrad", "default": "adamw"}
    assert {row["optimizer"] for row in table} == {"rowwise_adagrad", "adamw"}


def test_bad_config_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"param_groups\[x\].optimizer"):
        ParamGroupConfig("x", ["*"], optimizer="sgd")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="memory.table_dtype"):
        MemoryConfig(table_dtype="float16")  # type: ignore[arg-type]
    # expert rows train row-sparse too (memory/experts.py, tests/memory/test_experts.py)
    assert MemoryConfig(readout="experts", sparse_updates=True).sparse_updates


def test_fused_topk_matches_torch_topk_values_indices_and_grad() -> None:
    from extmem.memory import topk as topk_module

    if not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused top-k is off")
    torch.manual_seed(0)
    x = torch.randn(3, 200, 50, requires_grad=True)  # 600 rows >= MIN_ROWS: the fused kernel
    with kernels.use_kernels("numba"):  # whatever the threads
        assert kernels.active_backend(x) == "numba"
        values, idx = topk_module.topk(x, 7)
    ref_values, ref_idx = x.topk(7, dim=-1)
    assert torch.equal(idx, ref_idx) and torch.equal(values, ref_values)
    (g,) = torch.autograd.grad(values.sin().sum(), x)
    (ref_g,) = torch.autograd.grad(ref_values.sin().sum(), x)
    assert torch.equal(g, ref_g)


def test_fused_lazy_adam_matches_the_torch_path() -> None:
    from extmem.train import fused_rows

    if not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused row update is off")
    torch.manual_seed(0)
    fused = torch.nn.Parameter(torch.randn(300, 16))
    plain = torch.nn.Parameter(fused.detach().clone())
    opts = [LazyAdam([p], lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
            for p in (fused, plain)]
    with kernels.use_kernels("numba"):  # whatever the threads
        assert fused_rows.available(fused)
    with kernels.use_kernels("torch"):
        assert not fused_rows.available(plain)
    for step in range(4):
        rows = torch.randperm(300, generator=torch.Generator().manual_seed(step))[:120].sort()[0]
        grad = _sparse_grad(300, rows.tolist(), 16, step)
        before = fused.detach().clone()
        for p, opt, choice in zip((fused, plain), opts, ("numba", "torch"), strict=True):
            p.grad = grad.clone()
            with kernels.use_kernels(choice):
                opt.step()
        torch.testing.assert_close(fused.detach(), plain.detach(), rtol=1e-5, atol=1e-6)
        untouched = torch.ones(300, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(fused.detach()[untouched], before[untouched])
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opts[0].state[fused][key], opts[1].state[plain][key])


def test_fused_read_weight_grad_matches_aten() -> None:
    from extmem.memory.read_weight_grad import read_weight_grad

    if not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused weight gradient is off")
    weight, idx, _ = _bag_inputs(n_rows=50, dim=33, bags=11, reads=7)
    grad_out = torch.randn(11, 33, generator=torch.Generator().manual_seed(3))
    with kernels.use_kernels("numba"):  # whatever the threads
        assert kernels.active_backend(weight) == "numba"
        fused = read_weight_grad(weight, idx, grad_out)
        aten = read_weight_grad(weight, idx, grad_out, fused=False)
    with kernels.use_kernels("torch"):
        assert torch.equal(read_weight_grad(weight, idx, grad_out), aten)
    by_hand = torch.einsum("brd,bd->br", weight[idx], grad_out)  # (bags, reads)
    assert fused.shape == (11, 7)
    torch.testing.assert_close(fused, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aten, by_hand, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_score_topk_subkey_gradient_fused_and_portable_match_autograd(fused) -> None:
    from extmem.memory.score_topk import score_topk

    if fused and not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused sub-key gradient is off")
    with kernels.use_kernels("numba" if fused else "torch"):
        g = torch.Generator().manual_seed(5)
        q = torch.randn(4, 300, 6, generator=g)  # (B, M, half)
        keys = torch.randn(4, 40, 6, generator=g)  # (B, n, half)
        upstream = torch.randn(4, 300, 5, generator=g)  # (B, M, k)
        qa, ka = q.clone().requires_grad_(), keys.clone().requires_grad_()
        qb, kb = q.clone().requires_grad_(), keys.clone().requires_grad_()
        values, idx = score_topk(qa, ka, 5)
        ref_values, ref_idx = torch.bmm(qb, kb.transpose(1, 2)).topk(5, dim=-1)
        assert torch.equal(idx, ref_idx)
        (values * upstream).sum().backward()
        (ref_values * upstream).sum().backward()
        assert kernels.active_backend(q, keys) == ("numba" if fused else "torch")
        torch.testing.assert_close(ka.grad, kb.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(qa.grad, qb.grad, rtol=1e-5, atol=1e-5)


def test_fused_best_pairs_match_the_portable_candidate_topk() -> None:
    from extmem.memory.pair_topk import best_pairs

    if not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused pair top-k is off")
    g = torch.Generator().manual_seed(7)
    k = 8
    top1 = torch.randn(2, 300, k, generator=g).sort(-1, descending=True).values  # (H, M, k)
    top2 = torch.randn(2, 300, k, generator=g).sort(-1, descending=True).values
    grid = torch.arange(1, k + 1)
    first, second = (grid[:, None] * grid[None, :] <= k).nonzero().unbind(1)  # (C,) each
    first, second = first.contiguous(), second.contiguous()
    with kernels.use_kernels("numba"):
        fused = best_pairs(top1, top2, first, second, k)
    with kernels.use_kernels("torch"):
        portable = best_pairs(top1, top2, first, second, k)
    assert fused[0].shape == (2, 300, k)
    assert torch.equal(fused[0], portable[0]) and torch.equal(fused[1], portable[1])
    scores = top1.gather(-1, fused[0]) + top2.gather(-1, fused[1])  # (H, M, k)
    assert bool((scores[..., :-1] >= scores[..., 1:]).all())  # best first
    every = (top1[..., :, None] + top2[..., None, :]).flatten(-2)  # all k*k pairs
    torch.testing.assert_close(scores, every.topk(k, dim=-1).values)  # the exact best k


@pytest.mark.parametrize("kind", ["ascending", "descending", "ties", "constant"])
def test_fused_topk_floor_prepass_keeps_every_winner(kind: str) -> None:
    from extmem.memory import topk as topk_module

    if not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused top-k is off")
    g = torch.Generator().manual_seed(11)
    x = {"ascending": torch.arange(300 * 64.0).view(300, 64),
         "descending": -torch.arange(300 * 64.0).view(300, 64),
         "ties": torch.randint(0, 4, (300, 64), generator=g).float(),
         "constant": torch.ones(300, 64)}[kind]
    with kernels.use_kernels("numba"):
        values, idx = topk_module.topk(x, 9)
    assert torch.equal(values, x.topk(9, dim=-1).values)  # the same best values, best first
    assert torch.equal(x.gather(-1, idx), values)
    assert bool((idx.sort(-1).values.diff(dim=-1) > 0).all())  # distinct positions


def test_fused_usage_record_matches_the_index_ops(monkeypatch) -> None:
    from extmem.memory import stats

    if not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused usage record is off")
    monkeypatch.setattr(stats, "FUSED_MIN_READS", 1)
    g = torch.Generator().manual_seed(13)
    counters = {fused: stats.UsageCounters(50) for fused in (True, False)}
    for step in range(3):
        indices = torch.randint(0, 30, (2, 5, 2, 3), generator=g)  # (B, T, H, k), slots 30+ unread
        weights = torch.rand(2, 5, 2, 3, generator=g, requires_grad=True)
        for fused, counter in counters.items():
            counter.step.fill_(step)
            with kernels.use_kernels("numba" if fused else "torch"):
                counter.record(indices, weights)
    fused, plain = counters[True], counters[False]
    assert torch.equal(fused.counts, plain.counts) and torch.equal(fused.last_step, plain.last_step)
    torch.testing.assert_close(fused.weight, plain.weight)
    assert int(fused.counts.sum()) == 3 * 60 and bool((fused.last_step[30:] == -1).all())


def test_fused_topk_kernel_fuzzed_against_torch_topk() -> None:
    from extmem.memory.kernels import topk as topk_kernel

    if not kernels.numba_installed():
        pytest.skip("numba is not installed (the `fast` extra): the fused top-k is off")
    kernel = topk_kernel.kernel()
    g = torch.Generator().manual_seed(17)
    for trial in range(60):
        n = int(torch.randint(1, 300, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        rows = int(torch.randint(1, 100, (1,), generator=g))
        x = [torch.randn(rows, n, generator=g),
             torch.randint(0, 5, (rows, n), generator=g).float(),  # ties
             torch.randn(rows, n, generator=g).sort(-1).values][trial % 3]  # ascending
        idx = torch.zeros(rows, k, dtype=torch.int64)
        values = torch.empty(rows, k)
        kernel(x.numpy(), k, idx.numpy(), values.numpy())
        assert torch.equal(values, x.topk(k, dim=-1).values), (n, k, rows, trial % 3)
        assert torch.equal(x.gather(-1, idx), values)
        assert bool((idx.sort(-1).values.diff(dim=-1) > 0).all())  # distinct positions
