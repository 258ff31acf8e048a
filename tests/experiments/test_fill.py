"""`extmem compare SWEEP --fill-results`: finished runs get the figures they lack from their final
checkpoints, then the report; a run that cannot be filled is named and the others go on."""

import json
import shutil

import pytest
from tests.cli_helpers import run_json, run_sweep

from extmem.experiments import fill
from extmem.run.provenance import record_session

SWEEP = """
name = "fill"
base = "tiny.toml"
seeds = [0]
steps = 2

[[variants]]
name = "a"

[[variants]]
name = "b"
set = ["model.memories=[]"]
"""

FLOOR = ("stored_bits_floor", "stored_bits_above_floor")


def _forget_floor(run_dir) -> dict:
    """results.json as a run trained before the floor existed would have it; returns it."""
    results = json.loads((run_dir / "results.json").read_text())
    for key in FLOOR:
        del results[key]
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def test_fill_results_of_a_sweep(tiny_config, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    sweep = tiny_config.parent / "fill.toml"
    run_sweep(capsys, sweep, SWEEP, out, "train.eval_every=0")
    monkeypatch.setattr(fill, "git_revision", lambda: None)   # not a checkout: fill every run
    before = _forget_floor(out / "a" / "seed-0")
    _forget_floor(out / "b" / "seed-0")
    shutil.rmtree(out / "b" / "seed-0" / "checkpoints")        # b cannot be filled
    results = run_json(capsys, "compare", str(sweep), "--out", str(out), "--fill-results",
                       "--quiet")
    a, b = results["variants"]
    after = json.loads((out / "a" / "seed-0" / "results.json").read_text())
    assert {k: v for k, v in after.items() if k not in FLOOR} == before
    assert a["stored_bits_floor"]["values"] == [after["stored_bits_floor"]]
    assert "stored_bits_floor" not in b                       # not filled, still reported
    (problem,) = results["not_filled"]
    assert problem.startswith("b seed 0: ") and "no checkpoints/step-2" in problem
    assert "floor (wrong values)" in (out / "results.md").read_text()


def test_a_run_measured_by_this_checkout_is_not_evaluated_again(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    here = {"commit": "abc", "dirty": False, "root": "/x"}
    monkeypatch.setattr(fill, "git_revision", lambda: here)
    assert not fill.measured_by_this_checkout(run)            # no session at all
    record_session(run, "train")
    sessions = json.loads((run / "provenance.json").read_text())["sessions"]
    sessions[-1]["git"] = dict(here)
    (run / "provenance.json").write_text(json.dumps({"sessions": sessions}))
    assert fill.measured_by_this_checkout(run)
    monkeypatch.setattr(fill, "git_revision", lambda: {**here, "dirty": True})
    assert not fill.measured_by_this_checkout(run)            # uncommitted code: measure
    monkeypatch.setattr(fill, "git_revision", lambda: {**here, "commit": "def"})
    assert not fill.measured_by_this_checkout(run)            # other code: measure


@pytest.mark.parametrize("flags", [("--fill-results", "--status"),
                                   ("--fill-results", "--report-only")])
def test_fill_results_is_its_own_mode(tiny_config, capsys, flags):
    from extmem.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tiny_config), *flags])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
