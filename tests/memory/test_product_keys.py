import pytest
import torch

from extmem.memory import MemoryConfig, ProductKeyConfig, ProductKeyLookup
from extmem.memory.product_keys import MaskedBatchNorm


def brute_force_topk(lookup: ProductKeyLookup, q: torch.Tensor):
    """Score every one of the n^2 slots explicitly: key(i1, i2) = [k1[i1]; k2[i2]]."""
    cfg = lookup.cfg
    n, half = cfg.n_keys, cfg.key_dim // 2
    keys1, keys2 = lookup.sub_keys[:, 0], lookup.sub_keys[:, 1]  # (H, n, half)
    full = torch.cat([keys1[:, :, None, :].expand(-1, n, n, half),
                      keys2[:, None, :, :].expand(-1, n, n, half)], dim=-1)  # (H, n, n, key_dim)
    full = full.reshape(cfg.heads, n * n, cfg.key_dim)
    scores = torch.einsum("bhd,hnd->bhn", q, full)  # (B, H, N)
    return scores.topk(cfg.topk, dim=-1)


@pytest.mark.parametrize("n_keys,topk,heads", [(8, 4, 2), (16, 16, 1), (5, 1, 3)])
def test_search_equals_brute_force(n_keys, topk, heads):
    torch.manual_seed(0)
    cfg = ProductKeyConfig(n_keys=n_keys, topk=topk, heads=heads, key_dim=12)
    lookup = ProductKeyLookup(cfg, d_model=20)
    q = torch.randn(7, heads, 12, dtype=torch.float64)
    lookup.double()
    scores, indices = lookup.search(q)
    ref_scores, ref_indices = brute_force_topk(lookup, q)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(indices, ref_indices)
    assert indices.max() < n_keys * n_keys and indices.min() >= 0


def test_forward_weights_are_softmax_of_exact_topk():
    torch.manual_seed(1)
    cfg = ProductKeyConfig(n_keys=8, topk=4, heads=2, key_dim=16)
    lookup = ProductKeyLookup(cfg, d_model=24).double()
    h = torch.randn(2, 5, 24, dtype=torch.float64)
    indices, weights = lookup(h)
    assert indices.shape == weights.shape == (2, 5, 2, 4)
    q = lookup.queries(h, None).reshape(10, 2, 16)
    ref_scores, ref_indices = brute_force_topk(lookup, q)
    assert torch.equal(indices.reshape(10, 2, 4), ref_indices)
    torch.testing.assert_close(weights.reshape(10, 2, 4), ref_scores.softmax(-1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5, 2, dtype=torch.float64))


def test_masked_batchnorm_ignores_padding():
    torch.manual_seed(0)
    norm = MaskedBatchNorm(6)
    x = torch.randn(2, 5, 6)
    padded = torch.zeros(2, 5, dtype=torch.bool)
    padded[1, 3:] = True
    y1 = norm(x, ~padded)
    x2 = x.clone()
    x2[padded] = 1000.0  # garbage at padded positions must not move the statistics
    y2 = norm(x2, ~padded)
    torch.testing.assert_close(y1[~padded], y2[~padded])
    valid = y1[~padded]
    torch.testing.assert_close(valid.mean(0), torch.zeros(6), atol=1e-5, rtol=0)


def test_batchnorm_eval_uses_running_stats():
    norm = MaskedBatchNorm(3, momentum=1.0)
    x = torch.randn(4, 2, 3) * 3 + 1
    norm(x, None)
    norm.eval()
    flat = x.reshape(-1, 3)
    torch.testing.assert_close(norm.running_mean, flat.mean(0))
    torch.testing.assert_close(norm.running_var, flat.var(0, unbiased=True))


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm", "none"])
def test_query_norm_options_run_backward(norm):
    from extmem.memory import Memory
    cfg = MemoryConfig(product_keys=ProductKeyConfig(n_keys=4, topk=2, heads=1, key_dim=8,
                                                     query_norm=norm))
    memory = Memory(cfg, d_model=8)
    out = memory(torch.randn(2, 3, 8, requires_grad=True))
    out.square().sum().backward()
    assert memory.lookup.sub_keys.grad is not None
    assert memory.table.weight.grad is not None


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(n_keys=4, topk=5), "topk: 5 is impossible"),
    (dict(key_dim=7), "key_dim: 7 must be even"),
    (dict(heads=0), "heads: 0"),
    (dict(query_dropout=1.5), "query_dropout"),
])
def test_config_errors_name_the_field(kwargs, fragment):
    from extmem.errors import ConfigError
    with pytest.raises(ConfigError, match=fragment):
        ProductKeyConfig(**kwargs)


