"""Byte-level BPE tokenizer trained on a corpus' training documents, cached as JSON, or an
existing tokenizer loaded from `data.tokenizer` (tokenizer_files.py; its special ids by the
conventions of special.py).

Byte-level means every string is encodable (no unknown tokens) and `decode(encode(s)) == s`.
Special tokens come first in the vocabulary: `<|endoftext|>` (document separator, id 0),
`<pad>` (1) and `<mask>` (2). The cache file is
`<cache root>/tokenizers/<sha256 of (format, vocab_size, training documents)>.json`,
so the same training text and vocabulary size always reuse one trained tokenizer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from extmem.data.cache import cache_root, write_atomic
from extmem.data.config import DataConfig
from extmem.data.corpora import Corpus
from extmem.data.special import SpecialIds, special_ids
from extmem.data.tokenizer_files import load_tokenizer
from extmem.errors import DataError

__all__ = ["SpecialIds", "check_special_tokens", "get_tokenizer", "load_tokenizer",
           "special_ids", "train_tokenizer"]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
MASK_TOKEN = "<mask>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)
FORMAT_VERSION = "bytelevel-bpe-v1"  # bump when `train_tokenizer` changes


def training_text_key(docs: list[str], vocab_size: int) -> str:
    """sha256 over the format version, vocabulary size and every document (length-prefixed)."""
    h = hashlib.sha256(f"{FORMAT_VERSION}\0{vocab_size}\0".encode())
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `docs` (deterministic for the same input)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    tokenizer.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tokenizer


def check_special_tokens(tokenizer: Tokenizer) -> None:
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise DataError(f"the tokenizer lacks the special token(s) {', '.join(missing)}; "
                        "delete the cached tokenizer file to retrain it")


def _load_cached(path: Path) -> Tokenizer | None:
    """The cached tokenizer at `path`, or None when absent or unreadable (then retrained)."""
    if not path.is_file():
        return None
    try:
        tokenizer = Tokenizer.from_file(str(path))
        check_special_tokens(tokenizer)
    except Exception:  # noqa: BLE001 - the Rust loader raises plain Exception on bad JSON
        return None
    return tokenizer


def get_tokenizer(corpus: Corpus, cfg: DataConfig,
                  cache_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer at `cfg.tokenizer` if set; otherwise the one for `corpus.train_docs` and
    `cfg.vocab_size`, trained once then cached."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if not any(doc for doc in corpus.train_docs):
        raise DataError(f"corpus {corpus.name!r} has no training text to train a tokenizer on")
    key = training_text_key(corpus.train_docs, cfg.vocab_size)
    path = cache_root(cache_dir) / "tokenizers" / f"{key}.json"
    cached = _load_cached(path)
    if cached is not None:
        return cached
    tokenizer = train_tokenizer(corpus.train_docs, cfg.vocab_size)
    check_special_tokens(tokenizer)
    write_atomic(path, tokenizer.to_str())
    return tokenizer
