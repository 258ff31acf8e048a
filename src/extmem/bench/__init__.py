"""Performance benchmarks behind `extmem bench NAME` (suite.py): every measurement the project
reports lives here, so an installed wheel reproduces docs/benchmarks.md on the user's hardware.
"""

from extmem.bench.pkm import PkmBenchConfig, render_markdown, run_pkm_bench, write_markdown

__all__ = ["PkmBenchConfig", "render_markdown", "run_pkm_bench", "write_markdown"]
