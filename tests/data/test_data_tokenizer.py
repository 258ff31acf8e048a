"""Byte-level BPE tokenizer: special tokens, round trip, determinism and the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from extmem.data import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, Corpus, DataConfig, get_tokenizer
from extmem.data import tokenizer as tokenizer_module
from extmem.errors import DataError


def test_special_tokens_and_vocab_size(small_tokenizer, small_cfg: DataConfig) -> None:
    assert [small_tokenizer.token_to_id(t) for t in (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)] == [0, 1, 2]
    assert 259 < small_tokenizer.get_vocab_size() <= small_cfg.vocab_size


@pytest.mark.parametrize("text", [
    "Zorvan Maleki was born in 1925.",
    "  leading and trailing spaces  \n\ttabs\n\nand blank lines\n",
    "unicode: héllo wörld, 東京, emoji 😀, math ∑",
    "",
])
def test_round_trip(small_tokenizer, text: str) -> None:
    ids = small_tokenizer.encode(text, add_special_tokens=False).ids
    assert small_tokenizer.decode(ids) == text


def test_cache_hit_does_not_retrain(small_corpus, small_cfg, private_cache: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_tokenizer(small_corpus, small_cfg)
    files = list((private_cache / "tokenizers").glob("*.json"))
    assert len(files) == 1 and len(files[0].stem) == 64
    mtime = files[0].stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was retrained despite a cache hit")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", no_training)
    second = get_tokenizer(small_corpus, small_cfg)
    assert second.get_vocab() == first.get_vocab()
    assert files[0].stat().st_mtime_ns == mtime


def test_cache_key_depends_on_text_and_vocab(small_corpus, small_cfg, tmp_path: Path) -> None:
    cache = tmp_path / "explicit"
    get_tokenizer(small_corpus, small_cfg, cache_dir=cache)
    get_tokenizer(small_corpus, DataConfig(vocab_size=301), cache_dir=cache)
    other = Corpus("x", small_corpus.train_docs[1:], small_corpus.val_docs)
    get_tokenizer(other, small_cfg, cache_dir=cache)
    assert len(list((cache / "tokenizers").glob("*.json"))) == 3


def test_damaged_cache_is_retrained(small_corpus, small_cfg, private_cache: Path) -> None:
    first = get_tokenizer(small_corpus, small_cfg)
    (path,) = (private_cache / "tokenizers").glob("*.json")
    path.write_text("{ not json")
    assert get_tokenizer(small_corpus, small_cfg).get_vocab() == first.get_vocab()


def test_deterministic_training(small_corpus, small_cfg) -> None:
    a = tokenizer_module.train_tokenizer(small_corpus.train_docs, small_cfg.vocab_size)
    b = tokenizer_module.train_tokenizer(small_corpus.train_docs, small_cfg.vocab_size)
    assert a.to_str() == b.to_str()


def test_empty_training_text_is_a_data_error(small_cfg) -> None:
    with pytest.raises(DataError, match="no training text"):
        get_tokenizer(Corpus("empty", ["", ""], ["x"]), small_cfg)
