"""Helpers for tests that drive the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

from extmem.cli import main


def train_tiny(root: Path, *overrides: str) -> Path:
    """Train the tiny config (tests/conftest.py) into ROOT/run with `--set` overrides; the run."""
    from tests.conftest import TINY_TOML
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    out = root / "run"
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["train", str(config), "--out", str(out), "--quiet", *sets]) == 0
    return out


def run_json(capsys, *argv: str) -> dict:
    """Run `extmem ARGV --json`, expect success, return the one JSON object it printed."""
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def run_sweep(capsys, sweep: Path, text: str, out: Path, *overrides: str) -> dict:
    """Write the sweep file `sweep` from `text`, run `extmem compare` on it into `out` (quiet,
    with `--set` overrides) and return its JSON result."""
    sweep.write_text(text)
    sets = [arg for override in overrides for arg in ("--set", override)]
    return run_json(capsys, "compare", str(sweep), "--out", str(out), "--quiet", *sets)


def error_line(capsys, *argv: str) -> str:
    """Run `extmem ARGV`, expect exit 2 and exactly one `error: ...` line; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]
