"""Helpers for tests that drive the CLI in-process."""

from __future__ import annotations

import json

from extmem.cli import main


def run_json(capsys, *argv: str) -> dict:
    """Run `extmem ARGV --json`, expect success, return the one JSON object it printed."""
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def error_line(capsys, *argv: str) -> str:
    """Run `extmem ARGV`, expect exit 2 and exactly one `error: ...` line; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]
