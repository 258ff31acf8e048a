"""Token streams and batches for language-model training and evaluation.

Each split is one int64 token stream: every document is encoded on its own and followed by
EOS (`doc0 EOS doc1 EOS ...`), so BPE never merges across documents. Training batches are
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

    train_ids: torch.Tensor  # (N_train,) int64
    val_ids: torch.Tensor  # (N_val,) int64
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
        if n_full:
            index = torch.arange(n_full)[:, None] * T + torch.arange(T + 1)[None, :]  # (W, T+1)
            windows = ids[index]  # (W, T + 1)
            for start in range(0, n_full, batch_size):
                chunk = windows[start:start + batch_size]  # (B, T + 1)
                yield chunk[:, :-1], chunk[:, 1:]
        if n_targets > n_full * T:
            rest = ids[n_full * T:]  # (r + 1,)
            yield rest[None, :-1], rest[None, 1:]

    def probe_batches(self, probes: Sequence[FactProbe], batch_size: int) -> Iterator[ProbeBatch]:
        """Padded batches of `EOS prompt answer` with answer-position masks (see probes.py)."""
        return probe_batches(self.tokenizer, probes, batch_size, self.eos_id, self.pad_id)


def build_lm_data(corpus: Corpus, tokenizer: Tokenizer, cfg: DataConfig,
                  cache_dir: str | Path | None = None) -> LMData:
    """Encode the corpus' train and val documents into token streams (large ones cached)."""
    special = find_special_ids(tokenizer)
    eos_id = special.eos
    train_ids = cached_stream(tokenizer, corpus.train_docs, eos_id, cache_dir)  # (N_train,)
    val_ids = cached_stream(tokenizer, corpus.val_docs, eos_id, cache_dir)  # (N_val,)
    if train_ids.numel() < cfg.seq_len + 1:
        raise DataError(f"data.seq_len: {cfg.seq_len} needs a training stream of at least "
                        f"{cfg.seq_len + 1} tokens, but corpus {corpus.name!r} has "
                        f"{train_ids.numel()}; lower data.seq_len or add training text")
    if val_ids.numel() < 2:
        raise DataError(f"corpus {corpus.name!r} has no validation text (val stream has "
                        f"{val_ids.numel()} token(s)); at least one validation document "
                        "is needed")
    val_bytes = sum(len(doc.encode("utf-8")) for doc in corpus.val_docs)
    return LMData(train_ids=train_ids, val_ids=val_ids,
                  val_bytes_per_token=val_bytes / val_ids.numel(),
                  vocab_size=tokenizer.get_vocab_size(), eos_id=eos_id,
                  pad_id=special.pad, mask_id=special.mask, seq_len=cfg.seq_len,
                  tokenizer=tokenizer)
