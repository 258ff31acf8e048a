"""Token-stream cache for large corpora."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from extmem.data import build_lm_data
from extmem.data import streams as streams_module


def test_large_streams_are_cached(small_corpus, small_tokenizer, small_cfg, private_cache: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    uncached = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    assert not (private_cache / "streams").exists()
    monkeypatch.setattr(streams_module, "CACHE_MIN_CHARS", 1)
    first = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    assert len(list((private_cache / "streams").glob("*.npy"))) == 2  # train and val

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again despite a cache hit")

    monkeypatch.setattr(streams_module, "encode_stream", no_encoding)
    second = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    for data in (first, second):
        assert data.train_ids.dtype == torch.int64
        assert torch.equal(data.train_ids, uncached.train_ids)
        assert torch.equal(data.val_ids, uncached.val_ids)
