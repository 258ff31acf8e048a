"""The configs that ship inside the package (`extmem/configs/`), addressable by name.

`extmem train quickstart`, `extmem compare quickstart` and a sweep's `base = "dense"` read
these files from the installed package (`importlib.resources`: the same files in an editable
checkout and in a wheel), so they work from any directory. In the repository, `configs/` is a
link to the same tree.

How an argument resolves (`resolve`):

1. It ends in `.toml`: a path (relative to the current directory, or for a sweep's `base` to
   the sweep file).
2. It names an existing file there: a path. A file wins over a built-in name: with a file
   `quickstart` in the current directory, `extmem train quickstart` reads that file.
3. Anything else is a built-in name, nested with `/` (`quickstart`, `design/token-add`,
   `sweeps/gcide-core`); `extmem compare NAME` looks in `sweeps/` first.

A name that matches nothing is an error listing close names (or how to list them all); a
`.toml` path that does not exist but whose tail is a built-in name says so.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from extmem.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli is the package tomllib was taken from (same API)
    import tomli as tomllib

Kind = Literal["run", "sweep"]
SWEEPS = "sweeps"  # the folder of sweep files; every other .toml is a run config
LIST_HINT = "list them with: extmem configs"
DESCRIPTION_CHARS = 110  # a listing's description is cut at a word boundary to this length

# "et al. 2023", "e.g. the", "vs. dense" do not end a sentence
_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.(?=\s|$)")


@dataclass(frozen=True)
class BuiltinConfig:
    name: str   # relative to the configs folder, without .toml: "design/token-add"
    path: Path

    @property
    def kind(self) -> Kind:
        return "sweep" if self.name.split("/")[0] == SWEEPS else "run"

    @property
    def description(self) -> str:
        return describe(self.path)


def root() -> Path:
    """The folder of built-in configs inside the installed package."""
    folder = importlib.resources.files("extmem") / "configs"
    if not isinstance(folder, Path):  # a zipped package: pip always installs files
        raise ConfigError(f"built-in configs: {folder} is not a folder on disk; install extmem "
                          "with pip (not as a zip) to use config names, or give a .toml path")
    return folder


def builtin_configs() -> dict[str, BuiltinConfig]:
    """Every shipped .toml by name: top-level run configs, then those in folders (sweeps last)."""
    folder = root()
    found = [BuiltinConfig(p.relative_to(folder).with_suffix("").as_posix(), p)
             for p in folder.rglob("*.toml") if p.is_file()]
    order = sorted(found, key=lambda c: (c.kind == "sweep", "/" in c.name, c.name))
    return {c.name: c for c in order}


def describe(path: Path) -> str:
    """One line about a config file: a top-level `description = "..."` key if it has one,
    else the first sentence of its leading comment (usage lines like `extmem train ...` are
    skipped), cut at a word boundary to DESCRIPTION_CHARS."""
    text = path.read_text(encoding="utf-8")
    try:
        described = tomllib.loads(text).get("description")
    except tomllib.TOMLDecodeError:
        described = None
    if isinstance(described, str) and described.strip():
        return _shorten(" ".join(described.split()))
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        line = line.lstrip("#").strip()
        if line and not line.startswith("extmem "):
            lines.append(line)
    comment = " ".join(lines)
    end = _SENTENCE_END.search(comment)
    return _shorten(comment[:end.end()] if end else comment)


def _shorten(text: str) -> str:
    if len(text) <= DESCRIPTION_CHARS:
        return text
    cut = text[:DESCRIPTION_CHARS - 3].rsplit(" ", 1)[0].rstrip(",;:(")
    return cut + "..."


def _candidates(name: str, kind: Kind | None) -> list[str]:
    """The built-in names `name` may mean, in order: for a sweep `sweeps/NAME` first, else
    NAME first (`sweeps/NAME` too, to tell a sweep given to `train` what to run instead)."""
    if name.split("/")[0] == SWEEPS:
        return [name]
    inside = f"{SWEEPS}/{name}"
    return [inside, name] if kind == "sweep" else [name, inside]


def _command(config: BuiltinConfig) -> str:
    if config.kind == "sweep":
        return f"extmem compare {config.name.removeprefix(SWEEPS + '/')}"
    return f"extmem train {config.name}"


def _wrong_kind(arg: str, config: BuiltinConfig) -> ConfigError:
    what = "a sweep" if config.kind == "sweep" else "a run config, not a sweep"
    return ConfigError(f"{arg!r} is {what}: run it with {_command(config)}")


def _unknown(arg: str, kind: Kind | None, configs: dict[str, BuiltinConfig]) -> ConfigError:
    names = [n for n, c in configs.items() if kind is None or c.kind == kind]
    if kind == "sweep":
        names += [n.removeprefix(SWEEPS + "/") for n in names]
    close = difflib.get_close_matches(arg, names, n=3, cutoff=0.6)
    close += [n for n in names if n not in close and arg in n.split("/")[-1]][:3 - len(close)]
    what = {"run": "run config", "sweep": "sweep", None: "config"}[kind]
    hint = f"close names: {', '.join(close)}" if close else LIST_HINT
    return ConfigError(f"{arg!r} is not a file or a built-in {what} name ({hint}; a path ends "
                       "in .toml)")


def find(name: str, kind: Kind | None = None) -> BuiltinConfig:
    """The built-in config called `name` (`kind` "sweep": `sweeps/NAME` first; "run": refuse a
    sweep; None: either). Unknown -> ConfigError with close names."""
    configs = builtin_configs()
    for candidate in _candidates(name.replace(os.sep, "/"), kind):
        config = configs.get(candidate)
        if config is None:
            continue
        if kind is not None and config.kind != kind:
            raise _wrong_kind(name, config)
        return config
    raise _unknown(name, kind, configs)


def _missing_path_hint(arg: str, kind: Kind | None) -> str:
    """`configs/sweeps/quickstart.toml` from outside the repository: its built-in name."""
    parts = Path(arg.replace(os.sep, "/")).with_suffix("").as_posix().split("/")
    configs = builtin_configs()
    for i in range(len(parts)):
        found = [configs[c] for c in _candidates("/".join(parts[i:]), kind) if c in configs]
        if found:  # the longest tail that names a built-in config
            if kind is not None and found[0].kind != kind:
                return ""
            name = found[0].name.removeprefix(SWEEPS + "/") if kind == "sweep" else found[0].name
            return f"; a built-in config has that name: give {name!r} (no .toml) to use it"
    return ""


def resolve(arg: str, kind: Kind, base_dir: Path | None = None) -> Path:
    """The file `arg` means: a path (relative to `base_dir`, default the current directory)
    or a built-in config name; see the module docstring for the rules."""
    path = Path(arg) if base_dir is None else base_dir / arg
    if path.is_dir() and not arg.endswith(".toml"):
        try:
            return find(arg, kind).path  # a built-in name wins over a folder of that name
        except ConfigError:
            raise ConfigError(f"config path {str(path)!r} is a directory; give a .toml file in "
                              "it or a built-in config name (list them with: extmem configs)"
                              ) from None
    if path.is_dir():
        raise ConfigError(f"config path {str(path)!r} is a directory, not a .toml file")
    if arg.endswith(".toml") or path.is_file():
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist"
                              f"{_missing_path_hint(arg, kind)}")
        return path
    return find(arg, kind).path
