"""Load an existing tokenizer (`data.tokenizer = PATH`) instead of training one.

PATH is a `tokenizer.json` file, or a Hugging Face tokenizer directory holding one of:
`tokenizer.json`; `vocab.json` + `merges.txt` (GPT-2 byte-level BPE); `vocab.txt` (BERT
WordPiece; lower-cased unless its `tokenizer_config.json` says `"do_lower_case": false`).
The last two are built into a `tokenizers.Tokenizer` here, with the vocabulary's known
special tokens (special.py) registered so they are never split.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from extmem.data.special import KNOWN_SPECIAL_TOKENS
from extmem.errors import DataError

ACCEPTED = ("a tokenizer.json file, or a directory with tokenizer.json, vocab.json + merges.txt "
            "(GPT-2 BPE) or vocab.txt (BERT WordPiece)")


def _register_specials(tokenizer: Tokenizer) -> Tokenizer:
    vocab = tokenizer.get_vocab()
    present = [token for token in KNOWN_SPECIAL_TOKENS if token in vocab]
    if present:
        tokenizer.add_special_tokens(present)
    return tokenizer


def _gpt2_bpe(vocab: Path, merges: Path) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return _register_specials(tokenizer)


def _lowercase(directory: Path) -> bool:
    config = directory / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True)
        return bool(value)
    return True


def _wordpiece(vocab: Path) -> Tokenizer:
    vocab_ids = {}
    for line in vocab.read_text(encoding="utf-8").splitlines():
        token = line.rstrip("\n")
        if token and token not in vocab_ids:
            vocab_ids[token] = len(vocab_ids)
    unk = "[UNK]" if "[UNK]" in vocab_ids else next(iter(vocab_ids), "[UNK]")
    tokenizer = Tokenizer(models.WordPiece(vocab_ids, unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=_lowercase(vocab.parent))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return _register_specials(tokenizer)


def _from_directory(directory: Path) -> Tokenizer:
    if (directory / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(directory / "tokenizer.json"))
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return _gpt2_bpe(directory / "vocab.json", directory / "merges.txt")
    if (directory / "vocab.txt").is_file():
        return _wordpiece(directory / "vocab.txt")
    raise DataError(f"data.tokenizer: {directory} holds no tokenizer files; allowed: {ACCEPTED}")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at `path` (see the module docstring); one-line DataError otherwise."""
    where = Path(path).expanduser()
    if not where.exists():
        raise DataError(f"data.tokenizer: {where} does not exist; allowed: {ACCEPTED}")
    try:
        tokenizer = _from_directory(where) if where.is_dir() else Tokenizer.from_file(str(where))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the Rust loader raises plain Exception
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"data.tokenizer: cannot read {where} ({reason}); "
                        f"allowed: {ACCEPTED}") from None
    if tokenizer.get_vocab_size() < 2:
        raise DataError(f"data.tokenizer: {where} has an empty vocabulary")
    return tokenizer
