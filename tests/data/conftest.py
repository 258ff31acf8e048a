"""Shared fixtures for the data tests: a private cache per test and a tiny facts corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from extmem.data import DataConfig, FactsConfig, get_tokenizer, load_corpus
from extmem.data.cache import CACHE_ENV


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own EXTMEM_CACHE, so no test sees another's cached files."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def small_cfg() -> DataConfig:
    return DataConfig(corpus="facts", vocab_size=300, seq_len=16,
                      facts=FactsConfig(n_entities=20, seed=3))


@pytest.fixture
def small_corpus(small_cfg: DataConfig):
    return load_corpus(small_cfg)


@pytest.fixture
def small_tokenizer(small_corpus, small_cfg: DataConfig):
    return get_tokenizer(small_corpus, small_cfg)
