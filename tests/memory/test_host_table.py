import numpy as np
import pytest
import torch

from extmem import MemoryConfig, ModelConfig, ProductKeyConfig, Transformer
from extmem.errors import ConfigError
from extmem.memory import Memory, ValueTable
from extmem.memory.host_table import HostValueTable
from extmem.run.checkpoint import load_checkpoint, save_checkpoint
from extmem.run.config import ParamGroupConfig
from extmem.train import TrainConfig
from extmem.train.optim import build_optimizer

PK = ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8)  # 36 rows
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def file_rows(path, rows: int, dim: int) -> torch.Tensor:
    """The table as stored in its file (read independently of the mapping), (rows, dim)."""
    return torch.from_numpy(np.array(np.memmap(path, dtype=np.float32, mode="r",
                                               shape=(rows, dim))))


def host_table(storage: str, tmp_path, rows: int, dim: int, sparse: bool = False):
    file = str(tmp_path / "table.bin") if storage == "mmap" else ""
    return HostValueTable(rows, dim, sparse=sparse, storage=storage, file=file)


@pytest.mark.parametrize("storage", ["host", "mmap"])
@pytest.mark.parametrize("sparse", [False, True])
def test_read_and_gradients_equal_value_table(storage, sparse, tmp_path):
    torch.manual_seed(0)
    reference = ValueTable(30, 5, sparse=sparse)
    table = host_table(storage, tmp_path, 30, 5, sparse)
    with torch.no_grad():
        table.weight.copy_(reference.weight)
    indices = torch.randint(0, 30, (2, 3, 2, 4))  # (B, T, H, k)
    weights_ref = torch.rand(2, 3, 2, 4, requires_grad=True)  # (B, T, H, k)
    weights = weights_ref.detach().clone().requires_grad_()
    upstream = torch.randn(2, 3, 5)  # (B, T, d_v)

    out_ref = reference.read(indices, weights_ref)
    (out_ref * upstream).sum().backward()
    out = table.read(indices, weights)
    (out * upstream).sum().backward()

    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(weights.grad, weights_ref.grad)
    assert table.weight.grad.is_sparse == sparse
    torch.testing.assert_close(table.weight.grad.to_dense(), reference.weight.grad.to_dense())


def test_model_conversion_skips_the_host_weight():
    memory = Memory(MemoryConfig(product_keys=PK, table_storage="host", value_dim=10), d_model=16)
    weight = memory.table.weight
    memory.to(torch.float64)
    assert memory.table.weight is weight
    assert weight.dtype == torch.float32 and weight.device.type == "cpu"
    assert memory.readout.out_proj.weight.dtype == torch.float64  # the rest converts
    assert all(p.dtype == torch.float64 for p in memory.lookup.parameters())
    h = torch.randn(2, 3, 16, dtype=torch.float64)
    out = memory.eval()(h)  # eval: the usage counters do not take float64 weights
    assert out.dtype == torch.float64 and out.shape == (2, 3, 16)
    out.sum().backward()
    assert weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0


def test_mmap_weight_is_backed_by_its_file(tmp_path):
    path = tmp_path / "values.bin"
    path.write_bytes(b"stale")  # an existing file is replaced at build
    torch.manual_seed(0)
    table = HostValueTable(64, 8, storage="mmap", file=str(path))
    assert path.stat().st_size == 64 * 8 * 4
    assert torch.equal(file_rows(path, 64, 8), table.weight.detach())
    with torch.no_grad():
        table.weight[3].fill_(7.0)
    assert torch.equal(file_rows(path, 64, 8)[3], torch.full((8,), 7.0))
    storage = table.weight.untyped_storage().data_ptr()
    table.to(torch.float64)
    assert table.weight.untyped_storage().data_ptr() == storage

    torch.manual_seed(0)
    again = HostValueTable(64, 8, storage="mmap", file=str(tmp_path / "again.bin"))
    assert torch.equal(again.weight[4:], table.weight[4:])  # same seed, same table


def test_mmap_init_scale_and_anonymous_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    torch.manual_seed(0)
    table = HostValueTable(4096, 64, storage="mmap")
    assert table.table_file == "" and list(tmp_path.iterdir()) == []  # unlinked once mapped
    assert abs(table.weight.std().item() - 64 ** -0.5) < 0.01
    assert abs(table.weight.mean().item()) < 0.01


@pytest.mark.parametrize("sparse", [False, True])
def test_mmap_transformer_trains_and_checkpoint_round_trip_keeps_mapping(sparse, tmp_path):
    def model(file: str) -> Transformer:
        memory = MemoryConfig(layers=[1], product_keys=PK, table_storage="mmap",
                              table_file=str(tmp_path / file), sparse_updates=sparse)
        return Transformer(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2,
                                       memories=[memory]))

    optimizer_kind = "lazy_adam" if sparse else "adamw"
    train = TrainConfig(param_groups=[ParamGroupConfig(
        name="memory_values", patterns=["*.memories.*.table.weight"], lr=1e-2,
        weight_decay=0.0, optimizer=optimizer_kind)])
    torch.manual_seed(0)
    trained = model("a.bin")
    table = trained.blocks[1].memories[0].table
    assert isinstance(table, HostValueTable)
    before = table.weight.detach().clone()
    optimizer, _ = build_optimizer(trained, train)
    trained(torch.randint(0, 40, (2, 5))).sum().backward()
    optimizer.step()
    assert not torch.equal(table.weight, before)
    assert torch.equal(file_rows(tmp_path / "a.bin", 36, 16), table.weight.detach())

    save_checkpoint(tmp_path / "run", 1, trained, optimizer)
    fresh = model("b.bin")
    fresh_table = fresh.blocks[1].memories[0].table
    storage = fresh_table.weight.untyped_storage().data_ptr()
    load_checkpoint(tmp_path / "run" / "checkpoints" / "step-1", fresh)
    assert fresh_table.weight.untyped_storage().data_ptr() == storage  # copied in place
    assert torch.equal(fresh_table.weight, table.weight)
    assert torch.equal(file_rows(tmp_path / "b.bin", 36, 16), table.weight.detach())


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"table_storage": "disk"}, "memory.table_storage"),
    ({"table_storage": "host", "readout": "experts"}, "memory.table_storage"),
    ({"table_storage": "host", "table_file": "t.bin"}, "memory.table_file"),
    ({"table_storage": "mmap", "table_file": "t.bin", "layers": [0, 1]}, "memory.table_file"),
])
def test_bad_storage_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        MemoryConfig(**kwargs)


@needs_cuda
def test_cuda_model_reads_host_rows():
    memory = Memory(MemoryConfig(product_keys=PK, table_storage="host"), d_model=16).to("cuda")
    assert memory.table.weight.device.type == "cpu"
    out = memory(torch.randn(2, 3, 16, device="cuda"))
    assert out.device.type == "cuda"
    out.sum().backward()
    assert memory.table.weight.grad.device.type == "cpu"
    assert next(memory.lookup.parameters()).grad.device.type == "cuda"
