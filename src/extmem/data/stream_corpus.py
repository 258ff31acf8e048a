"""Streamed corpora (`data.streaming`, `data.hf_streaming`): documents are read one at a time
from files or a Hugging Face dataset, split and capped exactly as `load_corpus` does (content
hash, `max_chars`), and encoded straight into memory-mapped token files; neither the corpus
nor its token stream is ever whole in RAM.

A trained tokenizer (no `data.tokenizer`) learns from the first `TOKENIZER_SAMPLE_CHARS`
characters of the training documents (`sample_corpus`). The streams are cached as
`<cache root>/streams/<key>.train.u16` / `.val.u16` (`.u32` for vocabularies over 65,536)
plus `<key>.json` (token counts and validation bytes), each published atomically, the JSON
last. The key covers the tokenizer, the fields that choose documents, and every input file's
path, size and modification time (for a hub dataset its name, configuration and split).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from extmem.data.batches import LMData, make_lm_data
from extmem.data.cache import cache_root, write_atomic
from extmem.data.config import DataConfig
from extmem.data.corpora import Corpus, hash_fraction
from extmem.data.files import find_files, iter_files
from extmem.data.hf import iter_hf
from extmem.data.special import special_ids
from extmem.data.token_file import (
    ENCODE_CHUNK_CHARS,
    ENCODE_CHUNK_DOCS,
    TokenFile,
    TokenFileWriter,
    encode_chunks,
    suffix,
    token_dtype,
)
from extmem.errors import DataError

TOKENIZER_SAMPLE_CHARS = 20_000_000
FORMAT = "streamed-v1"


def is_streamed(cfg: DataConfig) -> bool:
    return cfg.streaming or cfg.hf_streaming


def documents(cfg: DataConfig) -> Iterator[str]:
    """Every document of the corpus, in order (not split)."""
    if cfg.corpus == "files":
        return iter_files(cfg.path, cfg.text_field)
    if cfg.corpus == "hf":
        return iter_hf(cfg.hf_name, cfg.hf_config, cfg.hf_split, cfg.text_field,
                       streaming=cfg.hf_streaming)
    raise DataError(f"data.streaming: not available for corpus {cfg.corpus!r}; "
                    "allowed with corpus = 'files' or 'hf'")


def split_stream(cfg: DataConfig) -> Iterator[tuple[bool, str]]:
    """(is validation, document) in corpus order, split and capped like `load_corpus`; stops
    reading once both splits are full."""
    train_room = cfg.max_chars or math.inf
    val_room = (max(1, math.ceil(cfg.max_chars * cfg.val_fraction / (1 - cfg.val_fraction)))
                if cfg.max_chars else math.inf)
    for doc in documents(cfg):
        is_val = hash_fraction(doc) < cfg.val_fraction
        room = val_room if is_val else train_room
        if room > 0:
            kept = doc if len(doc) <= room else doc[:int(room)]
            if is_val:
                val_room -= len(kept)
            else:
                train_room -= len(kept)
            yield is_val, kept
        if train_room <= 0 and val_room <= 0:
            return


def sample_corpus(cfg: DataConfig, limit: int = TOKENIZER_SAMPLE_CHARS) -> Corpus:
    """The leading training documents (at most `limit` characters): what a trained tokenizer
    learns from. Its `val_docs` is empty: the splits themselves stay on disk."""
    docs: list[str] = []
    total = 0
    for is_val, doc in split_stream(cfg):
        if not is_val:
            docs.append(doc[:limit - total])
            total += len(docs[-1])
            if total >= limit:
                break
    return Corpus(cfg.corpus, docs, [])


def _source_key(cfg: DataConfig, tokenizer: Tokenizer) -> str:
    fields = {name: getattr(cfg, name) for name in (
        "corpus", "path", "hf_name", "hf_config", "hf_split", "hf_streaming", "text_field",
        "val_fraction", "max_chars")}
    h = hashlib.sha256(f"{FORMAT}\0{json.dumps(fields, sort_keys=True)}\0".encode())
    h.update(hashlib.sha256(tokenizer.to_str().encode("utf-8")).digest())
    local = cfg.path if cfg.corpus == "files" else cfg.hf_name
    if cfg.corpus == "files" or Path(local).expanduser().exists():
        root = Path(local).expanduser()
        files = find_files(cfg.path) if cfg.corpus == "files" else (
            sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root])
        for file in files:
            stat = file.stat()
            h.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return h.hexdigest()


class _SplitEncoder:
    """Buffers one split's documents and appends their encoded chunks to its token file."""

    def __init__(self, writer: TokenFileWriter, tokenizer: Tokenizer, eos_id: int) -> None:
        self.writer, self.tokenizer, self.eos_id = writer, tokenizer, eos_id
        self.docs: list[str] = []
        self.chars = 0
        self.bytes = 0

    def add(self, doc: str) -> None:
        self.docs.append(doc)
        self.chars += len(doc)
        self.bytes += len(doc.encode("utf-8"))
        if len(self.docs) >= ENCODE_CHUNK_DOCS or self.chars >= ENCODE_CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        for ids in encode_chunks(self.tokenizer, self.docs, self.eos_id):
            self.writer.append(ids)
        self.docs, self.chars = [], 0


