"""Dispatch for `extmem bench pkm|capacity|model`: config from --set, run, Markdown, summary."""

from __future__ import annotations

from pathlib import Path

from extmem.config import apply_overrides, from_dict


def _modules(name: str):
    if name == "pkm":
        from extmem.bench import pkm as module
        return module.PkmBenchConfig, module.run_pkm_bench, module.write_markdown
    if name == "capacity":
        from extmem.bench import capacity as module
        return module.CapacityBenchConfig, module.run_capacity_bench, module.write_markdown
    from extmem.bench import model as module
    return module.ModelBenchConfig, module.run_model_bench, module.write_markdown


def bench_command(name: str, overrides: list[str], doc: Path | None, progress: bool) -> dict:
    """Run benchmark `name` with `--set` overrides; update `doc` (unless None)."""
    config_cls, run, write = _modules(name)
    cfg = from_dict(config_cls, apply_overrides({}, overrides), f"bench.{name}")
    result = run(cfg, progress=progress)
    if doc is not None:
        write(result, doc, f"extmem bench {name}" + "".join(f" --set {s}" for s in overrides))
    return result


def summary(result: dict) -> str:
    """A few human-readable lines (the JSON has everything)."""
    name = result["benchmark"]
    if name == "pkm":
        lines = []
        for row in result["sizes"]:
            r = row["ratios"]
            lines.append(f"{row['slots']:>10,} slots: infer x{r['infer_speedup_vs_peer']} vs peer, "
                         f"train x{r['train_speedup_vs_peer']} vs peer, "
                         f"{r['infer_vs_gather_floor']} x gather floor"
                         + (f" ({row['error']})" if "error" in row else ""))
        return "\n".join(lines)
    if name == "capacity":
        return "\n".join(f"{k}: latency growth x{v['ratio']} ({v['from_rows']:,} -> "
                         f"{v['to_rows']:,} rows)" for k, v in result["growth"].items())
    return "\n".join(f"{k}: {m['tokens_per_s']:,.0f} tokens/s"
                     + (f" ({result['throughput_vs_dense'][k + '_vs_dense']:.2f}x dense)"
                        if k + "_vs_dense" in result["throughput_vs_dense"] else "")
                     for k, m in result["models"].items())
