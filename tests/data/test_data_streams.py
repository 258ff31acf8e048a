"""Token-stream cache for large corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extmem.data import build_lm_data
from extmem.data import streams as streams_module
from extmem.data.token_file import TokenFile, token_dtype, write_token_file


def test_large_streams_are_cached(small_corpus, small_tokenizer, small_cfg, private_cache: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    uncached = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    assert not (private_cache / "streams").exists()
    monkeypatch.setattr(streams_module, "CACHE_MIN_CHARS", 1)
    first = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    assert len(list((private_cache / "streams").glob("*.u16"))) == 2  # train and val

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again despite a cache hit")

    monkeypatch.setattr(streams_module, "encode_stream", no_encoding)
    monkeypatch.setattr(streams_module, "encode_chunks", no_encoding)
    second = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    for data in (first, second):
        assert data.train_ids.dtype == torch.int64
        assert torch.equal(data.train_ids[:], uncached.train_ids)
        assert torch.equal(data.val_ids[:], uncached.val_ids)


def test_memory_mapped_streams_give_the_same_batches(small_corpus, small_tokenizer, small_cfg,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    in_ram = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    monkeypatch.setattr(streams_module, "CACHE_MIN_CHARS", 1)
    mapped = build_lm_data(small_corpus, small_tokenizer, small_cfg)
    assert isinstance(mapped.train_ids, TokenFile) and isinstance(in_ram.train_ids, torch.Tensor)
    assert mapped.train_ids.array.dtype == np.uint16
    for step in range(3):
        for a, b in zip(mapped.train_batch(step, 5, seed=1), in_ram.train_batch(step, 5, seed=1),
                        strict=True):
            assert a.dtype == torch.int64 and torch.equal(a, b)
    for max_tokens in (0, 37):
        got = list(mapped.val_batches(3, max_tokens))
        want = list(in_ram.val_batches(3, max_tokens))
        assert len(got) == len(want) > 1
        for (xa, ya), (xb, yb) in zip(got, want, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_token_file_round_trip_uint32(tmp_path: Path) -> None:
    ids = [0, 1, 65535, 65536, 1_000_000, 7]
    dtype = token_dtype(2_000_000)
    assert dtype == np.dtype("<u4")
    path = tmp_path / "s.u32"
    stream = write_token_file(path, [ids[:2], [], ids[2:]], dtype)
    assert stream.numel() == 6 and path.stat().st_size == 24
    assert stream.tolist() == ids
    assert stream[torch.tensor([[5, 3], [0, 4]])].tolist() == [[7, 65536], [0, 1_000_000]]
    assert not list(tmp_path.glob("*.tmp"))


def test_token_file_is_not_published_when_writing_fails(tmp_path: Path) -> None:
    def chunks():
        yield [1, 2, 3]
        raise RuntimeError("tokenizer died")

    with pytest.raises(RuntimeError):
        write_token_file(tmp_path / "s.u16", chunks(), token_dtype(100))
    assert list(tmp_path.iterdir()) == []
