"""`freeze_table`: the table keeps its random initialisation (claim 13's frozen random-table
control): no gradient, no optimizer state, while the rest of the model trains."""

import torch
from safetensors.torch import load_file

from extmem import MemoryConfig, ModelConfig, Transformer
from extmem.cli import main
from extmem.memory.config import NgramLookupConfig
from extmem.model.resources import table_needs
from extmem.run.config import TrainConfig
from extmem.train.optim import build_optimizer


def _model(freeze: bool) -> Transformer:
    torch.manual_seed(0)
    memory = MemoryConfig(layers=[0], placement="input", lookup="ngram", readout="gated",
                          value_dim=16, ngram=NgramLookupConfig(rows=256), freeze_table=freeze)
    return Transformer(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2,
                                   max_seq_len=16, memories=[memory]))


def test_a_frozen_table_does_not_train_and_the_rest_does():
    model = _model(freeze=True)
    table = model.blocks[0].memories[0].table.weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _ = build_optimizer(model, TrainConfig(lr=1e-2))
    assert all(p is not table for g in optimizer.param_groups for p in g["params"])
    ids = torch.randint(0, 50, (2, 12))
    model(ids).logsumexp(-1).mean().backward()
    assert table.grad is None
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not p.equal(before[n])}
    assert "blocks.0.memories.0.table.weight" not in changed
    assert "blocks.0.memories.0.readout" in " ".join(changed) and "embed.weight" in changed
    assert _model(freeze=False).blocks[0].memories[0].table.weight.equal(table)  # same init


def test_the_estimate_counts_no_optimizer_state_or_gradient_for_a_frozen_table():
    frozen, trained = (table_needs(_model(f).cfg, lambda name: "adamw")[0] for f in (True, False))
    assert frozen.table_bytes == trained.table_bytes
    assert (frozen.optimizer_bytes, frozen.gradient_bytes) == (0, 0)
    assert trained.optimizer_bytes > 0 and trained.gradient_bytes > 0


def test_a_run_with_a_frozen_table_checkpoints_and_resumes(tiny_config, tmp_path):
    out = tmp_path / "run"
    sets = ["--set", "model.memories.0.freeze_table=true", "--set", "train.steps=3"]
    assert main(["train", str(tiny_config), "--out", str(out), "--quiet", *sets]) == 0
    assert main(["train", "--resume", "--out", str(out), "--quiet",
                 "--set", "train.steps=6"]) == 0
    first = load_file(str(out / "checkpoints" / "step-3" / "model.safetensors"))
    last = load_file(str(out / "checkpoints" / "step-6" / "model.safetensors"))
    name = "blocks.1.memories.0.table.weight"
    assert first[name].equal(last[name])
    assert not first["embed.weight"].equal(last["embed.weight"])
