"""Batched experts equal a loop over tokens and experts (both computation paths)."""

import pytest
import torch
import torch.nn.functional as F

from extmem.memory import ExpertsConfig, ValueTable
from extmem.memory import experts as experts_module
from extmem.memory.experts import ExpertsReadout, init_expert_table
from extmem.memory.sparse import dense_gather
from extmem.train.sparse_optim import coalesced


def reference(readout: ExpertsReadout, h, table, indices, weights):
    out = torch.zeros_like(h)
    b, t = h.shape[:2]
    for i in range(b):
        for j in range(t):
            for e, w in zip(indices[i, j].reshape(-1).tolist(), weights[i, j].reshape(-1),
                            strict=True):
                w_in, w_out = readout.split(table.weight[e])
                out[i, j] += w * (w_out @ F.gelu(w_in @ h[i, j]))
    return out


@pytest.mark.parametrize("num_experts", [5, 300])  # grouped path, gathered (PEER) path
def test_batched_experts_equal_a_loop(num_experts):
    torch.manual_seed(0)
    d, hidden = 6, 3
    readout = ExpertsReadout(d, ExpertsConfig(hidden=hidden), value_dropout=0.0)
    table = ValueTable(num_experts, 2 * d * hidden)
    init_expert_table(table, d, hidden, zero_output=False)
    h = torch.randn(2, 4, d, dtype=torch.float64)
    table.double()
    indices = torch.randint(0, num_experts, (2, 4, 2, 3))
    weights = torch.rand(2, 4, 2, 3, dtype=torch.float64)
    out = readout(h, table, indices, weights)
    torch.testing.assert_close(out, reference(readout, h, table, indices, weights))


def test_both_paths_agree(monkeypatch):
    torch.manual_seed(1)
    d, hidden = 4, 2
    readout = ExpertsReadout(d, ExpertsConfig(hidden=hidden), value_dropout=0.0)
    table = ValueTable(20, 2 * d * hidden).double()
    h = torch.randn(3, 5, d, dtype=torch.float64)
    indices = torch.randint(0, 20, (3, 5, 1, 2))
    weights = torch.rand(3, 5, 1, 2, dtype=torch.float64)
    grouped = readout(h, table, indices, weights)
    monkeypatch.setattr(experts_module, "GROUPED_MAX_EXPERTS", 0)
    torch.testing.assert_close(readout(h, table, indices, weights), grouped)


@pytest.mark.parametrize("num_experts", [5, 300])  # grouped path, gathered (PEER) path
def test_sparse_updates_give_the_dense_gradient_on_the_experts_used_only(num_experts):
    """With sparse_updates the expert table's gradient is a coalesced row-sparse tensor that
    holds exactly the experts read (the others get no row), equal to the dense gradient; the
    output and the gradients of h and of the read weights do not change."""
    torch.manual_seed(2)
    d, hidden = 6, 3
    readout = ExpertsReadout(d, ExpertsConfig(hidden=hidden), value_dropout=0.0)
    dense, sparse = ValueTable(num_experts, 2 * d * hidden), \
        ValueTable(num_experts, 2 * d * hidden, sparse=True)
    init_expert_table(dense, d, hidden, zero_output=False)
    sparse.load_state_dict(dense.state_dict())
    indices = torch.randint(0, num_experts, (2, 4, 2, 3))
    indices[0, 0, 0, :2] = indices[1, 3, 1, 2]  # the same expert read several times
    outs, grads = [], []
    for table in (dense, sparse):
        h = torch.randn(2, 4, d, generator=torch.Generator().manual_seed(3), requires_grad=True)
        weights = torch.rand(2, 4, 2, 3, generator=torch.Generator().manual_seed(4),
                             requires_grad=True)
        out = readout(h, table, indices, weights)
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append((table.weight.grad, h.grad, weights.grad))
    torch.testing.assert_close(outs[1], outs[0])
    dense_grad, sparse_grad = grads[0][0], grads[1][0]
    # one row per expert read, sorted (autograd drops the coalesced flag: sparse_optim.coalesced)
    assert sparse_grad.is_sparse and coalesced(sparse_grad).is_coalesced()
    assert sparse_grad.indices()[0].tolist() == sorted(set(indices.reshape(-1).tolist()))
    torch.testing.assert_close(sparse_grad.to_dense(), dense_grad)
    for dense_part, sparse_part in zip(grads[0][1:], grads[1][1:], strict=True):
        torch.testing.assert_close(sparse_part, dense_part)


def test_dense_gather_gives_autograds_gradient_with_repeated_rows():
    """The expert rows' dense gradient, summed by index_add_, equals autograd's `weight[idx]`
    (index_put with accumulate), repeated reads of a row included; the forward is the same
    gather."""
    torch.manual_seed(5)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 3, 3], [6, 0, 3]])  # row 3 three times, row 0 twice
    upstream = torch.randn(2, 3, 4, dtype=torch.float64)
    (reference_grad,) = torch.autograd.grad((weight[idx] * upstream).sum(), weight)
    rows = dense_gather(weight, idx)  # (2, 3, 4)
    (grad,) = torch.autograd.grad((rows * upstream).sum(), weight)
    torch.testing.assert_close(rows, weight[idx])
    torch.testing.assert_close(grad, reference_grad)
    assert grad[3].allclose(upstream[0, 1] + upstream[0, 2] + upstream[1, 2])
    assert grad[[1, 2, 4, 5]].eq(0).all()  # rows never read get no gradient
