"""Load documents from local .txt and .jsonl files (`data.corpus = "files"`).

`data.path` is a file, a directory (searched recursively) or a glob pattern. Files are read in
sorted path order. In a .txt file, documents are separated by blank lines; in a .jsonl file,
each non-blank line is a JSON object whose `data.text_field` string is one document.
Empty documents are skipped. `iter_files` yields the same documents one at a time, reading
files line by line (`data.streaming`).
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from extmem.errors import DataError

EXTENSIONS: tuple[str, ...] = (".txt", ".jsonl")
_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n")


def find_files(path: str) -> list[Path]:
    """Resolve `path` (file, directory or glob) to the sorted list of .txt/.jsonl files."""
    allowed = " or ".join(EXTENSIONS)
    if any(ch in path for ch in "*?["):
        matches = [Path(p) for p in glob.glob(path, recursive=True)]
        files = sorted(p for p in matches if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"data.path: the glob {path!r} matched no {allowed} files "
                            f"({len(matches)} paths matched in all)")
        return files
    target = Path(path).expanduser()
    if target.is_dir():
        files = sorted(p for p in target.rglob("*")
                       if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"data.path: the directory {path!r} contains no {allowed} files")
        return files
    if target.is_file():
        if target.suffix.lower() not in EXTENSIONS:
            raise DataError(f"data.path: {path!r} has an unsupported extension; "
                            f"allowed {allowed}")
        return [target]
    raise DataError(f"data.path: {path!r} does not exist (expected a {allowed} file, "
                    "a directory or a glob)")


def read_utf8(path: Path) -> str:
    """Read a file as UTF-8 (a leading BOM is dropped, newlines normalised to \\n)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start}; "
                        "convert the file to UTF-8") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def txt_documents(path: Path) -> list[str]:
    """Blank-line separated documents of a .txt file."""
    parts = _BLANK_LINES.split(read_utf8(path))
    return [part.strip() for part in parts if part.strip()]


def jsonl_documents_of(lines: Iterable[tuple[int, str]], path: Path,
                       text_field: str) -> list[str]:
    """The `text_field` string of each (line number, JSON line) of `path`."""
    docs: list[str] = []
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column "
                            f"{exc.colno})") from None
        if not isinstance(row, dict) or text_field not in row:
            keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}:{lineno}: no field {text_field!r} (found: {keys}); "
                            "set data.text_field to the field holding the text")
        text = row[text_field]
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: field {text_field!r} is "
                            f"{type(text).__name__}, expected a string")
        if text.strip():
            docs.append(text.strip())
    return docs


def jsonl_documents(path: Path, text_field: str) -> list[str]:
    """The `text_field` string of each row of a .jsonl file."""
    return jsonl_documents_of(enumerate(read_utf8(path).split("\n"), start=1), path, text_field)


def load_files(path: str, text_field: str = "text") -> list[str]:
    """All documents under `path`, in sorted file order."""
    files = find_files(path)
    docs: list[str] = []
    for file in files:
        if file.suffix.lower() == ".jsonl":
            docs.extend(jsonl_documents(file, text_field))
        else:
            docs.extend(txt_documents(file))
    if not docs:
        raise DataError(f"data.path: {path!r} matched {len(files)} file(s) but all are empty "
                        "(no non-blank documents)")
    return docs


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline), read incrementally as UTF-8 (BOM dropped,
    newlines normalised like `read_utf8`)."""
    lineno = 0
    try:
        with path.open("r", encoding="utf-8-sig", newline=None) as file:
            for lineno, line in enumerate(file, start=1):
                yield lineno, line.rstrip("\n")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8 near line {lineno + 1}; "
                        "convert the file to UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def iter_txt_documents(path: Path) -> Iterator[str]:
    """`txt_documents`, one document at a time (a line of spaces/tabs ends a document)."""
    lines: list[str] = []
    for _, line in _lines(path):
        if line.strip(" \t\f\v"):
            lines.append(line)
        elif lines:
            doc = "\n".join(lines).strip()
            lines = []
            if doc:
                yield doc
    doc = "\n".join(lines).strip()
    if doc:
        yield doc


def iter_jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    """`jsonl_documents`, one row at a time."""
    for lineno, line in _lines(path):
        if line.strip():
            yield from jsonl_documents_of([(lineno, line)], path, text_field)


def iter_files(path: str, text_field: str = "text") -> Iterator[str]:
    """`load_files`, one document at a time (never a whole file in memory)."""
    for file in find_files(path):
        if file.suffix.lower() == ".jsonl":
            yield from iter_jsonl_documents(file, text_field)
        else:
            yield from iter_txt_documents(file)
