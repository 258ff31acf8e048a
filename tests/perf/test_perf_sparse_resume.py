"""Row-sparse training through the trainer: resume equality, optimizer state in checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from extmem.cli import main
from extmem.data.batches import LMData
from extmem.errors import CheckpointError
from extmem.run.checkpoint import load_checkpoint
from extmem.run.run_dir import load_run_config
from extmem.run.session import build_model
from extmem.train.optim import build_optimizer

SPARSE_GROUPS = """
[[train.param_groups]]
name = "memory_values"
patterns = ["*.memories.*.table.weight"]
lr = 0.01
weight_decay = 0.0
optimizer = "{optimizer}"

[[train.param_groups]]
name = "no_decay"
patterns = ["*norm*", "*.bias", "*.sub_keys"]
weight_decay = 0.0
"""


def sparse_toml(optimizer: str) -> str:
    from tests.conftest import TINY_TOML
    text = TINY_TOML.replace('placement = "parallel_ffn"\n',
                             'placement = "parallel_ffn"\nsparse_updates = true\n', 1)
    assert "sparse_updates" in text
    return text + SPARSE_GROUPS.format(optimizer=optimizer)


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])


def losses(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r.get("loss"), r.get("val_loss")) for r in rows]


def test_sparse_run_resumes_exactly(tmp_path, monkeypatch, optimizer: str = "lazy_adam") -> None:
    config = tmp_path / "sparse.toml"
    config.write_text(sparse_toml(optimizer))
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert train(config, full) == 0
    state = json.loads((full / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["format_version"] == 2
    assert state["optimizers"]["memory_values"] == optimizer
    saved = load_file(str(full / "checkpoints" / "step-6" / "optimizer.safetensors"))
    key = "exp_avg" if optimizer == "lazy_adam" else "sum"
    assert any(k.endswith(f"table.weight::{key}") for k in saved)

    original = LMData.train_batch

    def flaky(self, step, batch_size, seed):
        if step == 4:
            raise RuntimeError("simulated crash")
        return original(self, step, batch_size, seed)
    monkeypatch.setattr(LMData, "train_batch", flaky)
    with pytest.raises(RuntimeError):
        train(config, resumed)
    monkeypatch.undo()
    assert train(config, resumed, "--resume") == 0
    wa = load_file(str(full / "checkpoints" / "step-6" / "model.safetensors"))
    wb = load_file(str(resumed / "checkpoints" / "step-6" / "model.safetensors"))
    for name in wa:
        assert wa[name].equal(wb[name]), name
    assert losses(full) == losses(resumed)


def test_resume_with_another_optimizer_kind_is_refused(tmp_path) -> None:
    config = tmp_path / "sparse.toml"
    config.write_text(sparse_toml("rowwise_adagrad"))
    run = tmp_path / "run"
    assert train(config, run, "--set", "train.steps=3") == 0
    saved = load_file(str(run / "checkpoints" / "step-3" / "optimizer.safetensors"))
    assert any(k.endswith("table.weight::sum") and v.dim() == 1 for k, v in saved.items())
    cfg = load_run_config(run)
    groups = [dataclasses.replace(g, optimizer="lazy_adam") if g.name == "memory_values"
              else g for g in cfg.train.param_groups]
    model = build_model(cfg, torch.device("cpu"))
    optimizer, _ = build_optimizer(model, dataclasses.replace(cfg.train, param_groups=groups))
    with pytest.raises(CheckpointError, match="memory_values"):
        load_checkpoint(run / "checkpoints" / "step-3", model, optimizer)
