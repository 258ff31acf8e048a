"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_TOML = """
[model]
d_model = 32
n_layers = 2
n_heads = 2
max_seq_len = 64

[[model.memories]]
layers = [1]
placement = "parallel_ffn"

[model.memories.product_keys]
n_keys = 8
heads = 2
topk = 4
key_dim = 16

[data]
corpus = "facts"
vocab_size = 300
seq_len = 16

[data.facts]
n_entities = 12
attributes = ["birth_year", "city", "occupation"]

[train]
steps = 6
batch_size = 4
warmup_steps = 2
eval_every = 3
eval_tokens = 256
eval_batch_size = 8
checkpoint_every = 3
keep_checkpoints = 0
log_every = 1
"""


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Tokenizer cache per test session, never the user's ~/.cache."""
    monkeypatch.setenv("EXTMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML, encoding="utf-8")
    return path
