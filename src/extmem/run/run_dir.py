"""The run directory: config.toml, tokenizer.json, metrics.jsonl, tb/, checkpoints/, results.json.

Everything needed to resume, evaluate or report a run lives here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from extmem.config import from_dict, read_toml, to_dict, write_toml
from extmem.errors import ConfigError
from extmem.run.config import RunConfig

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
TOKENIZER_FILE = "tokenizer.json"


def fresh_run_dir(base: Path, marker: str = CONFIG_FILE) -> Path:
    """`base` if it holds no run yet, else base-2, base-3, ... (never overwrite a run); a
    directory holds one when it has `marker` (`extmem bench` marks its own by results.json)."""
    candidate, n = base, 1
    while (candidate / marker).exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    from extmem.config import apply_overrides
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    return from_dict(RunConfig, apply_overrides(read_toml(path), overrides or []))


def save_run_config(run_dir: Path, cfg: RunConfig) -> None:
    write_toml(run_dir / CONFIG_FILE, to_dict(cfg))


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricsLog:
    """Append-only metrics.jsonl; on resume, entries after the resumed step are dropped
    (they will be produced again, identically)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [line for line in _lines(self.path)
                    if line.strip() and _step_of(line) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(self.path)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record)) + "\n")


def _lines(path: Path) -> list[str]:
    """The lines of a JSONL file; a line that is not UTF-8 (a torn or damaged write) reads as
    an empty one, which every reader skips like any other line it cannot parse."""
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append("")
    return out


def _record(line: str) -> dict | None:
    """One metrics record, or None for a line that is not a JSON object (a torn write)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _step_of(line: str) -> int:
    record = _record(line)
    try:
        return int(record.get("step", 0)) if record is not None else 1 << 62
    except (TypeError, ValueError, OverflowError):
        return 1 << 62  # a damaged line (e.g. from a crash): drop it


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of metrics.jsonl; lines that are not JSON objects are skipped."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [record for line in _lines(path) if (record := _record(line)) is not None]


def write_json(path: Path, data: dict) -> None:
    """Atomically (a per-process temporary file, renamed: concurrent writers never mix)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
