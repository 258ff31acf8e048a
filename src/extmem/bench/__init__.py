"""Performance benchmarks behind `extmem bench` (results as Markdown in docs/benchmarks.md)."""

from extmem.bench.pkm import PkmBenchConfig, render_markdown, run_pkm_bench, write_markdown

__all__ = ["PkmBenchConfig", "render_markdown", "run_pkm_bench", "write_markdown"]
