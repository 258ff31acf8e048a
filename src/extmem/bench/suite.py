"""Dispatch for `extmem bench NAME`: config from --set, run, results in an output directory.

Every benchmark is a module of this package with a config dataclass, `run_*(cfg, progress)`
returning a JSON-serialisable dict, `render_markdown(result, command)` (its `## NAME` section)
and `summary(result)` (a few lines for the terminal); `write_plots(result, out)` where it draws.
A run writes results.md, results.json and its plots into `out` (default: a fresh
runs/bench/NAME, then NAME-2, NAME-3, ...), and replaces the `## NAME` section of a Markdown
file such as docs/benchmarks.md only when one is named (`doc`), copying its plots beside it.
"""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
from pathlib import Path

from extmem.bench.markdown import FILE_HEADER, replace_section, update_section, write_atomic
from extmem.config import apply_overrides, from_dict
from extmem.errors import ConfigError
from extmem.run.run_dir import fresh_run_dir, json_safe

# name -> (module of extmem.bench, config class, run function)
BENCHES: dict[str, tuple[str, str, str]] = {
    "pkm": ("pkm", "PkmBenchConfig", "run_pkm_bench"),
    "capacity": ("capacity", "CapacityBenchConfig", "run_capacity_bench"),
    "model": ("model", "ModelBenchConfig", "run_model_bench"),
    "altup": ("altup", "AltUpBenchConfig", "run_altup_bench"),
    "kernels": ("kernels", "KernelsBenchConfig", "run_kernels_bench"),
    "host-table": ("host_table", "HostTableBenchConfig", "run_host_table_bench"),
    "engram-prefetch": ("engram_prefetch", "EngramPrefetchBenchConfig",
                        "run_engram_prefetch_bench"),
    "scaling": ("scaling", "ScalingBenchConfig", "run_scaling_bench"),
    "optimizer": ("optimizer", "OptimizerBenchConfig", "run_optimizer_bench"),
}
RESULTS_MD, RESULTS_JSON = "results.md", "results.json"
DEFAULT_ROOT = Path("runs") / "bench"


def module(name: str):
    """The benchmark's module, imported on demand (each pulls in what it measures)."""
    return importlib.import_module(f"extmem.bench.{BENCHES[name][0]}")


def load_config(name: str, overrides: list[str]):
    """The config of benchmark `name` from `--set` overrides (ConfigError names the field)."""
    return from_dict(getattr(module(name), BENCHES[name][1]), apply_overrides({}, overrides),
                     f"bench.{name}")


def fresh_bench_dir(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """root/name if it holds no results yet, else name-2, name-3, ... (never overwritten)."""
    return fresh_run_dir(root / name, marker=RESULTS_JSON)


def command_line(name: str, overrides: list[str], out: Path | None, doc: Path | None) -> str:
    """The command that reruns this benchmark, quoted for a POSIX shell (recorded in its
    Markdown section)."""
    parts = [f"extmem bench {name}", *(f"--set {shlex.quote(s)}" for s in overrides)]
    if out is not None:
        parts.append(f"--out {shlex.quote(str(out))}")
    if doc is not None:
        parts.append(f"--doc {shlex.quote(str(doc))}")
    return " ".join(parts)


def bench_command(name: str, overrides: list[str], out: Path | None = None,
                  doc: Path | None = None, progress: bool = True) -> dict:
    """Run benchmark `name` with `--set` overrides; write results.md, results.json and plots
    into `out` (None: a fresh runs/bench/NAME); also update section `## NAME` of `doc` unless
    None. Returns the result with `out_dir` (and `doc`) added."""
    mod = module(name)
    cfg = load_config(name, overrides)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out: {str(out)!r} exists and is not a directory")
    if doc is not None and Path(doc).is_dir():
        raise ConfigError(f"--doc: {str(doc)!r} is a directory; name a Markdown file, e.g. "
                          "docs/benchmarks.md")
    result = getattr(mod, BENCHES[name][2])(cfg, progress=progress)
    target = Path(out) if out is not None else fresh_bench_dir(name)
    target.mkdir(parents=True, exist_ok=True)
    plots = mod.write_plots(result, target) if hasattr(mod, "write_plots") else []
    section = mod.render_markdown(result, command_line(name, overrides, out, doc))
    # a benchmark with several model sets keeps one doc section per set (bench altup)
    heading = mod.section_name(result) if hasattr(mod, "section_name") else name
    result["out_dir"] = str(target)
    if doc is not None:
        update_section(Path(doc), heading, section)
        for plot in plots:  # the section links its plots relative to the doc
            beside_doc = Path(doc).parent / plot.name
            if not beside_doc.exists() or not beside_doc.samefile(plot):
                shutil.copyfile(plot, beside_doc)
        result["doc"] = str(doc)
        result["doc_section"] = heading
    write_atomic(target / RESULTS_MD, replace_section(FILE_HEADER, heading, section))
    write_atomic(target / RESULTS_JSON, json.dumps(json_safe(result), indent=1) + "\n")
    return result


def summary(result: dict) -> str:
    """A few human-readable lines (results.json has everything)."""
    return module(result["benchmark"]).summary(result)
