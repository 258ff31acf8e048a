"""Storage along training: curves read back from metrics.jsonl (hand-written records, so every
value is known), the shares at fractions of the budget, the table and the figure."""

import json
from pathlib import Path

import pytest

from extmem.experiments.storage_curves import (
    run_storage_curve,
    storage_along_table,
    storage_curve,
    storage_curves_figure,
    stored_share_at,
)


def _run(path: Path, points: dict[int, float], floor: bool = True) -> Path:
    """A run directory whose metrics.jsonl has a train line and one val line per step."""
    path.mkdir(parents=True)
    lines = [{"split": "train", "step": 1, "loss": 3.0}]
    for step, stored in points.items():
        record = {"split": "val", "step": step, "val_loss": 1.0, "stored_bits": stored}
        if floor:
            record["stored_bits_above_floor"] = stored / 2
        lines.append(record)
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def test_run_curve_reads_val_records_and_a_later_record_of_a_step_wins(tmp_path):
    run = _run(tmp_path / "r", {10: 4.0, 20: 8.0})
    with (run / "metrics.jsonl").open("a") as f:  # a resumed run evaluates step 20 again
        f.write(json.dumps({"split": "val", "step": 20, "stored_bits": 9.0}) + "\n")
    assert run_storage_curve(run) == {10: {"stored_bits": 4.0, "stored_bits_above_floor": 2.0},
                                      20: {"stored_bits": 9.0}}
    assert set(run_storage_curve(run, offset=100)) == {110, 120}


def test_curve_is_the_mean_over_seeds_at_shared_steps_with_exposures(tmp_path):
    a = _run(tmp_path / "a", {10: 4.0, 20: 8.0, 30: 12.0})
    b = _run(tmp_path / "b", {10: 6.0, 20: 10.0})
    curve = storage_curve([(a, 0), (b, 0)], steps=40, exposures=100)
    assert curve == {"steps": [10, 20], "exposures": [25.0, 50.0], "stored_bits": [5.0, 9.0],
                     "stored_bits_above_floor": [2.5, 4.5]}
    # a seed without the floor: the curve keeps stored bits only; a step budget: no exposures
    c = _run(tmp_path / "c", {10: 2.0, 20: 2.0}, floor=False)
    curve = storage_curve([(a, 0), (c, 0)], steps=40, exposures=None)
    assert curve == {"steps": [10, 20], "stored_bits": [3.0, 5.0]}


def test_no_curve_without_the_meter(tmp_path):
    run = tmp_path / "dense"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"split": "val", "step": 5, "val_loss": 2.0}))
    assert storage_curve([(run, 0)], steps=10, exposures=100) is None
    assert storage_curve([], steps=10, exposures=100) is None


def _row(group: str, facts: int, steps: int, stored: list[float], offered: float) -> dict:
    curve_steps = [steps * (i + 1) // len(stored) for i in range(len(stored))]
    return {"variant": f"{group}-{facts}", "group": group, "steps": steps, "exposures": 100,
            "capacity": {"facts": facts, "bits_offered": offered},
            "stored_bits": {"mean": stored[-1], "std": 0.0},
            "storage_curve": {"steps": curve_steps,
                              "exposures": [100 * s / steps for s in curve_steps],
                              "stored_bits": stored}}


def test_share_at_a_fraction_is_the_last_evaluation_at_or_before_it():
    row = _row("m", 10, 100, [10.0, 20.0, 30.0, 40.0, 50.0], offered=100.0)  # steps 20..100
    assert stored_share_at(row, 0.25) == pytest.approx(0.10)  # step 20
    assert stored_share_at(row, 0.5) == pytest.approx(0.20)   # step 40 (60 is past half)
    assert stored_share_at(row, 1.0) == pytest.approx(0.50)
    assert stored_share_at(row, 0.1) is None                  # nothing evaluated yet
    assert stored_share_at({**row, "storage_curve": None}, 1.0) is None


def test_table_has_one_line_per_model_and_corpus():
    rows = [_row("dense", 10, 100, [1.0, 2.0, 3.0, 80.0], offered=100.0),
            _row("dense", 30, 300, [3.0, 3.0, 3.0, 3.0], offered=300.0),
            _row("mem", 10, 100, [50.0, 90.0, 95.0, 99.0], offered=100.0)]
    lines = storage_along_table({"sweep": "cap", "variants": rows})
    body = [line for line in lines if line.startswith("| dense") or line.startswith("| mem")]
    assert body == ["| dense | 10 | 100 | 1.0% | 2.0% | 3.0% | 80.0% |",
                    "| dense | 30 | 100 | 1.0% | 1.0% | 1.0% | 1.0% |",
                    "| mem | 10 | 100 | 50.0% | 90.0% | 95.0% | 99.0% |"]
    # a tuning grid, or no curve at all: no table
    assert storage_along_table({"sweep": "cap", "tuning": {}, "variants": rows}) == []
    bare = [{**row, "storage_curve": None} for row in rows]
    assert storage_along_table({"sweep": "cap", "variants": bare}) == []


def test_figure_has_one_panel_per_model_and_one_line_per_corpus():
    rows = [_row("dense", 10, 100, [1.0, 80.0], offered=100.0),
            _row("dense", 30, 300, [3.0, 3.0], offered=300.0),
            _row("mem", 10, 100, [50.0, 99.0], offered=100.0)]
    fig = storage_curves_figure({"sweep": "cap", "variants": rows})
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["dense", "mem"]
    dense_lines = shown[0].get_lines()
    assert len(dense_lines) == 2
    assert list(dense_lines[0].get_ydata()) == pytest.approx([0.01, 0.80])
    assert list(dense_lines[0].get_xdata()) == pytest.approx([50.0, 100.0])