@pytest.mark.parametrize("k", [1, 2, 4, 7, 16, 32, 100])
def test_candidate_positions_equal_the_pruned_grid(k):
    """The Python-int candidate list (no `nonzero`, so torch.compile traces it) is the grid
    (i+1)(j+1) <= k in row-major order, as `nonzero` gives it; under compile the search uses it
    without the eager cache."""
    from extmem.memory.product_keys import candidate_positions
    grid = torch.arange(1, k + 1)
    keep = (grid.unsqueeze(1) * grid.unsqueeze(0) <= k).nonzero()  # (C, 2)
    first, second = candidate_positions(k)
    assert first == keep[:, 0].tolist() and second == keep[:, 1].tolist()
    lookup = ProductKeyLookup(ProductKeyConfig(n_keys=max(k, 2), heads=1, topk=k, key_dim=4), 8)
    q = torch.randn(3, 5, 1, 4)
    eager = lookup.search(q)
    compiled = torch.compile(lookup.search, backend="eager", fullgraph=True)(q)
    torch.testing.assert_close(compiled, eager)


def test_dense_rows_grad_equals_the_sparse_gradient():
    """The static-shape sub-key gradient used while compiling equals row_sparse_grad."""
    from extmem.memory.sparse import dense_rows_grad, row_sparse_grad
    g = torch.Generator().manual_seed(0)
    grad_out, weights = torch.randn(12, 6, generator=g), torch.randn(12, 4, generator=g)
    bags = torch.randint(0, 9, (12, 4), generator=g)  # repeated rows, and rows never read
    torch.testing.assert_close(dense_rows_grad(grad_out, bags, weights, 9),
                               row_sparse_grad(grad_out, bags, weights, 9).to_dense())


def test_per_head_layernorm_is_layernorm_with_one_head():
    """query_norm = "layernorm_per_head" normalises each head's key_dim on its own; with one
    head it is the LayerNorm over the whole query, parameters and state dict included."""
    torch.manual_seed(0)
    whole = ProductKeyLookup(ProductKeyConfig(n_keys=6, topk=3, heads=1, key_dim=8), 12)
    with torch.no_grad():
        whole.query_norm.weight.uniform_(0.5, 1.5)
        whole.query_norm.bias.normal_()
    per_head = ProductKeyLookup(ProductKeyConfig(n_keys=6, topk=3, heads=1, key_dim=8,
                                                 query_norm="layernorm_per_head"), 12)
    per_head.load_state_dict(whole.state_dict())  # same names and shapes
    h = torch.randn(2, 5, 12)
    torch.testing.assert_close(per_head.queries(h, None), whole.queries(h, None))
    for a, b in zip(per_head(h), whole(h), strict=True):
        torch.testing.assert_close(a, b)


def test_per_head_layernorm_normalises_each_head_on_its_own():
    torch.manual_seed(1)
    cfg = ProductKeyConfig(n_keys=6, topk=3, heads=3, key_dim=8)
    whole = ProductKeyLookup(cfg, 12)
    per_head = ProductKeyLookup(ProductKeyConfig(n_keys=6, topk=3, heads=3, key_dim=8,
                                                 query_norm="layernorm_per_head"), 12)
    per_head.load_state_dict(whole.state_dict())
    h = torch.randn(2, 5, 12)
    q = per_head.queries(h, None)  # (2, 5, 3, 8)
    torch.testing.assert_close(q.mean(-1), torch.zeros(2, 5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.var(-1, unbiased=False), torch.ones(2, 5, 3), atol=1e-3,
                               rtol=0)
    assert not torch.allclose(q, whole.queries(h, None), atol=1e-3)  # differs with 3 heads


def test_per_head_layernorm_checkpoint_round_trip(tmp_path):
    from extmem import ModelConfig, Transformer
    from extmem.run.checkpoint import load_checkpoint, save_checkpoint
    from extmem.train import TrainConfig
    from extmem.train.optim import build_optimizer

    def model() -> Transformer:
        pk = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8,
                              query_norm="layernorm_per_head")
        return Transformer(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2,
                                       memories=[MemoryConfig(layers=[1], product_keys=pk)]))

    torch.manual_seed(0)
    trained = model()
    optimizer, _ = build_optimizer(trained, TrainConfig())
    ids = torch.randint(0, 40, (2, 5))
    trained(ids).sum().backward()
    optimizer.step()
    norm = trained.blocks[1].memories[0].lookup.query_norm
    assert not torch.equal(norm.weight, torch.ones_like(norm.weight))  # trained
    save_checkpoint(tmp_path, 1, trained, optimizer)
    fresh = model()
    load_checkpoint(tmp_path / "checkpoints" / "step-1", fresh)
    torch.testing.assert_close(fresh(ids), trained(ids))
