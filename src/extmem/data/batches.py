"""Token streams and batches for language-model training and evaluation.

Each split is one token stream (an int64 tensor; for large corpora a memory-mapped file,
token_file.py): every document is encoded on its own and followed by EOS
(`doc0 EOS doc1 EOS ...`), so BPE never merges across documents. Training batches are
random windows whose starts depend only on (seed, step): resuming at step s replays exactly
the batches an uninterrupted run would have seen. Validation batches are contiguous windows
whose targets cover the stream once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from extmem.data.config import DataConfig
from extmem.data.corpora import Corpus
from extmem.data.facts import FactProbe
from extmem.data.probes import ProbeBatch, probe_batches
from extmem.data.special import special_ids as find_special_ids
from extmem.data.streams import cached_stream
from extmem.data.token_file import TokenFile
from extmem.errors import DataError


def batch_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed that depends only on (seed, step)."""
    digest = hashlib.sha256(f"extmem-batch:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class LMData:
    """Train/val token streams plus the ids and tokenizer the trainer and evaluator need.

    Bits per byte on validation = mean token loss (nats) / (ln 2 * val_bytes_per_token).
    """

    # (N,) int64 tensors, or for large corpora memory-mapped files indexed the same way
    train_ids: torch.Tensor | TokenFile  # (N_train,)
    val_ids: torch.Tensor | TokenFile  # (N_val,)
    val_bytes_per_token: float  # UTF-8 bytes of the val documents / len(val_ids)
    vocab_size: int
    eos_id: int
    pad_id: int  # the EOS id when the tokenizer has no pad token
    mask_id: int | None  # None: the tokenizer has no mask token (masked LM is refused)
    seq_len: int
    tokenizer: Tokenizer = field(repr=False)

    @property
    def special_ids(self) -> list[int]:
        ids = [self.eos_id, self.pad_id, self.mask_id]
        return [i for i in dict.fromkeys(ids) if i is not None]

    def train_batch(self, step: int, batch_size: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: inputs (B, T) and targets (B, T) = inputs shifted by one token."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        T = self.seq_len
        generator = torch.Generator().manual_seed(batch_seed(seed, step))
        starts = torch.randint(0, self.train_ids.numel() - T, (batch_size,),
                               generator=generator)  # (B,)
        index = starts[:, None] + torch.arange(T + 1)[None, :]  # (B, T + 1)
        window = self.train_ids[index]  # (B, T + 1)
        return window[:, :-1], window[:, 1:]

    def val_batches(self, batch_size: int,
                    max_tokens: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Contiguous windows of the val stream; their targets cover val_ids[1:] exactly once
        (or the first `max_tokens` of them). Full (B, T) batches come first; a last partial
        window, if any, comes as its own (1, r) batch with r < T."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = self.val_ids if max_tokens <= 0 else self.val_ids[: max_tokens + 1]
        T = self.seq_len
        n_targets = max(ids.numel() - 1, 0)
        n_full = n_targets // T
        offsets = torch.arange(T + 1)[None, :]  # (1, T + 1)
        for start in range(0, n_full, batch_size):  # one batch read at a time
            rows = torch.arange(start, min(start + batch_size, n_full))  # (B,)
            chunk = ids[rows[:, None] * T + offsets]  # (B, T + 1)
            yield chunk[:, :-1], chunk[:, 1:]
        if n_targets > n_full * T:
            rest = ids[n_full * T:]  # (r + 1,)
            yield rest[None, :-1], rest[None, 1:]

    def probe_batches(self, probes: Sequence[FactProbe], batch_size: int) -> Iterator[ProbeBatch]:
        """Padded batches of `EOS prompt answer` with answer-position masks (see probes.py)."""
        return probe_batches(self.tokenizer, probes, batch_size, self.eos_id, self.pad_id)


def make_lm_data(train_ids: torch.Tensor | TokenFile, val_ids: torch.Tensor | TokenFile,
                 val_bytes: int, tokenizer: Tokenizer, cfg: DataConfig, name: str) -> LMData:
    """LMData over finished token streams; DataError when corpus `name` is too small."""
    special = find_special_ids(tokenizer)
    if train_ids.numel() < cfg.seq_len + 1:
        raise DataError(f"data.seq_len: {cfg.seq_len} needs a training stream of at least "
                        f"{cfg.seq_len + 1} tokens, but corpus {name!r} has "
                        f"{train_ids.numel()}; lower data.seq_len or add training text")
    if val_ids.numel() < 2:
        raise DataError(f"corpus {name!r} has no validation text (val stream has "
                        f"{val_ids.numel()} token(s)); at least one validation document "
                        "is needed")
    return LMData(train_ids=train_ids, val_ids=val_ids,
                  val_bytes_per_token=val_bytes / val_ids.numel(),
                  vocab_size=tokenizer.get_vocab_size(), eos_id=special.eos,
                  pad_id=special.pad, mask_id=special.mask, seq_len=cfg.seq_len,
                  tokenizer=tokenizer)


def build_lm_data(corpus: Corpus, tokenizer: Tokenizer, cfg: DataConfig,
                  cache_dir: str | Path | None = None) -> LMData:
    """Encode the corpus' train and val documents into token streams (large ones cached)."""
    eos_id = find_special_ids(tokenizer).eos
    train_ids = cached_stream(tokenizer, corpus.train_docs, eos_id, cache_dir)  # (N_train,)
    val_ids = cached_stream(tokenizer, corpus.val_docs, eos_id, cache_dir)  # (N_val,)
    val_bytes = sum(len(doc.encode("utf-8")) for doc in corpus.val_docs)
    return make_lm_data(train_ids, val_ids, val_bytes, tokenizer, cfg, corpus.name)
