"""Benchmark results as Markdown: one `## <name>` section per benchmark in one file.

`update_section` replaces only the named section (from its `## ` heading up to the next `## `
heading outside a code fence) and keeps everything else; a missing file or section is created.
Writes are atomic (temporary file in the same folder, then rename), so an interrupted run never
leaves a half-written results file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from extmem.bench.timing import load_text

FILE_HEADER = (
    "# Benchmarks\n\n"
    "Measured results of `extmem bench`. Each section holds the exact command, the config, the "
    "environment and the numbers of one run; rerun the command to refresh it.\n"
)


def command_lines(command: str) -> list[str]:
    """The "Command:" block of a section: the exact command that reruns it, fenced."""
    return ["Command:", "", "```", command, "```", ""]


def environment_line(result: dict) -> str:
    """One "Environment: ..." line from a result's `environment` (bench/timing.py) and
    `wall_s`: torch, CPUs, torch threads, load average at start and end, date, run time."""
    env = result["environment"]
    return (f"Environment: torch {env['torch']}, {env['cpu_count']} CPUs, {env['torch_threads']} "
            f"torch threads, {load_text(env)}, {env['date_utc']}; run took {result['wall_s']} s.")


def _heading_lines(lines: list[str]) -> list[int]:
    """Indices of level-2 headings (`## x`), ignoring lines inside fenced code blocks."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            found.append(i)
    return found


def replace_section(text: str, name: str, section: str) -> str:
    """Return `text` with section `## name` replaced by `section` (appended when absent).

    `section` must itself start with the `## name` heading. Duplicate `## name` sections left by
    hand edits are collapsed into the one new section.
    """
    heading = f"## {name}"
    if section.splitlines()[0].strip() != heading:
        raise ValueError(f"section must start with {heading!r}")
    section = section.rstrip("\n") + "\n"
    lines = text.splitlines(keepends=True)
    headings = _heading_lines(lines)
    spans = []  # (start, end) line ranges of every `## name` section
    for j, start in enumerate(headings):
        if lines[start].strip() == heading:
            end = headings[j + 1] if j + 1 < len(headings) else len(lines)
            spans.append((start, end))
    if not spans:
        body = text.rstrip("\n")
        return (body + "\n\n" if body else "") + section
    first = spans[0][0]
    kept = [line for i, line in enumerate(lines)
            if not any(start <= i < end for start, end in spans)]
    before = "".join(kept[:first]).rstrip("\n")
    after = "".join(kept[first:]).lstrip("\n")
    out = (before + "\n\n" if before else "") + section
    return out + ("\n" + after if after else "")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; keep the existing file's mode, or the umask default for a new one
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_section(path: Path, name: str, section: str) -> None:
    """Replace (or add) section `## name` in the Markdown file at `path`, atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else FILE_HEADER
    write_atomic(path, replace_section(text, name, section))
