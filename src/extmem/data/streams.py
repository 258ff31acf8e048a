"""Encode documents into one token stream (`doc0 EOS doc1 EOS ...`), cached for large corpora.

Each document is encoded on its own, so BPE never merges across documents. Streams of
corpora with at least `CACHE_MIN_CHARS` characters are cached as .npy files under
`<cache root>/streams/<sha256 of (tokenizer JSON, documents)>.npy` (encoding GCIDE takes
about ten seconds; loading it back takes well under one).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from extmem.data.cache import cache_root, write_atomic

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
                  cache_dir: str | Path | None = None) -> torch.Tensor:
    """`encode_stream`, read from / written to the cache when the documents are large."""
    if sum(len(d) for d in docs) < CACHE_MIN_CHARS:
        return encode_stream(tokenizer, docs, eos_id)
    path = cache_root(cache_dir) / "streams" / f"{stream_key(tokenizer, docs, eos_id)}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
        except (OSError, ValueError):
            pass  # a damaged cache file is re-encoded and overwritten below
    ids = encode_stream(tokenizer, docs, eos_id)  # (N,)
    small = tokenizer.get_vocab_size() <= np.iinfo(np.uint16).max + 1
    buffer = io.BytesIO()
    np.save(buffer, ids.numpy().astype(np.uint16 if small else np.int32), allow_pickle=False)
    write_atomic(path, buffer.getvalue())
    return ids
