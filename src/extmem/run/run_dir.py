"""The run directory: config.toml, tokenizer.json, metrics.jsonl, tb/, checkpoints/, results.json.

Everything needed to resume, evaluate or report a run lives here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from extmem.config import from_dict, read_toml, to_dict, write_toml
from extmem.errors import ConfigError
from extmem.run.config import RunConfig

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
TOKENIZER_FILE = "tokenizer.json"


def fresh_run_dir(base: Path) -> Path:
    """`base` if it holds no run yet, else base-2, base-3, ... (never overwrite a run)."""
    candidate, n = base, 1
    while (candidate / CONFIG_FILE).exists():
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
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(self.path)

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record)) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62  # a torn last line from a crash: drop it


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
