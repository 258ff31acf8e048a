"""Load a Hugging Face hub dataset (`data.corpus = "hf"`), importing `datasets` lazily.

Network timeouts are shortened (unless already set in the environment) so that an
unreachable hub fails within seconds instead of hanging; `HF_HUB_OFFLINE=1` is respected
and then only locally cached datasets load. Every failure is reported as one DataError line.
`iter_hf(..., streaming=True)` reads rows as they are iterated (`data.hf_streaming`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

from extmem.errors import DataError

HF_HINT = 'pip install -c constraints.txt "datasets>=2.14"'
_TIMEOUTS = {"HF_HUB_ETAG_TIMEOUT": "10", "HF_HUB_DOWNLOAD_TIMEOUT": "30"}


def _import_datasets() -> Any:
    for key, value in _TIMEOUTS.items():
        os.environ.setdefault(key, value)
    try:
        return importlib.import_module("datasets")
    except ImportError:
        raise DataError("data.corpus = 'hf' needs the 'datasets' package, which is not "
                        f"installed; install it with: {HF_HINT}") from None


def iter_hf(name: str, config: str = "", split: str = "train", text_field: str = "text",
            streaming: bool = False) -> Iterator[str]:
    """The stripped, non-empty `text_field` of each row, in order. `streaming`: rows come from
    `load_dataset(..., streaming=True)` (read as they are iterated, never the whole dataset
    on disk or in RAM), where the dataset's loader supports it."""
    datasets = _import_datasets()
    where = f"{name}" + (f" ({config})" if config else "") + f" split {split!r}"
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split,
                                        **({"streaming": True} if streaming else {}))
    except Exception as exc:  # noqa: BLE001 - hub, network, offline, bad name: one line each
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        mode = " (HF_HUB_OFFLINE is set, so only locally cached datasets can load)" \
            if offline else ""
        raise DataError(f"data.hf_name: cannot load hub dataset {where}{mode}: "
                        f"{type(exc).__name__}: {reason}") from None
    columns = list(getattr(dataset, "column_names", None) or [])
    if columns and text_field not in columns:
        raise DataError(f"data.text_field: {text_field!r} is not a column of {where}; "
                        f"columns are: {', '.join(columns)}")
    for i, row in enumerate(dataset):
        text = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{where} row {i}: field {text_field!r} is "
                            f"{type(text).__name__}, expected a string")
        text = text.strip()
        if text:
            yield text


def load_hf(name: str, config: str = "", split: str = "train", text_field: str = "text",
            max_chars: int = 0) -> list[str]:
    """Documents from `text_field` of each row; stops early once `max_chars` are collected
    (0 = all rows)."""
    docs: list[str] = []
    total = 0
    for text in iter_hf(name, config, split, text_field):
        docs.append(text)
        total += len(text)
        if max_chars and total >= max_chars:
            break
    if not docs:
        where = f"{name}" + (f" ({config})" if config else "") + f" split {split!r}"
        raise DataError(f"{where}: no non-empty {text_field!r} texts")
    return docs
