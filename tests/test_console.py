"""Tables off a terminal (a log, a pipe, CI) are Markdown: nothing folded or cut to 80
columns; on a terminal they stay rich tables."""

from __future__ import annotations

import io

from rich.console import Console

from extmem.cli import main
from extmem.console import markdown_table, print_table
from extmem.experiments.report import rich_table
from extmem.report.usage import usage_tables
from extmem.train.setup import group_table as _group_table

LONG = "blocks.11.memories.0.token-table-with-a-name-far-wider-than-eighty-columns-of-a-log"


def printed(table, terminal: bool = False) -> str:
    stream = io.StringIO()
    print_table(Console(file=stream, force_terminal=terminal, width=80), table)
    return stream.getvalue()


def assert_whole(text: str, *cells: str) -> None:
    assert "…" not in text
    for cell in cells:
        assert cell in text, cell


def test_not_a_terminal_prints_markdown_with_whole_cells():
    table = _group_table([{"group": "memory_values", "patterns": f"*.{LONG}.weight",
                           "optimizer": "lazy_adam", "tensors": 2, "params": 1_048_576,
                           "lr": 0.01, "weight_decay": 0.0}])
    text = printed(table)
    assert_whole(text, f"*.{LONG}.weight", "1,048,576")
    lines = text.strip().splitlines()
    assert lines[0] == "parameter groups"
    assert lines[2] == "| group | patterns | optimizer | tensors | params | lr | weight_decay |"
    assert lines[3] == "|" + "---|" * 7
    # a terminal still gets the rich table (box drawing, fitted to its width)
    assert "┃" in printed(table, terminal=True) or "│" in printed(table, terminal=True)


def test_markdown_escapes_pipes_and_renders_markup():
    from rich.table import Table
    table = Table(title="t")
    table.add_column("a")
    table.add_row("x | y [bold]z[/bold]")
    assert markdown_table(table).splitlines()[-1] == "| x \\| y z |"


def test_compare_and_usage_tables_keep_long_names():
    row = {"variant": LONG, "params": {"core": 10, "memory_tables": 20},
           "flops_per_token": {"core": 1, "total": 2}, "tokens_per_s": {"mean": 1000.0},
           "val_loss": {"mean": 3.0, "std": 0.1}, "vs_baseline": {}}
    results = {"sweep": "tiny", "seeds": [0, 1], "baseline": LONG, "variants": [row],
               "warnings": []}
    assert_whole(printed(rich_table(results)), LONG, "3.0000 ± 0.1000")
    figures = {"slots": 65_536, "eval": {"usage": 0.5, "kl_uniform_weighted": 0.1,
                                         "kl_uniform_counts": 0.2, "gini": 0.3, "top50": 1,
                                         "top90": 2, "top99": 3},
               "train": {"windowed_usage": 0.4, "usage": 0.9, "never_selected": 0.1,
                         "staleness_mean": 5.0, "staleness_median": 4.0}}
    report = {"usage_window": 100, "checkpoint": "step-6", "memories": {LONG: figures}}
    (table,) = usage_tables(report)
    assert_whole(printed(table), LONG, "KL to uniform, weighted / counts", "0.100 / 0.200")


def test_train_summary_in_a_log_is_not_cut(tiny_config, tmp_path, capsys):
    out = tmp_path / ("a-run-directory-whose-path-is-longer-than-a-terminal-line-" * 2)
    assert main(["train", str(tiny_config), "--out", str(out), "--quiet",
                 "--set", "train.steps=2"]) == 0
    captured = capsys.readouterr().out  # captured: not a terminal
    assert_whole(captured, f"| run directory | {out} |", "| val_loss |",
                 "blocks.1.memories.0 KL to uniform / Gini")
