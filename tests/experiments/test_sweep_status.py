"""`extmem compare --status`: each run's state, steps done and the training time left."""

import json

import pytest
from tests.cli_helpers import run_json

from extmem.cli import main
from extmem.data.batches import LMData
from extmem.experiments import load_sweep
from extmem.experiments.sweep_status import status_summary, sweep_status
from extmem.run.lock import RunLock

SWEEP = """
name = "tiny"
base = "tiny.toml"
seeds = [0]
baseline = "dense"
steps = 5

[[variants]]
name = "dense"
group = "dense"
set = ["model.memories=[]"]

[[variants]]
name = "dense-lr"
group = "dense"
set = ["model.memories=[]", "train.lr=1e-3"]

[[variants]]
name = "pkm"
"""


@pytest.fixture
def sweep_file(tiny_config):
    path = tiny_config.parent / "sweep.toml"
    path.write_text(SWEEP)
    return path


def _train(sweep_file, out, *only):
    flags = [arg for pattern in only for arg in ("--only", pattern)]
    assert main(["compare", str(sweep_file), "--out", str(out), "--quiet", *flags,
                 "--set", "train.eval_every=0", "--set", "train.checkpoint_every=1",
                 "--set", "train.log_every=1"]) == 0


def _status(sweep_file, out):
    sweep = load_sweep(sweep_file, ["train.eval_every=0", "train.checkpoint_every=1",
                                    "train.log_every=1"])
    return {row.variant: row for row in sweep_status(sweep, out)}


def test_finished_runs_and_a_group_mates_rate_for_one_not_started(sweep_file, tmp_path):
    out = tmp_path / "out"
    _train(sweep_file, out, "dense")
    rows = _status(sweep_file, out)
    dense, dense_lr, pkm = rows["dense"], rows["dense-lr"], rows["pkm"]
    assert (dense.state, dense.step, dense.steps, dense.seconds_left) == ("finished", 5, 5, 0.0)
    logged = [r for r in map(json.loads, (out / "dense" / "seed-0" / "metrics.jsonl")
                             .read_text().splitlines()) if r.get("split") == "train"]
    assert len(logged) == 5  # one per step: the median is the middle one
    rates = sorted(r["tokens"] / r["step"] / r["tokens_per_s"] for r in logged)
    assert dense.seconds_per_step == pytest.approx(rates[2])
    # dense-lr has not started: its group mate's rate times its 5 steps
    assert (dense_lr.state, dense_lr.step) == ("not started", 0)
    assert dense_lr.seconds_per_step == pytest.approx(dense.seconds_per_step)
    assert dense_lr.seconds_left == pytest.approx(5 * dense.seconds_per_step)
    # pkm is its own group, with nothing measured: no estimate
    assert (pkm.state, pkm.seconds_per_step, pkm.seconds_left) == ("not started", None, None)
    summary = status_summary(list(rows.values()))
    assert summary["counts"] == {"finished": 1, "reusable": 0, "training": 0, "stopped": 0,
                                 "not started": 2}
    assert summary["seconds_left"] == pytest.approx(dense_lr.seconds_left)
    assert summary["runs_without_estimate"] == 1


def test_a_killed_run_is_stopped_at_its_checkpoint_and_a_locked_one_training(
        sweep_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original, calls = LMData.train_batch, {"n": 0}

    def dies_at_the_third_step(self, step, batch_size, seed):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return original(self, step, batch_size, seed)
    monkeypatch.setattr(LMData, "train_batch", dies_at_the_third_step)
    with pytest.raises(RuntimeError):
        _train(sweep_file, out, "dense")
    monkeypatch.undo()
    row = _status(sweep_file, out)["dense"]
    assert (row.state, row.step, row.holder) == ("stopped", 2, None)
    assert row.seconds_left == pytest.approx(3 * row.seconds_per_step)
    with RunLock(out / "dense" / "seed-0", command="test"):
        row = _status(sweep_file, out)["dense"]
    assert row.state == "training" and "process" in row.holder


def test_status_cli_prints_the_runs_and_the_time_left_and_trains_nothing(
        sweep_file, tmp_path, capsys):
    out = tmp_path / "out"
    _train(sweep_file, out, "dense")
    capsys.readouterr()
    result = run_json(capsys, "compare", str(sweep_file), "--out", str(out), "--status")
    assert [(r["variant"], r["state"]) for r in result["runs"]] == [
        ("dense", "finished"), ("dense-lr", "not started"), ("pkm", "not started")]
    assert main(["compare", str(sweep_file), "--out", str(out), "--status",
                 "--only", "dense*"]) == 0
    text = capsys.readouterr().out
    assert "dense-lr" in text and "pkm" not in text
    assert "runs: 1 finished, 1 not started" in text and "training time left:" in text
    assert main(["compare", str(sweep_file), "--out", str(out), "--status",
                 "--only", "pkm"]) == 0
    assert "training time left: no estimate yet" in capsys.readouterr().out
    assert not (out / "dense-lr").exists()
    result = run_json(capsys, "compare", str(sweep_file), "--out", str(out), "--status",
                      "--seed", "0", "--only", "pkm")
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("pkm", 0)]
    assert main(["compare", str(sweep_file), "--out", str(out), "--status", "--seed", "3"]) == 2
    assert "--seed 3: not among the seeds of tiny (0)" in capsys.readouterr().err


def test_with_reuse_a_run_another_sweep_finished_is_reusable_and_lends_its_group_a_rate(
        sweep_file, tmp_path, capsys):
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    _train(sweep_file, elsewhere, "dense")
    sweep = load_sweep(sweep_file, ["train.eval_every=0", "train.checkpoint_every=1",
                                    "train.log_every=1"])
    rows = {r.variant: r for r in sweep_status(sweep, out, reuse=[elsewhere])}
    source = rows["dense"]
    assert (source.state, source.step, source.seconds_left) == ("reusable", 5, 0.0)
    assert source.reused_from == str(elsewhere / "dense" / "seed-0")
    assert source.seconds_per_step > 0
    # its group mate has not started: the reusable run's measured rate times its 5 steps
    assert rows["dense-lr"].seconds_left == pytest.approx(5 * source.seconds_per_step)
    summary = status_summary(list(rows.values()))
    assert summary["counts"]["reusable"] == 1 and summary["counts"]["not started"] == 2
    assert summary["seconds_left"] == pytest.approx(rows["dense-lr"].seconds_left)
    # without --reuse the same run is not started; a run with another config is never reusable
    assert {r.variant: r.state for r in sweep_status(sweep, out)}["dense"] == "not started"
    assert rows["pkm"].state == "not started"
    # the CLI passes --reuse through, and trains nothing
    capsys.readouterr()
    assert main(["compare", str(sweep_file), "--out", str(out), "--status", "--reuse",
                 str(elsewhere), "--set", "train.eval_every=0", "--set",
                 "train.checkpoint_every=1", "--set", "train.log_every=1"]) == 0
    text = capsys.readouterr().out
    assert "reusable (from" in text and "runs: 1 reusable, 2 not started" in text
    assert not out.exists()


def test_status_and_report_only_together_are_refused(sweep_file, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(sweep_file), "--status", "--report-only"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
