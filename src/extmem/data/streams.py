"""Encode documents into one token stream (`doc0 EOS doc1 EOS ...`), cached for large corpora.

Each document is encoded on its own, so BPE never merges across documents. Streams of
corpora with at least `CACHE_MIN_CHARS` characters are encoded a chunk at a time into
`<cache root>/streams/<sha256 of (tokenizer JSON, documents)>.u16` (or `.u32`, token_file.py),
published atomically and read back memory-mapped (`TokenFile`): encoding GCIDE takes about ten
seconds, opening the file well under one, and the stream is never one int64 tensor in RAM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from extmem.data.cache import cache_root
from extmem.data.token_file import TokenFile, encode_chunks, suffix, token_dtype, write_token_file

ENCODE_CHUNK = 4096  # documents per encode_batch call (bounds peak memory)
CACHE_MIN_CHARS = 1_000_000


def encode_stream(tokenizer: Tokenizer, docs: Sequence[str], eos_id: int) -> torch.Tensor:
    """(N,) int64: each document's ids followed by EOS."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    parts: list[torch.Tensor] = []
    for start in range(0, len(docs), ENCODE_CHUNK):
        flat: list[int] = []
        for encoding in encode(list(docs[start:start + ENCODE_CHUNK]), add_special_tokens=False):
            flat.extend(encoding.ids)
            flat.append(eos_id)
        parts.append(torch.tensor(flat, dtype=torch.long))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def stream_key(tokenizer: Tokenizer, docs: Sequence[str], eos_id: int) -> str:
    h = hashlib.sha256(f"stream-v1\0{eos_id}\0".encode())
    h.update(hashlib.sha256(tokenizer.to_str().encode("utf-8")).digest())
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def cached_stream(tokenizer: Tokenizer, docs: Sequence[str], eos_id: int,
                  cache_dir: str | Path | None = None) -> torch.Tensor | TokenFile:
    """`encode_stream` for small corpora; a large one's memory-mapped token file in the cache
    (encoded and written there first when absent; in RAM when the cache is not writable)."""
    if sum(len(d) for d in docs) < CACHE_MIN_CHARS:
        return encode_stream(tokenizer, docs, eos_id)
    dtype = token_dtype(tokenizer.get_vocab_size())
    key = stream_key(tokenizer, docs, eos_id)
    path = cache_root(cache_dir) / "streams" / f"{key}{suffix(dtype)}"
    if path.is_file():
        return TokenFile(path, dtype)
    try:
        return write_token_file(path, encode_chunks(tokenizer, docs, eos_id), dtype)
    except OSError:  # a cache is an optimisation, never a reason to fail
        return encode_stream(tokenizer, docs, eos_id)
