"""Hugging Face hub corpus: only the failure paths and a fake `datasets` module are tested."""

from __future__ import annotations

import sys
import types

import pytest

from extmem.data import DataConfig, load_corpus
from extmem.errors import DataError

HF_CFG = DataConfig(corpus="hf", hf_name="someone/stories", val_fraction=0.25)


def fake_datasets(load_dataset) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    return module


class FakeDataset(list):
    column_names = ("text", "id")


def test_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="needs the 'datasets' package.*pip install"):
        load_corpus(HF_CFG)


def test_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(name, config, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^data\.hf_name: cannot load hub dataset "
                       r"someone/stories split 'train' \(HF_HUB_OFFLINE is set"):
        load_corpus(HF_CFG)


def test_rows_become_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = FakeDataset({"text": f"story {i}", "id": i} for i in range(20))
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    corpus = load_corpus(HF_CFG)
    assert calls == [("someone/stories", None, "train")]
    assert sorted(corpus.train_docs + corpus.val_docs) == sorted(r["text"] for r in rows)
    with pytest.raises(DataError, match=r"^data\.text_field: 'body' is not a column.*text, id"):
        load_corpus(DataConfig(corpus="hf", hf_name="someone/stories", text_field="body"))
