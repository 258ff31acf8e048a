"""Streamed corpora (data.streaming / data.hf_streaming): the same documents, splits, tokens and
batches as the in-RAM path, written to memory-mapped token files and cached."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from extmem.data import DataConfig, build_lm_data, get_tokenizer, load_corpus
from extmem.data import stream_corpus as stream_module
from extmem.data.files import iter_files, load_files
from extmem.data.stream_corpus import build_streamed_lm_data, sample_corpus, split_stream
from extmem.data.token_file import TokenFile
from extmem.errors import ConfigError

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def texts(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 9)) + f" {i}."
            for i in range(n)]


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    docs = texts(120)
    # .txt with CRLF, a BOM, blank lines of spaces and tabs, and a multi-line document
    (root / "a.txt").write_bytes(("\ufeff" + "\r\n \t\r\n".join(docs[:60])
                                  + "\r\nsecond line\r\n\r\n\r\n").encode("utf-8"))
    (root / "b.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i})
                                            for i, d in enumerate(docs[60:])) + "\n\n")
    return root


def files_cfg(root: Path, **kwargs) -> DataConfig:
    return DataConfig(corpus="files", path=str(root), vocab_size=300, seq_len=8,
                      val_fraction=0.2, **kwargs)


def test_iter_files_yields_load_files_documents(corpus_dir: Path) -> None:
    streamed = list(iter_files(str(corpus_dir)))
    assert streamed == load_files(str(corpus_dir))
    assert len(streamed) == 120 and streamed[59].endswith("59.\nsecond line")


@pytest.mark.parametrize("max_chars", [0, 900])
def test_streamed_equals_in_ram(corpus_dir: Path, max_chars: int) -> None:
    cfg = files_cfg(corpus_dir, max_chars=max_chars)
    corpus = load_corpus(cfg)
    split = list(split_stream(cfg))
    assert [d for v, d in split if not v] == corpus.train_docs
    assert [d for v, d in split if v] == corpus.val_docs
    tokenizer = get_tokenizer(corpus, cfg)
    in_ram = build_lm_data(corpus, tokenizer, cfg)
    streamed = build_streamed_lm_data(cfg, tokenizer)
    assert isinstance(streamed.train_ids, TokenFile)
    assert streamed.train_ids.tolist() == in_ram.train_ids.tolist()
    assert streamed.val_ids.tolist() == in_ram.val_ids.tolist()
    assert streamed.val_bytes_per_token == in_ram.val_bytes_per_token
    for a, b in zip(streamed.train_batch(4, 3, seed=2), in_ram.train_batch(4, 3, seed=2),
                    strict=True):
        assert torch.equal(a, b)


def test_tokenizer_sample_is_the_leading_training_text(corpus_dir: Path) -> None:
    cfg = files_cfg(corpus_dir)
    train_docs = load_corpus(cfg).train_docs
    sample = sample_corpus(cfg, limit=200)
    assert sum(map(len, sample.train_docs)) == 200 and sample.val_docs == []
    assert sample.train_docs[:-1] == train_docs[:len(sample.train_docs) - 1]
    assert train_docs[len(sample.train_docs) - 1].startswith(sample.train_docs[-1])


def test_streams_are_cached_and_follow_the_files(corpus_dir: Path, private_cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = files_cfg(corpus_dir)
    tokenizer = get_tokenizer(load_corpus(cfg), cfg)
    first = build_streamed_lm_data(cfg, tokenizer).train_ids.tolist()
    names = sorted(p.name.split(".", 1)[1] for p in (private_cache / "streams").iterdir())
    assert names == ["json", "train.u16", "val.u16"]

    encode = stream_module._encode_splits
    encoded: list[int] = []

    def counting(*args, **kwargs):
        encoded.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(stream_module, "_encode_splits", counting)
    assert build_streamed_lm_data(cfg, tokenizer).train_ids.tolist() == first
    assert encoded == []  # a cache hit
    with (corpus_dir / "b.jsonl").open("a") as file:  # a changed file is a new stream
        file.write(json.dumps({"text": "omega " * 50}) + "\n")
    changed = build_streamed_lm_data(cfg, tokenizer)
    assert changed.train_ids.numel() + changed.val_ids.numel() > len(first)
    assert encoded == [1]
    assert len(list((private_cache / "streams").glob("*.json"))) == 2


def test_damaged_metadata_is_encoded_again(corpus_dir: Path, private_cache: Path) -> None:
    cfg = files_cfg(corpus_dir)
    tokenizer = get_tokenizer(load_corpus(cfg), cfg)
    first = build_streamed_lm_data(cfg, tokenizer).val_ids.tolist()
    (meta,) = (private_cache / "streams").glob("*.json")
    meta.write_text("{ nope")
    assert build_streamed_lm_data(cfg, tokenizer).val_ids.tolist() == first
    assert json.loads(meta.read_text())["val_tokens"] == len(first)


def test_hf_streaming_reads_a_local_dataset(corpus_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    local = tmp_path / "local_ds"
    local.mkdir()
    (local / "train.jsonl").write_text((corpus_dir / "b.jsonl").read_text())
    files = files_cfg(local)
    hf = DataConfig(corpus="hf", hf_name=str(local), hf_streaming=True, vocab_size=300,
                    seq_len=8, val_fraction=0.2)
    tokenizer = get_tokenizer(load_corpus(files), files)
    from_files = build_streamed_lm_data(files, tokenizer)
    from_hf = build_streamed_lm_data(hf, tokenizer)
    assert from_hf.train_ids.tolist() == from_files.train_ids.tolist()
    assert from_hf.val_ids.tolist() == from_files.val_ids.tolist()


def test_hf_streaming_asks_for_a_stream_and_stops_reading_at_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    read: list[int] = []

    def rows():
        for i, text in enumerate(texts(10_000)):
            read.append(i)
            yield {"text": text}

    def load_dataset(name, config, split, **kwargs):
        calls.append({"name": name, "split": split, **kwargs})
        return rows()

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    cfg = DataConfig(corpus="hf", hf_name="someone/big", hf_streaming=True, max_chars=500,
                     vocab_size=300, seq_len=8, val_fraction=0.2)
    split = list(split_stream(cfg))
    assert calls == [{"name": "someone/big", "split": "train", "streaming": True}]
    assert sum(len(d) for v, d in split if not v) == 500
    assert len(read) < 200  # stopped once both splits were full, not the 10,000 rows


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"corpus": "facts", "streaming": True}, "data.streaming: not available for corpus 'facts'"),
    ({"corpus": "files", "path": "x", "hf_streaming": True},
     "data.hf_streaming: needs corpus = 'hf'"),
    ({"corpus": "files", "path": "x", "streaming": "yes"}, "data.streaming: expected true or"),
])
def test_streaming_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(**kwargs)
