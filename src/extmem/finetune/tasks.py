"""Labelled text for `extmem finetune --task TASK` (downstream evaluation of pretrained memory
models, as in Kim & Jung 2020, "Large Product Key Memory for Pretrained Language Models").

TASK is one of
- `wordnet-supersense`: WordNet gloss -> one of 45 lexicographer classes (wordnet.py);
- `gcide-pos`: a GCIDE definition -> the part of speech of the word (4 classes), from the
  validation split that continued pretraining on GCIDE never sees (gcide_pos.py);
- `facts-attribute`: generated from the synthetic facts vocabulary: a sentence about a made-up
  person -> which attribute it states (8 classes); small, offline, used by the tests;
- a `.csv` file (header with `text,label` columns) or a `.jsonl` file (rows with those fields;
  the names are `text_field` / `label_field`);
- any other name: a Hugging Face `datasets` dataset (needs the package and the hub).
Labels are strings; classes are their sorted distinct values.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extmem.data.facts import make_names
from extmem.data.facts_vocab import TEMPLATES, VALUES
from extmem.data.files import read_utf8
from extmem.errors import DataError
from extmem.finetune.config import FinetuneConfig
from extmem.finetune.gcide_pos import load_gcide_pos
from extmem.finetune.wordnet import load_supersenses

BUILTIN_TASKS = ("wordnet-supersense", "gcide-pos", "facts-attribute")
FILE_SUFFIXES = (".csv", ".jsonl")
HF_HINT = 'pip install -c constraints.txt "datasets>=2.14"'


@dataclass
class TaskData:
    """Examples split into train / held-out eval; labels index `classes`."""

    name: str
    classes: list[str]
    train_texts: list[str]
    train_labels: list[int]
    eval_texts: list[str]
    eval_labels: list[int]


def facts_attribute(n_entities: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Every template of every attribute, filled for `n_entities` made-up people."""
    rng = random.Random(seed)
    texts, labels = [], []
    for name in make_names(n_entities, rng):
        for attribute, templates in TEMPLATES.items():
            value = rng.choice(VALUES[attribute])
            for template in templates:
                texts.append(template.format(name=name, value=value))
                labels.append(attribute)
    return texts, labels


def _rows_csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise DataError(f"{path}: empty CSV file; expected a header line with text,label")
    return list(reader)


def _rows_jsonl(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append(row)
    return rows


def load_file_task(path: Path, text_field: str, label_field: str) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise DataError(f"--task {path}: file does not exist")
    content = read_utf8(path)
    rows = _rows_csv(path, content) if path.suffix.lower() == ".csv" else _rows_jsonl(path, content)
    texts, labels = [], []
    for i, row in enumerate(rows, start=1):
        missing = [f for f in (text_field, label_field) if f not in row]
        if missing:
            raise DataError(f"{path}: row {i} has no {missing[0]!r} field (found: "
                            f"{', '.join(map(str, row))}); set --set text_field=... / "
                            "label_field=...")
        if row[text_field] is None or row[label_field] is None:
            raise DataError(f"{path}: row {i} has an empty {text_field!r} or {label_field!r}")
        texts.append(str(row[text_field]).strip())
        labels.append(str(row[label_field]).strip())
    if not texts:
        raise DataError(f"{path}: no labelled rows")
    return texts, labels


def load_hf_task(name: str, cfg: FinetuneConfig) -> tuple[list[str], list[str]]:
    for key, value in {"HF_HUB_ETAG_TIMEOUT": "10", "HF_HUB_DOWNLOAD_TIMEOUT": "30"}.items():
        os.environ.setdefault(key, value)
    builtin = f"built-in tasks: {', '.join(BUILTIN_TASKS)}, or a .csv/.jsonl file"
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise DataError(f"--task {name!r} is read as a Hugging Face dataset, which needs the "
                        f"'datasets' package (install it with: {HF_HINT}); {builtin}") from None
    try:
        dataset = datasets.load_dataset(name, cfg.hf_config or None, split=cfg.hf_split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, network: one line each
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"--task {name!r}: cannot load Hugging Face dataset (offline or "
                        f"unknown name?): {type(exc).__name__}: {reason}; {builtin}") from None
    columns = list(getattr(dataset, "column_names", None) or [])
    for field in (cfg.text_field, cfg.label_field):
        if columns and field not in columns:
            raise DataError(f"--task {name!r}: no column {field!r}; columns are "
                            f"{', '.join(columns)} (set --set text_field=... / label_field=...)")
    feature = getattr(dataset, "features", {}).get(cfg.label_field)
    names = getattr(feature, "names", None)
    texts = [str(t) for t in dataset[cfg.text_field]]
    labels = [names[v] if names else str(v) for v in dataset[cfg.label_field]]
    return texts, labels


def load_examples(task: str, cfg: FinetuneConfig) -> tuple[list[str], list[str]]:
    if task == "wordnet-supersense":
        return load_supersenses(cfg.wordnet_dir)
    if task == "facts-attribute":
        return facts_attribute(cfg.facts_entities, cfg.seed)
    if task == "gcide-pos":
        return load_gcide_pos()
    path = Path(task).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise DataError(f"--task {task}: unsupported file type; use .csv or .jsonl")
        return load_file_task(path, cfg.text_field, cfg.label_field)
    return load_hf_task(task, cfg)


def _key(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode()).digest()[:8], "little")


def load_task(task: str, cfg: FinetuneConfig) -> TaskData:
    """Examples of `task`, capped at max_examples, split by a hash of the text (the same text
    always lands in the same split)."""
    texts, labels = load_examples(task, cfg)
    pairs = [(t, y) for t, y in zip(texts, labels, strict=True) if t]
    if cfg.max_examples and len(pairs) > cfg.max_examples:
        pairs = sorted(pairs, key=lambda p: _key(p[0], f"subset:{cfg.seed}"))[: cfg.max_examples]
    threshold = cfg.eval_fraction * 2 ** 64
    train = [p for p in pairs if _key(p[0], "split") >= threshold]
    held = [p for p in pairs if _key(p[0], "split") < threshold]
    if not train or not held:
        raise DataError(f"--task {task}: {len(pairs)} examples are too few to hold out "
                        f"{cfg.eval_fraction:.0%} for evaluation")
    classes = sorted({y for _, y in pairs})
    if len(classes) < 2:
        raise DataError(f"--task {task}: only one label ({classes[0]!r}); need at least two")
    index = {c: i for i, c in enumerate(classes)}
    return TaskData(task, classes, [t for t, _ in train], [index[y] for _, y in train],
                    [t for t, _ in held], [index[y] for _, y in held])
