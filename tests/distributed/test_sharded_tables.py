"""Sharded value tables on 2 gloo processes == one full table in one process."""

import pytest
import torch

from extmem.distributed.context import DistContext
from extmem.distributed.tables import ShardedValueTable, shard_range
from extmem.memory.table import ValueTable
from tests.distributed.spawn import run_ranks

N, D, BAGS, READS = 11, 6, 5, 4  # 11 rows: uneven shards (6 + 5)


def _inputs(world: int):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(N, D, generator=g)
    indices = torch.randint(0, N, (world * BAGS, 1, 1, READS), generator=g)  # (W*n, 1, H, k)
    weights = torch.rand(world * BAGS, 1, 1, READS, generator=g)
    grad_out = torch.randn(world * BAGS, 1, D, generator=g)
    return table, indices, weights, grad_out


def _sharded_rank(rank: int, world: int, layout: str, sparse: bool, out_dir: str) -> None:
    table, indices, weights, grad_out = _inputs(world)
    full = ValueTable(N, D, sparse=sparse)
    full.weight.data.copy_(table)
    shard = ShardedValueTable(full, layout, DistContext(rank=rank, world_size=world))
    mine = slice(rank * BAGS, (rank + 1) * BAGS)
    w = weights[mine].clone().requires_grad_()
    out = shard.read(indices[mine], w)  # (n, 1, D)
    (out * grad_out[mine]).sum().backward()
    grad = shard.weight.grad
    torch.save({"out": out.detach(), "w_grad": w.grad, "start": shard.start, "stop": shard.stop,
                "table_grad": grad.to_dense() if grad.is_sparse else grad},
               f"{out_dir}/rank{rank}.pt")


@pytest.mark.parametrize("layout,sparse", [("rows", False), ("rows", True), ("columns", False),
                                           ("columns", True)])
def test_sharded_read_equals_full_table(layout, sparse, tmp_path):
    world = 2
    run_ranks(_sharded_rank, world, layout, sparse, str(tmp_path))
    table, indices, weights, grad_out = _inputs(world)
    full = ValueTable(N, D, sparse=sparse)
    full.weight.data.copy_(table)
    w = weights.clone().requires_grad_()
    out = full.read(indices, w)
    # the global loss is the mean of the ranks' losses: the table's gradient is averaged
    (out * grad_out).sum().div(world).backward()
    table_grad = full.weight.grad.to_dense() if sparse else full.weight.grad
    dim = 0 if layout == "rows" else 1
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        mine = slice(rank * BAGS, (rank + 1) * BAGS)
        torch.testing.assert_close(got["out"], out[mine].detach())
        # each rank's read weights get the gradient of its own loss (not averaged)
        torch.testing.assert_close(got["w_grad"], w.grad[mine] * world)
        assert (got["start"], got["stop"]) == shard_range(table.shape[dim], rank, world)
        torch.testing.assert_close(got["table_grad"],
                                   table_grad.narrow(dim, got["start"], got["stop"] - got["start"]))


def test_shard_range_is_torch_chunk():
    for size, world in [(11, 2), (8, 4), (5, 3), (3, 4)]:
        chunks = torch.arange(size).chunk(world)
        for rank in range(world):
            start, stop = shard_range(size, rank, world)
            expected = chunks[rank].tolist() if rank < len(chunks) else []
            assert list(range(start, stop)) == expected
