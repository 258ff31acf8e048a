"""Imports go one way (docs/architecture.md): every `extmem` import in `src/extmem`, at module
level, inside functions and under TYPE_CHECKING alike, points to a lower layer or stays inside
its own package, and no chain of module imports comes back to where it started."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Top-level packages and modules of extmem, lowest layer first (docs/architecture.md). A unit
# may import units of a lower layer only; units in one layer do not import each other.
LAYERS: list[set[str]] = [
    {"errors"},
    {"config", "builtin_configs", "layers", "allocator", "decode_cache", "console", "cpu_load"},
    {"memory", "data"},
    {"altup"},
    {"model"},
    {"distributed", "generate", "pretrained"},
    {"run"},
    {"train"},
    {"finetune", "hf"},
    {"experiments", "report", "bench"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against this module's package
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        # `from extmem.x import y`: y is a name of extmem.x or its submodule extmem.x.y
        return [stem] + [f"{stem}.{alias.name}" for alias in node.names]
    return []


def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported extmem module: line}, for every module under src/extmem."""
    files = {_module_name(p): p for p in (SRC / "extmem").rglob("*.py")}
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = [t for t in _imported(node, module, path.name == "__init__.py")
                       if t in files and t != module and t != "extmem"]
            if isinstance(node, ast.ImportFrom) and len(targets) > 1:
                # `from extmem.memory import topk` reads the submodule, not the package's names
                submodules = targets[1:]  # targets[0] is the package itself
                if len(submodules) == len(node.names):
                    targets = submodules
            for target in targets:
                graph[module].setdefault(target, node.lineno)
        graph.setdefault(module, {})
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "extmem"


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()} - {"extmem"}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS and the docs"


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in _graph().items():
        source = _unit(module)
        if source == "extmem":  # the package root re-exports the public API
            continue
        for target, line in targets.items():
            dest = _unit(target)
            if dest != source and RANK[dest] >= RANK[source]:
                upward.append(f"{module}:{line} imports {target} ({source} -> {dest})")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("source,expected", [
    ("from extmem.run.checkpoint import save_checkpoint", ["extmem.run.checkpoint",
                                                           "extmem.run.checkpoint.save_checkpoint"]),
    ("from . import format", ["extmem.run.checkpoint", "extmem.run.checkpoint.format"]),
])
def test_import_parsing(source, expected):
    node = ast.parse(source).body[0]
    assert _imported(node, "extmem.run.checkpoint", True) == expected