def _encode_splits(cfg: DataConfig, tokenizer: Tokenizer, base: Path) -> dict:
    """One pass over the corpus into `<base>.train/.val` token files; returns the metadata."""
    dtype = token_dtype(tokenizer.get_vocab_size())
    eos = special_ids(tokenizer).eos
    writers = {split: TokenFileWriter(base.with_name(f"{base.name}.{split}{suffix(dtype)}"),
                                      dtype) for split in ("train", "val")}
    encoders = {split: _SplitEncoder(w, tokenizer, eos) for split, w in writers.items()}
    try:
        for is_val, doc in split_stream(cfg):
            encoders["val" if is_val else "train"].add(doc)
        for encoder in encoders.values():
            encoder.flush()
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    for writer in writers.values():
        writer.publish()
    return {"format": FORMAT, "itemsize": dtype.itemsize, "val_bytes": encoders["val"].bytes,
            "train_tokens": writers["train"].count, "val_tokens": writers["val"].count}


def _open_splits(base: Path, meta: dict) -> tuple[TokenFile, TokenFile] | None:
    dtype = np.dtype("<u2" if meta.get("itemsize") == 2 else "<u4")
    files = [base.with_name(f"{base.name}.{split}{suffix(dtype)}") for split in ("train", "val")]
    if not all(f.is_file() for f in files):
        return None
    train, val = (TokenFile(f, dtype) for f in files)
    if (train.numel(), val.numel()) != (meta.get("train_tokens"), meta.get("val_tokens")):
        return None
    return train, val


def build_streamed_lm_data(cfg: DataConfig, tokenizer: Tokenizer,
                           cache_dir: str | Path | None = None) -> LMData:
    """LMData over memory-mapped train / val token files, encoded once and then cached."""
    base = cache_root(cache_dir) / "streams" / _source_key(cfg, tokenizer)
    meta_path = base.with_name(f"{base.name}.json")
    opened = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            opened = _open_splits(base, meta)
        except (OSError, ValueError):
            opened = None  # damaged: encoded again below
    if opened is None:
        meta = _encode_splits(cfg, tokenizer, base)
        write_atomic(meta_path, json.dumps(meta))
        opened = _open_splits(base, meta)
        if opened is None:
            raise DataError(f"{base.parent}: the token files just written cannot be read back; "
                            "check the disk (or set EXTMEM_CACHE to another directory)")
    name = cfg.hf_name if cfg.corpus == "hf" else cfg.path
    return make_lm_data(opened[0], opened[1], meta["val_bytes"], tokenizer, cfg, name)
