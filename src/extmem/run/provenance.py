"""Where a run came from: DIR/provenance.json, one entry per session that wrote DIR.

Each entry holds the versions of extmem, torch and Python, the command line (shell-quoted, or
"python API" when extmem was called from Python), the platform and host, the start time and,
when extmem runs from a git checkout, the revision and whether the tree was dirty. Entries
are appended (`{"sessions": [...]}`), so a resumed run keeps the history of every session;
`extmem train` writes one into the run directory, `finetune` into its results directory,
`augment` into the new run and `compare` into the sweep directory.

Nothing here needs the network, and a missing git or a tree that is not a checkout only
leaves the revision out.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"
API_COMMAND = "python API"
GIT_TIMEOUT_S = 5.0

_command: ContextVar[str | None] = ContextVar("extmem_command", default=None)


@contextlib.contextmanager
def invoked_as(argv: Sequence[str]) -> Iterator[None]:
    """Sessions started inside record `argv` (shell-quoted) as their command line; the CLI
    wraps each subcommand in this. Outside, the command line reads "python API"."""
    token = _command.set(shlex.join(str(a) for a in argv))
    try:
        yield
    finally:
        _command.reset(token)


def command_line() -> str:
    return _command.get() or API_COMMAND


def _package_dir() -> Path:
    import extmem
    return Path(extmem.__file__).resolve().parent


def _checkout_root(package: Path) -> Path | None:
    """The git work tree holding `package` (a source checkout, e.g. an editable install);
    None for an installed copy (site-packages) or a tree without .git."""
    if {"site-packages", "dist-packages"} & set(package.parts):
        return None
    for directory in package.parents:
        if (directory / ".git").exists():  # a directory, or a file in worktrees / submodules
            return directory
    return None


def _git(root: Path, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take index.lock in a tree others edit
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env=env, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, not executable, too slow
        return None
    return done.stdout if done.returncode == 0 else None


def git_revision(package: Path | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty", "root"} of the checkout extmem runs from; None when it does not run
    from one or git cannot tell. Dirty: tracked files changed, or files not yet added (those
    git ignores do not count)."""
    root = _checkout_root(package or _package_dir())
    if root is None:
        return None
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(root, "status", "--porcelain")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip()),
            "root": str(root)}


def _versions() -> dict[str, str]:
    import torch

    import extmem
    out = {"extmem": str(getattr(extmem, "__version__", "unknown")), "torch": torch.__version__,
           "python": platform.python_version()}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def _machine() -> dict[str, Any]:
    import torch
    out: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                           "host": socket.gethostname(), "python_executable": sys.executable}
    if torch.cuda.is_available():
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def session_entry(kind: str, **details: Any) -> dict[str, Any]:
    """One session: what ran (`kind`: train, finetune, augment, compare), when, where, with
    which versions, and `details` (e.g. the step a training session starts from)."""
    return {"kind": kind, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(), "versions": _versions(), **_machine(),
            "git": git_revision(), **details}


def read_provenance(directory: Path) -> list[dict[str, Any]]:
    """The sessions recorded in DIRECTORY/provenance.json, oldest first ([] if none, or if
    the file is unreadable: a torn write of a killed process)."""
    try:
        data = json.loads((directory / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    sessions = data.get("sessions") if isinstance(data, dict) else None
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


def record_session(directory: Path, kind: str, **details: Any) -> dict[str, Any]:
    """Append this session to DIRECTORY/provenance.json (written atomically); returns it."""
    entry = session_entry(kind, **details)
    path = directory / PROVENANCE_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # workers of one sweep: no clash
    payload = {"sessions": [*read_provenance(directory), entry]}
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return entry
