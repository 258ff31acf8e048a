"""A training budget in exposures: every training token seen E times (on average).

Knowledge-capacity studies count training in exposures per fact (Allen-Zhu & Li 2024, "Physics
of Language Models: Part 3.3, Knowledge Capacity Scaling Laws": ~2 bits per parameter at
1,000 exposures). A run trains on random windows of the training stream (`LMData.train_batch`:
`batch_size` windows of `seq_len` tokens per step, every document followed by EOS), so E
exposures of the N tokens of that stream take

    steps = ceil(E * N / (batch_size * seq_len))

For the `facts` corpus N covers every training sentence (each fact in its training
phrasings), so each is seen E times on average; for the other corpora N is the training split.
(Window starts are uniform over the first N - seq_len tokens, so the last seq_len tokens of
the stream are seen somewhat less often.)
"""

from __future__ import annotations

import math
from pathlib import Path

from extmem.config import require
from extmem.data import DataConfig, build_lm_data, get_tokenizer, load_corpus
from extmem.data.stream_corpus import build_streamed_lm_data, is_streamed, sample_corpus
from extmem.run.config import RunConfig


def training_tokens(data: DataConfig, cache_dir: str | Path | None = None) -> int:
    """N: tokens of the training stream of `data` (documents + one EOS each), with the
    tokenizer a run of this data config trains (cached)."""
    if is_streamed(data):
        tokenizer = get_tokenizer(sample_corpus(data), data, cache_dir)
        return int(build_streamed_lm_data(data, tokenizer, cache_dir).train_ids.numel())
    corpus = load_corpus(data, cache_dir)
    tokenizer = get_tokenizer(corpus, data, cache_dir)
    return int(build_lm_data(corpus, tokenizer, data, cache_dir).train_ids.numel())


def exposure_steps(exposures: int, train_tokens: int, batch_size: int, seq_len: int) -> int:
    """ceil(E * N / (batch_size * seq_len)): the steps that show each training token E times."""
    require(exposures >= 1, f"exposures: {exposures} must be >= 1")
    return max(1, math.ceil(exposures * train_tokens / (batch_size * seq_len)))


def steps_for_exposures(cfg: RunConfig, exposures: int, tokens: dict[str, int]) -> int:
    """`exposure_steps` of a run config; `tokens` memoises N per data config (a sweep's
    variants and seeds share few data configs)."""
    key = repr(cfg.data)
    if key not in tokens:
        tokens[key] = training_tokens(cfg.data)
    return exposure_steps(exposures, tokens[key], cfg.train.rows_per_step, cfg.data.seq_len)
