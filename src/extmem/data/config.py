"""Data configs: which corpus to load, how to tokenize it and how long training windows are.

`DataConfig` lives under the `[data]` table of a run config and `FactsConfig` under
`[data.facts]`; both validate every field in `__post_init__` and name the field on error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from extmem.config import require, require_valid_fields
from extmem.data.facts_vocab import ATTRIBUTE_NAMES, TEMPLATES

MIN_VOCAB_SIZE = 260  # 256 byte-level symbols + 3 special tokens + at least one merge
MAX_VOCAB_SIZE = 1_000_000
MAX_ENTITIES = 100_000


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class FactsConfig:
    """Synthetic knowledge corpus: made-up entities, one value per attribute, many phrasings."""

    n_entities: int = 300  # number of made-up entities
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTE_NAMES))
    templates_per_attribute: int = 4  # sentence templates used per fact
    heldout_templates: int = 1  # of those, held out of training for validation and probes
    seed: int = 0  # generation seed (names, values, template choice)

    def __post_init__(self) -> None:
        p = "data.facts"
        require_valid_fields(self, p)
        require(_is_int(self.n_entities) and 1 <= self.n_entities <= MAX_ENTITIES,
                f"{p}.n_entities: {self.n_entities!r} is out of range; "
                f"allowed 1 <= n_entities <= {MAX_ENTITIES}")
        require(isinstance(self.attributes, (list, tuple)) and len(self.attributes) > 0,
                f"{p}.attributes: {self.attributes!r} must be a non-empty list; "
                f"allowed names: {', '.join(ATTRIBUTE_NAMES)}")
        self.attributes = list(self.attributes)
        for name in self.attributes:
            require(name in TEMPLATES, f"{p}.attributes: unknown attribute {name!r}; "
                    f"allowed names: {', '.join(ATTRIBUTE_NAMES)}")
        duplicates = sorted({a for a in self.attributes if self.attributes.count(a) > 1})
        require(not duplicates, f"{p}.attributes: {duplicates[0] if duplicates else ''!r} "
                "is listed more than once; list each attribute at most once")
        available = min(len(TEMPLATES[a]) for a in self.attributes)
        require(_is_int(self.templates_per_attribute)
                and 2 <= self.templates_per_attribute <= available,
                f"{p}.templates_per_attribute: {self.templates_per_attribute!r} is out of range; "
                f"allowed 2 <= templates_per_attribute <= {available} "
                "(templates available for the chosen attributes)")
        require(_is_int(self.heldout_templates)
                and 1 <= self.heldout_templates < self.templates_per_attribute,
                f"{p}.heldout_templates: {self.heldout_templates!r} is out of range; allowed "
                f"1 <= heldout_templates < templates_per_attribute "
                f"({self.templates_per_attribute})")
        require(_is_int(self.seed) and self.seed >= 0,
                f"{p}.seed: {self.seed!r} is not allowed; use an integer >= 0")


@dataclass
class DataConfig:
    """Which corpus to load, how to split and tokenize it, and the training window length."""

    corpus: Literal["facts", "gcide", "files", "hf"] = "facts"
    path: str = ""  # "files": a file, a directory, or a glob of .txt / .jsonl files
    hf_name: str = ""  # "hf": dataset name on the Hugging Face hub
    hf_config: str = ""  # "hf": dataset configuration name ("" = default)
    hf_split: str = "train"  # "hf": split to load (train/val are re-split by content hash)
    text_field: str = "text"  # field holding the text in JSONL / HF rows
    # "files" / "hf": read documents one at a time into memory-mapped token files (cached),
    # never the whole corpus in RAM; a trained tokenizer learns from the first 20M characters
    streaming: bool = False
    # "hf": load_dataset(..., streaming=True): rows read as iterated (implies streaming)
    hf_streaming: bool = False
    val_fraction: float = 0.05  # document-level validation fraction (not used by "facts")
    max_chars: int = 0  # 0 = no cap; otherwise cap total training characters
    vocab_size: int = 512  # trained byte-level BPE size (incl. specials); ignored with tokenizer
    # "" = train a byte-level BPE on the corpus; else a tokenizer.json file or a Hugging Face
    # tokenizer directory (tokenizer.json, vocab.json + merges.txt, or vocab.txt)
    tokenizer: str = ""
    seq_len: int = 128  # tokens per training window
    facts: FactsConfig = field(default_factory=FactsConfig)

    def __post_init__(self) -> None:
        p = "data"
        require_valid_fields(self, p)
        for name in ("path", "hf_name", "hf_config", "hf_split", "text_field", "tokenizer"):
            value = getattr(self, name)
            require(isinstance(value, str), f"{p}.{name}: expected a string, got {value!r}")
        require(self.corpus != "files" or self.path.strip() != "",
                f"{p}.path: is empty but corpus = 'files' needs it; set it to a .txt/.jsonl "
                "file, a directory or a glob such as 'texts/*.txt'")
        require(self.corpus != "hf" or self.hf_name.strip() != "",
                f"{p}.hf_name: is empty but corpus = 'hf' needs it; set it to a dataset name "
                "such as 'roneneldan/TinyStories'")
        require(self.corpus != "hf" or self.hf_split.strip() != "",
                f"{p}.hf_split: is empty; set it to a split name such as 'train'")
        for name in ("streaming", "hf_streaming"):
            require(isinstance(getattr(self, name), bool),
                    f"{p}.{name}: expected true or false, got {getattr(self, name)!r}")
        require(not self.streaming or self.corpus in ("files", "hf"),
                f"{p}.streaming: not available for corpus {self.corpus!r}; allowed with "
                "corpus = 'files' or 'hf'")
        require(not self.hf_streaming or self.corpus == "hf",
                f"{p}.hf_streaming: needs corpus = 'hf', got {self.corpus!r}")
        require(self.text_field.strip() != "",
                f"{p}.text_field: is empty; set it to the row field holding the text")
        require(isinstance(self.val_fraction, (int, float)) and not isinstance(
            self.val_fraction, bool) and 0 < self.val_fraction < 1,
            f"{p}.val_fraction: {self.val_fraction!r} is out of range; "
            "allowed 0 < val_fraction < 1")
        require(_is_int(self.max_chars) and self.max_chars >= 0,
                f"{p}.max_chars: {self.max_chars!r} is out of range; "
                "allowed 0 (no cap) or a positive number of characters")
        require(_is_int(self.vocab_size) and MIN_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE,
                f"{p}.vocab_size: {self.vocab_size!r} is out of range; allowed "
                f"{MIN_VOCAB_SIZE} <= vocab_size <= {MAX_VOCAB_SIZE} (256 bytes + 3 special "
                "tokens + merges)")
        require(_is_int(self.seq_len) and self.seq_len >= 2,
                f"{p}.seq_len: {self.seq_len!r} is out of range; allowed seq_len >= 2")
        require(isinstance(self.facts, FactsConfig),
                f"{p}.facts: expected a [data.facts] table, got {self.facts!r}")
