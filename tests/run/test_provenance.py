"""provenance.json: every session that writes a run (train, resume, augment, finetune, compare)
records versions, command line, machine, start time and the git revision of the checkout."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import extmem
from extmem.cli import main
from extmem.config import from_dict, read_toml
from extmem.run import provenance
from extmem.run.config import RunConfig
from extmem.run.provenance import (
    API_COMMAND,
    PROVENANCE_FILE,
    git_revision,
    invoked_as,
    read_provenance,
    record_session,
)
from extmem.train.loop import TrainOptions, train

HAS_GIT = shutil.which("git") is not None


def test_api_session_then_cli_resume_append_to_the_history(tiny_config, tmp_path):
    out = tmp_path / "run"
    cfg = from_dict(RunConfig, read_toml(tiny_config))
    cfg.train.steps = 2
    train(cfg, out, TrainOptions(quiet=True))
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--set", "train.steps=3"]) == 0

    first, second = read_provenance(out)
    assert first["kind"] == second["kind"] == "train"
    assert first["command"] == API_COMMAND
    assert second["command"] == (f"extmem train --resume --out {out} --quiet "
                                 "--set train.steps=3")
    assert (first["start_step"], second["start_step"]) == (0, 2)
    for session in (first, second):
        assert session["versions"] == {"extmem": extmem.__version__, "torch": torch.__version__,
                                       "python": platform.python_version(),
                                       **({"cuda": torch.version.cuda} if torch.version.cuda
                                          else {})}
        assert session["host"] and session["platform"] and session["world_size"] == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", session["started"])
        git = session["git"]  # this test runs from a checkout, or from an installed copy
        assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"])
                               and isinstance(git["dirty"], bool))


def test_command_line_is_shell_quoted():
    with invoked_as(["extmem", "train", "my config.toml", "--set", "data.path=a b"]):
        assert provenance.command_line() == "extmem train 'my config.toml' --set 'data.path=a b'"
    assert provenance.command_line() == API_COMMAND


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(not HAS_GIT, reason="needs git")
def test_revision_and_dirty_flag_of_a_checkout(tmp_path):
    package = tmp_path / "src" / "extmem"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (tmp_path / ".gitignore").write_text("runs/\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    commit = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x").write_text("ignored: not dirty")
    assert git_revision(package) == {"commit": commit, "dirty": False, "root": str(tmp_path)}
    (package / "__init__.py").write_text("changed = True\n")
    assert git_revision(package)["dirty"] is True


def test_no_revision_without_a_checkout_or_without_git(tmp_path, monkeypatch):
    package = tmp_path / "src" / "extmem"
    package.mkdir(parents=True)
    assert git_revision(package) is None  # not a checkout (no .git above it)
    (tmp_path / ".git").mkdir()
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "extmem"
    installed.mkdir(parents=True)
    assert git_revision(installed) is None  # an installed copy inside some other repository
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git missing
    assert git_revision(package) is None
    monkeypatch.setattr(provenance, "_package_dir", lambda: package)
    entry = record_session(tmp_path, "train")
    assert entry["git"] is None and read_provenance(tmp_path) == [json.loads(json.dumps(entry))]


def test_a_damaged_file_does_not_stop_a_session(tmp_path):
    (tmp_path / PROVENANCE_FILE).write_text('{"sessions": [')  # a torn write
    record_session(tmp_path, "compare", sweep="s.toml")
    (entry,) = read_provenance(tmp_path)
    assert entry["kind"] == "compare" and entry["sweep"] == "s.toml"
