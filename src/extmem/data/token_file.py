"""Token streams on disk: ids written chunk by chunk as raw uint16 (vocabularies up to 65,536
ids) or uint32 little-endian values, published atomically, and read back memory-mapped.

`TokenFile` is what LMData holds for a large stream: `numel()`, and indexing by a slice or an
index tensor returns int64 tensors of just the tokens asked for, so a training step reads its
windows from the page cache and the stream is never one tensor in RAM.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

ENCODE_CHUNK_DOCS = 4096  # documents per encode_batch call
# ... or fewer, once they hold this many characters: the Encoding objects of a call hold
# every token's string and offsets (~100+ bytes a token), so this bounds the peak
ENCODE_CHUNK_CHARS = 1_000_000
UINT16_VOCAB = np.iinfo(np.uint16).max + 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (little-endian, the file format)."""
    return np.dtype("<u2") if vocab_size <= UINT16_VOCAB else np.dtype("<u4")


def suffix(dtype: np.dtype) -> str:
    return ".u16" if dtype.itemsize == 2 else ".u32"


class TokenFile:
    """A memory-mapped token file, indexed like a 1-D int64 tensor (reads only what is asked)."""

    dtype = torch.int64  # what indexing returns

    def __init__(self, path: str | Path, dtype: np.dtype) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size // dtype.itemsize
        self.array = np.zeros(0, dtype=dtype)  # (N,)
        if size:
            with self.path.open("rb") as file:
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            # random windows: no read-ahead around each page fault on a cold file
            mapped.madvise(mmap.MADV_RANDOM)
            self.array = np.frombuffer(mapped, dtype=dtype, count=size)

    def numel(self) -> int:
        return int(self.array.shape[0])

    def __len__(self) -> int:
        return self.numel()

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return torch.from_numpy(np.asarray(self.array[index], dtype=np.int64))

    def tolist(self) -> list[int]:
        return self.array.tolist()


def encode_chunks(tokenizer: Tokenizer, docs: Iterable[str], eos_id: int) -> Iterator[list[int]]:
    """Token ids of `docs` (each followed by EOS), a chunk of documents at a time."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    chunk: list[str] = []
    chars = 0

    def flush() -> list[int]:
        flat: list[int] = []
        for encoding in encode(chunk, add_special_tokens=False):
            flat.extend(encoding.ids)
            flat.append(eos_id)
        return flat

    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if len(chunk) >= ENCODE_CHUNK_DOCS or chars >= ENCODE_CHUNK_CHARS:
            yield flush()
            chunk, chars = [], 0
    if chunk:
        yield flush()


class TokenFileWriter:
    """Appends token chunks to `<path>.<pid>.tmp`; `publish()` renames it to `path`."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, dtype
        self.tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")
        self.count = 0

    def append(self, ids: Sequence[int]) -> None:
        self.file.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self.count += len(ids)

    def publish(self) -> Path:
        self.file.close()
        self.tmp.replace(self.path)
        return self.path

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


def write_token_file(path: Path, chunks: Iterable[Sequence[int]], dtype: np.dtype) -> TokenFile:
    """Write every chunk to `path` (atomically: a temporary file renamed when complete)."""
    writer = TokenFileWriter(path, dtype)
    try:
        for ids in chunks:
            writer.append(ids)
    except BaseException:
        writer.discard()
        raise
    return TokenFile(writer.publish(), dtype)
