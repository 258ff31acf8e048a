"""Local .txt / .jsonl corpora, the content-hash split and the max_chars cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extmem.data import DataConfig, load_corpus
from extmem.data.corpora import cap_docs, split_docs
from extmem.data.files import load_files
from extmem.errors import DataError

PARAGRAPHS = [f"Paragraph number {i} talks about topic {i * 7 % 11}." for i in range(40)]


def write_txt(path: Path, paragraphs: list[str]) -> Path:
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def files_cfg(path: Path | str, **kwargs) -> DataConfig:
    return DataConfig(corpus="files", path=str(path), **kwargs)


def test_txt_file_splits_on_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("first line\nstill first\n\n\n  \nsecond\r\n\r\nthird\n", encoding="utf-8")
    assert load_files(str(path)) == ["first line\nstill first", "second", "third"]


def test_jsonl_rows_and_text_field(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"body": "alpha"}, {"body": "  "}, {"body": "beta", "id": 2}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_files(str(path), "body") == ["alpha", "beta"]
    with pytest.raises(DataError, match=r"rows\.jsonl:1: no field 'text'"):
        load_files(str(path), "text")


def test_directory_and_glob(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_txt(tmp_path / "b.txt", PARAGRAPHS[:20])
    write_txt(tmp_path / "sub" / "a.txt", PARAGRAPHS[20:])
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    (tmp_path / "ignored.md").write_text("not loaded")
    docs = load_files(str(tmp_path))
    assert docs == PARAGRAPHS[:20] + ["from jsonl"] + PARAGRAPHS[20:]  # sorted path order
    assert load_files(str(tmp_path / "*.txt")) == PARAGRAPHS[:20]
    assert load_files(str(tmp_path / "**" / "*.txt")) == PARAGRAPHS[:20] + PARAGRAPHS[20:]


def test_non_utf8_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n\nmore \xff bytes")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 at byte offset 16"):
        load_corpus(files_cfg(path))


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.jsonl:3: invalid JSON"):
        load_corpus(files_cfg(path))


def test_missing_empty_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(files_cfg(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="matched no .txt or .jsonl files"):
        load_corpus(files_cfg(tmp_path / "*.txt"))
    with pytest.raises(DataError, match="contains no .txt or .jsonl files"):
        load_corpus(files_cfg(tmp_path))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="unsupported extension"):
        load_corpus(files_cfg(tmp_path / "notes.md"))
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="all are empty"):
        load_corpus(files_cfg(tmp_path))
    (tmp_path / "one.txt").write_text("just one document")
    with pytest.raises(DataError, match="at least 2 are needed"):
        load_corpus(files_cfg(tmp_path / "one.txt"))


def test_split_is_deterministic_disjoint_and_order_free(tmp_path: Path) -> None:
    docs = [f"document {i}:" + " word" * (i % 5) for i in range(200)]
    train, val = split_docs(docs, 0.1)
    assert (train, val) == split_docs(docs, 0.1)
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    assert 5 <= len(val) <= 40
    r_train, r_val = split_docs(docs[::-1], 0.1)
    assert set(r_train) == set(train) and set(r_val) == set(val)
    # through load_corpus, from a file
    write_txt(tmp_path / "docs.txt", docs)
    a = load_corpus(files_cfg(tmp_path / "docs.txt", val_fraction=0.1))
    assert (a.train_docs, a.val_docs) == (train, val) and a.probes == []


def test_split_never_leaves_a_side_empty() -> None:
    for fraction in (1e-9, 1 - 1e-9):
        train, val = split_docs(["one", "two"], fraction)
        assert len(train) == len(val) == 1
    train, val = split_docs(["same", "same"], 0.5)
    assert train == val == ["same"]


def test_max_chars_caps_training_text(tmp_path: Path) -> None:
    assert cap_docs(["abcd", "efgh", "ij"], 6) == ["abcd", "ef"]
    assert cap_docs(["abcd"], 0) == ["abcd"]
    write_txt(tmp_path / "docs.txt", PARAGRAPHS)
    full = load_corpus(files_cfg(tmp_path / "docs.txt", val_fraction=0.2))
    capped = load_corpus(files_cfg(tmp_path / "docs.txt", val_fraction=0.2, max_chars=200))
    assert capped.train_chars == 200 and full.train_chars > 200
    assert capped.train_docs[:-1] == full.train_docs[: len(capped.train_docs) - 1]
    assert 0 < capped.val_chars <= 50
