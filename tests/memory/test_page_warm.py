"""Warming a mapped table a step ahead (memory.prefetch; `extmem.memory.page_advice`,
`HostValueTable.warm`, `MemoryHost.warm_tables`, the trainer's `_step_batches`): the pages
asked for are exactly those holding the rows, values and training are unchanged, and the
trainer draws each step's batch once and warms the next step's rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from extmem.cli import main
from extmem.data.batches import LMData
from extmem.memory import page_advice
from extmem.memory.host_table import HostValueTable
from extmem.memory.page_advice import PAGE_BYTES, page_runs, will_need
from extmem.train import loop

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")


def expected_runs(weight: torch.Tensor, rows: list[int]) -> list[tuple[int, int]]:
    """The page runs computed one byte range at a time, independently of page_runs."""
    row_bytes = weight.shape[1] * weight.element_size()
    pages: set[int] = set()
    for row in rows:
        first = weight.data_ptr() + row * row_bytes
        pages.update(range(first // PAGE_BYTES, (first + row_bytes - 1) // PAGE_BYTES + 1))
    runs: list[tuple[int, int]] = []
    for page in sorted(pages):
        if runs and runs[-1][0] // PAGE_BYTES + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page * PAGE_BYTES, 1))
    return runs


@pytest.mark.parametrize("dim", [8, 24, 1024, 3000])  # rows inside a page, straddling, spanning
def test_page_runs_are_the_pages_holding_the_rows(dim: int) -> None:
    weight = torch.zeros(2000, dim)
    rows = [0, 1, 5, 6, 7, 400, 1999, 5, 0]  # repeats and adjacent rows
    assert page_runs(weight, torch.tensor(rows)) == expected_runs(weight, rows)
    assert page_runs(weight, torch.tensor([], dtype=torch.int64)) == []


@LINUX
def test_a_mapped_table_warms_the_pages_of_its_rows_and_keeps_its_values() -> None:
    table = HostValueTable(50_000, 8, storage="mmap")
    before = table.weight.detach().clone()
    ids = torch.tensor([[3, 49_999, 3], [17_000, 17_001, 40]])  # (2, 3), a repeat
    pages = sum(count for _, count in page_runs(table.weight, torch.unique(ids.flatten())))
    assert table.warm(ids).result() == pages == table.warm_pages
    assert table.warms == 1 and table.warm_s > 0
    assert torch.equal(table.weight.detach(), before)


def test_a_table_in_host_memory_has_nothing_to_warm() -> None:
    table = HostValueTable(100, 4, storage="host")
    assert table.warm(torch.tensor([1, 2])) is None and table.warms == 0


def test_without_madvise_warming_asks_for_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_advice, "_madvise", lambda: None)
    assert will_need(torch.zeros(10, 4), torch.tensor([1, 2])) == 0


MAPPED_ENGRAM = ('model.memories=[{layers=[1], placement="input", lookup="engram", '
                 'readout="engram", value_dim=4, table_storage="mmap", prefetch=PREFETCH, '
                 'engram={heads=2, rows_per_head=31}}]')


def train_engram(config: Path, out: Path, prefetch: bool) -> Path:
    assert main(["train", str(config), "--out", str(out), "--quiet",
                 "--set", MAPPED_ENGRAM.replace("PREFETCH", str(prefetch).lower()),
                 "--set", "train.steps=3", "--set", "train.checkpoint_every=3",
                 "--set", "train.eval_every=0"]) == 0
    return out


@LINUX
def test_training_warms_each_next_step_and_trains_as_without_prefetch(
        tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    warmed: list[torch.Tensor] = []
    original_draw, original_warm = LMData.train_batch, HostValueTable.warm

    def recording_draw(self, step, batch_size, seed):
        drawn.append(step)
        return original_draw(self, step, batch_size, seed)

    def recording_warm(self, ids):
        warmed.append(ids.clone())
        return original_warm(self, ids)

    plain = train_engram(tiny_config, tmp_path / "plain", prefetch=False)
    assert not warmed
    monkeypatch.setattr(LMData, "train_batch", recording_draw)
    monkeypatch.setattr(HostValueTable, "warm", recording_warm)
    fetched = train_engram(tiny_config, tmp_path / "fetched", prefetch=True)
    assert drawn == [0, 1, 2, 3]  # each step's batch drawn once, a step early
    assert len(warmed) == 3  # during steps 0, 1, 2: the rows of steps 1, 2, 3
    step = "checkpoints/step-3/model.safetensors"
    plain_weights, fetched_weights = load_file(str(plain / step)), load_file(str(fetched / step))
    assert plain_weights.keys() == fetched_weights.keys()
    for name, value in plain_weights.items():
        assert torch.equal(value, fetched_weights[name]), name
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text()
               .splitlines() if json.loads(line)["split"] == "train"] for run in (plain, fetched)]
    assert losses[0] == losses[1]


def test_step_batches_reuses_the_batches_drawn_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batches drawn a step early are used for that step only; any other step draws."""
    calls: list[int] = []
    monkeypatch.setattr(loop, "_micro_batches", lambda t, step: calls.append(step) or [step])

    class Model:
        def warms_tables(self) -> bool:
            return False

    class Trainer:
        batches_ahead = (5, ["ahead"])
        warm_ahead = None
        model = Model()

    t = Trainer()
    assert loop._step_batches(t, 5) == ["ahead"] and calls == [] and t.batches_ahead is None
    t.batches_ahead = (5, ["ahead"])
    assert loop._step_batches(t, 7) == [7] and calls == [7] and t.batches_ahead is None
