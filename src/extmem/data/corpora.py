"""`load_corpus(cfg)`: one entry point for every corpus, returning train/val documents.

For every corpus but "facts" (which has its own held-out phrasings), documents are split by a
stable hash of their content: a document goes to validation when the first 8 bytes of its
SHA-1, read as a fraction of 2**64, are below `val_fraction`. Identical documents therefore
always land in the same split, whatever the file order. With `max_chars > 0`, training
documents are kept in order until `max_chars` characters (the last one is cut), and
validation is capped in proportion (max_chars * val_fraction / (1 - val_fraction)).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from extmem.data.config import DataConfig
from extmem.data.facts import FactProbe, generate_facts
from extmem.data.files import load_files
from extmem.data.gcide import load_gcide
from extmem.data.hf import load_hf
from extmem.errors import DataError


@dataclass
class Corpus:
    name: str
    train_docs: list[str]
    val_docs: list[str]
    probes: list[FactProbe] = field(default_factory=list)  # only the "facts" corpus has probes
    # "facts": one probe per fact in a training phrasing (the storage meter, run/storage.py)
    train_probes: list[FactProbe] = field(default_factory=list)

    @property
    def train_chars(self) -> int:
        return sum(len(d) for d in self.train_docs)

    @property
    def val_chars(self) -> int:
        return sum(len(d) for d in self.val_docs)


def hash_fraction(doc: str) -> float:
    """The document's SHA-1 as a fraction of 2**64 (< val_fraction: validation)."""
    digest = hashlib.sha1(doc.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_docs(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic content-hash split; both sides non-empty (needs >= 2 documents)."""
    if len(docs) < 2:
        raise DataError(f"the corpus has {len(docs)} document(s); at least 2 are needed to "
                        "make non-empty training and validation splits (in .txt files, "
                        "separate documents with a blank line)")
    keys = [hash_fraction(d) for d in docs]
    is_val = [k < val_fraction for k in keys]
    if not any(is_val):  # move the document closest to the threshold
        is_val[min(range(len(docs)), key=lambda i: (keys[i], i))] = True
    if all(is_val):
        is_val[max(range(len(docs)), key=lambda i: (keys[i], -i))] = False
    train = [d for d, v in zip(docs, is_val, strict=False) if not v]
    val = [d for d, v in zip(docs, is_val, strict=False) if v]
    return train, val


def cap_docs(docs: list[str], max_chars: int) -> list[str]:
    """Leading documents totalling at most `max_chars` characters (0 = no cap); the last
    document is cut to fit, and at least one (possibly cut) document is kept."""
    if max_chars <= 0:
        return docs
    kept: list[str] = []
    total = 0
    for doc in docs:
        room = max_chars - total
        if room <= 0:
            break
        kept.append(doc if len(doc) <= room else doc[:room])
        total += len(kept[-1])
    return kept


def load_corpus(cfg: DataConfig, cache_dir: str | Path | None = None) -> Corpus:
    """Load the corpus named by `cfg.corpus` (see `DataConfig`)."""
    if cfg.corpus == "facts":
        facts = generate_facts(cfg.facts)
        return Corpus("facts", facts.train_docs, facts.val_docs, facts.probes,
                      facts.train_probes)
    if cfg.corpus == "gcide":
        docs = load_gcide(cache_dir)
    elif cfg.corpus == "files":
        docs = load_files(cfg.path, cfg.text_field)
    elif cfg.corpus == "hf":
        limit = math.ceil(cfg.max_chars / (1 - cfg.val_fraction)) if cfg.max_chars else 0
        docs = load_hf(cfg.hf_name, cfg.hf_config, cfg.hf_split, cfg.text_field, limit)
    else:  # pragma: no cover - DataConfig validates the name
        raise DataError(f"data.corpus: unknown corpus {cfg.corpus!r}")
    train, val = split_docs(docs, cfg.val_fraction)
    if cfg.max_chars:
        val_cap = max(1, math.ceil(cfg.max_chars * cfg.val_fraction / (1 - cfg.val_fraction)))
        train, val = cap_docs(train, cfg.max_chars), cap_docs(val, val_cap)
    return Corpus(cfg.corpus, train, val)
