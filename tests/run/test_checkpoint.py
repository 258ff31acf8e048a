import pytest
import torch

from extmem import MemoryConfig, ModelConfig, ProductKeyConfig, Transformer
from extmem.errors import CheckpointError
from extmem.run.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from extmem.train import TrainConfig
from extmem.train.optim import build_optimizer


def model(n_keys: int = 6) -> Transformer:
    pk = ProductKeyConfig(n_keys=n_keys, topk=3, heads=2, key_dim=8)
    return Transformer(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2,
                                   memories=[MemoryConfig(layers=[1], product_keys=pk)]))


def trained(tmp_path):
    torch.manual_seed(0)
    m = model()
    optimizer, _ = build_optimizer(m, TrainConfig())
    m(torch.randint(0, 40, (2, 5))).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, 1, m, optimizer)
    return m, optimizer


def test_roundtrip_restores_weights_optimizer_and_rng(tmp_path):
    m, optimizer = trained(tmp_path)
    expected_rng = torch.get_rng_state()
    torch.rand(5)  # move the RNG on
    fresh = model()
    fresh_optimizer, _ = build_optimizer(fresh, TrainConfig())
    loaded = load_checkpoint(tmp_path / "checkpoints" / "step-1", fresh, fresh_optimizer,
                             restore_rng=True)
    assert loaded.step == 1
    for (name, a), (_, b) in zip(m.state_dict().items(), fresh.state_dict().items(), strict=False):
        assert torch.equal(a, b), name
    assert torch.equal(torch.get_rng_state(), expected_rng)
    state_a = optimizer.state[m.embed.weight]
    state_b = fresh_optimizer.state[fresh.embed.weight]
    assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
    assert torch.equal(state_a["step"], state_b["step"])


def test_truncated_file_is_detected(tmp_path):
    trained(tmp_path)
    path = tmp_path / "checkpoints" / "step-1" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path.parent, model())


def test_mismatching_config_names_the_tensor(tmp_path):
    trained(tmp_path)
    expected = r"memories.0.lookup.sub_keys has shape \(2, 2, 6, 4\) in the checkpoint"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "checkpoints" / "step-1", model(n_keys=8))


def test_incomplete_checkpoints_are_ignored_and_old_ones_pruned(tmp_path):
    m, optimizer = trained(tmp_path)
    (tmp_path / "checkpoints" / ".tmp-step-9-123").mkdir()  # a crash mid-write
    (tmp_path / "checkpoints" / "step-7").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "step-1"
    for step in (2, 3, 4):
        save_checkpoint(tmp_path, step, m, optimizer, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-3", "step-4"]
