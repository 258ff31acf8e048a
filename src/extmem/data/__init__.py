"""Corpora, tokenizer and batches: everything between raw text and token tensors.

    corpus = load_corpus(cfg)                  # train/val documents (+ fact probes)
    tokenizer = get_tokenizer(corpus, cfg)     # byte-level BPE, cached
    data = build_lm_data(corpus, tokenizer, cfg)
    inputs, targets = data.train_batch(step, batch_size, seed)   # (B, T), (B, T)
"""

from extmem.data.batches import LMData, build_lm_data
from extmem.data.config import DataConfig, FactsConfig
from extmem.data.corpora import Corpus, load_corpus
from extmem.data.facts import FactProbe
from extmem.data.masking import mask_tokens
from extmem.data.probes import ProbeBatch
from extmem.data.tokenizer import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, get_tokenizer

__all__ = [
    "EOS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "Corpus",
    "DataConfig",
    "FactProbe",
    "FactsConfig",
    "LMData",
    "ProbeBatch",
    "build_lm_data",
    "get_tokenizer",
    "load_corpus",
    "mask_tokens",
]
