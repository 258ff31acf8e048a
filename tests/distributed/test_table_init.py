"""Tables that are never whole: any rank draws exactly its rows (or columns) of the table one
process would build, for device, host and memory-mapped tables (memory/table_init.py)."""

import pytest
import torch

import extmem.memory.table_init as table_init
from extmem.distributed.context import DistContext
from extmem.distributed.tables import ShardedValueTable, shard_range
from extmem.memory.host_table import HostValueTable
from extmem.memory.table import ValueTable, all_finite
from extmem.memory.table_init import deferred_tables, fill_table_rows, tables_deferred
from tests.distributed.spawn import run_ranks

N, D = 11, 6  # 11 rows: uneven shards (6 + 5); blocks of 4 rows below: shards cross blocks


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    monkeypatch.setattr(table_init, "INIT_BLOCK_ROWS", 4)


def test_any_row_and_column_range_equals_the_whole_table():
    whole = fill_table_rows(torch.empty(N, D), seed=7, row_start=0, dim=D)
    assert whole.std() == pytest.approx(D ** -0.5, rel=0.5)
    for start, stop, c0, c1 in [(3, 9, 0, D), (0, 1, 2, 5), (5, 11, 1, 2), (4, 8, 0, D)]:
        part = fill_table_rows(torch.empty(stop - start, c1 - c0), 7, start, D, c0)
        torch.testing.assert_close(part, whole[start:stop, c0:c1], rtol=0, atol=0)
    other = fill_table_rows(torch.empty(N, D), seed=8, row_start=0, dim=D)
    assert not torch.equal(other, whole)


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_shards_of_a_meta_table_are_the_rows_one_process_holds(layout):
    torch.manual_seed(0)
    full = ValueTable(N, D)
    torch.manual_seed(0)
    with deferred_tables():
        assert tables_deferred()
        meta = ValueTable(N, D, materialize=False)
    assert not tables_deferred()
    assert meta.weight.is_meta and meta.init_seed == full.init_seed
    dim = 0 if layout == "rows" else 1
    for rank in range(2):
        shard = ShardedValueTable(meta, layout, DistContext(rank=rank, world_size=2))
        start, stop = shard_range(full.weight.shape[dim], rank, 2)
        assert not shard.weight.is_meta
        torch.testing.assert_close(shard.weight.detach(),
                                   full.weight.detach().narrow(dim, start, stop - start),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("storage", ["host", "mmap"])
def test_host_and_mapped_tables_hold_the_device_tables_numbers(storage, tmp_path):
    torch.manual_seed(0)
    full = ValueTable(N, D)
    torch.manual_seed(0)
    host = HostValueTable(N, D, storage=storage,
                          file=str(tmp_path / "t.bin") if storage == "mmap" else "")
    torch.testing.assert_close(host.weight.detach(), full.weight.detach(), rtol=0, atol=0)
    torch.manual_seed(0)
    meta = HostValueTable(N, D, storage=storage, materialize=False,
                          file=str(tmp_path / "s.bin") if storage == "mmap" else "")
    for rank in range(2):
        shard = ShardedValueTable(meta, "rows", DistContext(rank=rank, world_size=2))
        torch.testing.assert_close(shard.weight.detach(),
                                   full.weight.detach()[shard.start:shard.stop], rtol=0, atol=0)
        if storage == "mmap":  # each rank maps its own file of its rows only
            assert (tmp_path / f"s.bin.rank{rank}").stat().st_size == \
                (shard.stop - shard.start) * D * 4
        shard.to(torch.float64)
        assert shard.weight.dtype == torch.float32  # a host shard keeps its storage


def _mapped_rank(rank: int, world: int, path: str, out_dir: str) -> None:
    table_init.INIT_BLOCK_ROWS = 4  # as the test process (a spawned process imports afresh)
    torch.manual_seed(0)
    meta = HostValueTable(N, D, storage="mmap", materialize=False, file=path)
    shard = ShardedValueTable(meta, "rows", DistContext(rank=rank, world_size=world))
    g = torch.Generator().manual_seed(1)
    indices = torch.randint(0, N, (world * 3, 1, 2, 2), generator=g)  # (W*n, 1, H, k)
    weights = torch.rand(world * 3, 1, 2, 2, generator=g)
    mine = slice(rank * 3, (rank + 1) * 3)
    torch.save(shard.read(indices[mine], weights[mine]), f"{out_dir}/rank{rank}.pt")


def test_mapped_shards_read_like_one_table(tmp_path):
    run_ranks(_mapped_rank, 2, str(tmp_path / "table.bin"), str(tmp_path))
    torch.manual_seed(0)
    full = ValueTable(N, D)
    g = torch.Generator().manual_seed(1)
    indices = torch.randint(0, N, (6, 1, 2, 2), generator=g)
    weights = torch.rand(6, 1, 2, 2, generator=g)
    expected = full.read(indices, weights).detach()  # (6, 1, D)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got, expected[rank * 3:(rank + 1) * 3])


def test_all_finite_checks_every_chunk():
    t = torch.zeros(10, 3)
    assert all_finite(t, chunk=4)
    t[9, 2] = float("nan")
    assert not all_finite(t, chunk=4)
    assert not all_finite(t.t(), chunk=4)  # not contiguous
