"""Tables for people and for logs: a rich table on a terminal, a Markdown table elsewhere.

rich fits a table to the console's width, which is 80 columns when the output is a file or a
pipe (a log, CI, `tee`), so long cells are folded or cut ("token-t…"). Off a terminal,
`print_table` writes the same cells as a Markdown table instead: one line per row, nothing cut,
easy to grep and to paste into a report.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _plain(cell: object) -> str:
    """What rich would show for the cell, without styles (markup in strings is rendered)."""
    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell).plain
    else:
        text = str(cell)
    return " ".join(text.split("\n")).replace("|", "\\|")


def markdown_table(table: Table) -> str:
    """The table as Markdown: its title, a header row (the column names, also for tables
    drawn without a header) and one line per row."""
    columns = table.columns
    cells = [[_plain(c) for c in column.cells] for column in columns]
    lines = [_plain(table.title), ""] if table.title else []
    lines.append("| " + " | ".join(_plain(c.header) for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(column[row] for column in cells) + " |"
              for row in range(table.row_count)]
    return "\n".join(lines)


def print_table(console: Console, table: Table) -> None:
    """`table` drawn by rich on a terminal; as Markdown (no width limit) on anything else."""
    if console.is_terminal:
        console.print(table)
    else:
        console.print(markdown_table(table), markup=False, highlight=False, soft_wrap=True)
        console.print()
