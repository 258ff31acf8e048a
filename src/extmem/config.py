"""Typed dataclass configs <-> TOML, with `--set a.b=c` overrides.

Each component owns one dataclass config (co-located with the component) and validates itself
in `__post_init__`. This module only converts between plain dicts (from TOML) and those
dataclasses: unknown keys and wrong types are errors that name the full dotted field path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, get_args, get_origin, get_type_hints

import tomli_w

from extmem.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli is the package tomllib was taken from (same API)
    import tomli as tomllib

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _not_allowed(path: str, value: Any, allowed: tuple[Any, ...]) -> ConfigError:
    return ConfigError(f"{path}: {value!r} is not allowed; choose one of "
                       f"{', '.join(repr(a) for a in allowed)}")


def _convert_union(value: Any, tp: Any, path: str) -> Any:
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _convert(value, option, path)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of "
                      f"{' | '.join(_type_name(o) for o in options)}")


def _convert_literal(value: Any, tp: Any, path: str) -> Any:
    allowed = get_args(tp)
    if value not in allowed:
        raise _not_allowed(path, value, allowed)
    return value


def _convert_list(value: Any, tp: Any, path: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
    (item_tp, *_rest) = get_args(tp) or (Any,)
    return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]


def _convert_dict(value: Any, tp: Any, path: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a table, got {type(value).__name__}")
    return dict(value)


def _convert_dataclass(value: Any, tp: Any, path: str) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a table of {tp.__name__} fields, "
                          f"got {type(value).__name__} {value!r}")
    return from_dict(tp, value, path)


def _convert_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    return value


def _convert_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    return value


def _convert_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    return float(value)


def _convert_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


_GENERIC_CONVERTERS: dict[Any, Callable[[Any, Any, str], Any]] = {
    typing.Union: _convert_union, types.UnionType: _convert_union, Literal: _convert_literal,
    list: _convert_list, tuple: _convert_list, dict: _convert_dict,
}
_SCALAR_CONVERTERS: dict[Any, Callable[[Any, str], Any]] = {
    Any: lambda value, path: value, bool: _convert_bool, int: _convert_int,
    float: _convert_float, str: _convert_str,
}


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check and convert one TOML value to the annotated type `tp`."""
    generic = _GENERIC_CONVERTERS.get(get_origin(tp))
    if generic is not None:
        return generic(value, tp, path)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path)
    scalar = _SCALAR_CONVERTERS.get(tp)
    if scalar is None:
        raise ConfigError(f"{path}: unsupported field type {tp!r}")
    return scalar(value, path)


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from a dict; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or "config"
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys are "
                          f"{', '.join(sorted(fields))}")
    kwargs = {name: _convert(value, hints[name], f"{path}.{name}" if path else name)
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(_at_path(str(exc), path, fields)) from None


_HEAD = re.compile(r"^([A-Za-z_]\w*)(?=[.\[:])")


def _at_path(message: str, path: str, fields: dict[str, Any]) -> str:
    """A config class's own message placed at `path`, where `from_dict` built it. Classes name
    their fields after their usual table (`product_keys.n_keys: ...`, `memory.layers: ...`);
    that table's name is replaced by the path (`model.memories[0].product_keys.n_keys`).
    Messages already from the top (`train.param_groups[x].lr` under `train...`) stay."""
    if not path or message.startswith(path):
        return message
    head = _HEAD.match(message)
    if head is None:
        return f"{path}: {message}"
    if head.group(1) in fields:  # relative to this class: `n_keys: ...`
        return f"{path}.{message}"
    if head.group(1) == path.split(".")[0].split("[")[0]:  # already from the top
        return message
    return path + message[head.end():]


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain dict, dropping None values (TOML has no null)."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return clean(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (['a','b','0','c'], value parsed as a TOML value, else a string)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.steps=100")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key before '=' is empty")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a raw config dict (in place) and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"--set {text!r}: {'.'.join(keys[:i])} has {len(node)} "
                                      f"entries; {key!r} is not a valid index")
                node = node[int(key)]
            else:
                node = node.setdefault(key, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {text!r}: {'.'.join(keys[:i + 1])} is not a table")
        last = keys[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"--set {text!r}: {last!r} is not a valid index")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory; give a .toml file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def write_toml(path: str | Path, data: dict[str, Any]) -> None:
    """Write TOML atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(path)


def require(condition: bool, message: str) -> None:
    """Validation helper for `__post_init__`: raise ConfigError(message) unless condition."""
    if not condition:
        raise ConfigError(message)


class LiteralField(NamedTuple):
    """The allowed values of one `Literal`-annotated dataclass field."""

    allowed: tuple[Any, ...]  # the Literal's values
    optional: bool            # `Literal[...] | None`: None is allowed too
    many: bool                # `list[Literal[...]]`: every item must be allowed


def _literal_field(tp: Any) -> LiteralField | None:
    origin = get_origin(tp)
    if origin is Literal:
        return LiteralField(get_args(tp), optional=False, many=False)
    if origin in (list, tuple):
        item = _literal_field(get_args(tp)[0]) if get_args(tp) else None
        if item is None or item.many:
            return None
        return item._replace(many=True)
    if origin is typing.Union or origin is types.UnionType:
        options = [o for o in get_args(tp) if o is not type(None)]
        if not options or any(get_origin(o) is not Literal for o in options):
            return None  # not (only) Literals: nothing to check here
        allowed = tuple(a for o in options for a in get_args(o))
        return LiteralField(allowed, optional=len(options) < len(get_args(tp)), many=False)
    return None


@functools.cache
def literal_fields(cls: type) -> dict[str, LiteralField]:
    """Field name -> allowed values, for each field of dataclass `cls` annotated `Literal[...]`,
    `Literal[...] | None` or `list[Literal[...]]` (type hints resolved once per class)."""
    hints = get_type_hints(cls)
    found = {f.name: _literal_field(hints[f.name]) for f in dataclasses.fields(cls)}
    return {name: spec for name, spec in found.items() if spec is not None}


class FloatField(NamedTuple):
    """A `float`-annotated dataclass field: its value (or each item) must be finite."""

    optional: bool  # `float | None`: None is allowed too
    many: bool      # `list[float]` / `tuple[float, ...]`: every item must be finite


def _float_field(tp: Any) -> FloatField | None:
    if tp is float:
        return FloatField(optional=False, many=False)
    origin = get_origin(tp)
    if origin in (list, tuple):
        items = [a for a in get_args(tp) if a is not Ellipsis]
        item = _float_field(items[0]) if len(set(items)) == 1 else None
        return item._replace(many=True) if item is not None and not item.many else None
    if origin is typing.Union or origin is types.UnionType:
        options = [o for o in get_args(tp) if o is not type(None)]
        if options == [float]:
            return FloatField(optional=len(options) < len(get_args(tp)), many=False)
    return None


@functools.cache
def float_fields(cls: type) -> dict[str, FloatField]:
    """Field name -> spec, for each field of dataclass `cls` annotated `float`, `float | None`,
    `list[float]` or `tuple[float, ...]` (type hints resolved once per class)."""
    hints = get_type_hints(cls)
    found = {f.name: _float_field(hints[f.name]) for f in dataclasses.fields(cls)}
    return {name: spec for name, spec in found.items() if spec is not None}


def _require_literals(config: Any, prefix: str) -> None:
    for name, spec in literal_fields(type(config)).items():
        value = getattr(config, name)
        path = f"{prefix}.{name}"
        if value is None and spec.optional:
            continue
        if not spec.many:
            if value not in spec.allowed:
                raise _not_allowed(path, value, spec.allowed)
            continue
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        for i, item in enumerate(value):
            if item not in spec.allowed:
                raise _not_allowed(f"{path}[{i}]", item, spec.allowed)


def _require_finite(path: str, value: Any) -> None:
    # ints are always finite; a non-number is left to the field's own checks
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: {value!r} is not allowed; use a finite number")


def _require_floats(config: Any, prefix: str) -> None:
    for name, spec in float_fields(type(config)).items():
        value = getattr(config, name)
        if spec.many and isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                _require_finite(f"{prefix}.{name}[{i}]", item)
        else:
            _require_finite(f"{prefix}.{name}", value)


def require_valid_fields(config: Any, prefix: str) -> None:
    """Validation helper, called first in every config dataclass's `__post_init__`; raises
    ConfigError naming `prefix.field` and the value:

    - every `Literal`-annotated field holds one of its Literal's values (the message lists the
      allowed values, as for a bad value read from TOML);
    - every `float`-annotated field (`float | None`, `list[float]` too) is finite: TOML's `inf`
      and `nan` are valid floats, but no field of ours means anything by them.

    Range checks (> 0, in [0, 1), ...) stay with each config."""
    _require_literals(config, prefix)
    _require_floats(config, prefix)
