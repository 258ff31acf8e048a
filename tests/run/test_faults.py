"""Faults during training end as promised: one `error:` line and exit 2 (or the signal's exit
code), no non-finite or half-written checkpoint, and nothing already saved lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.cli_helpers import error_line

from extmem.cli import main
from extmem.run import objective


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])


def checkpoint_names(run: Path) -> list[str]:
    root = run / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def all_finite(run: Path, name: str) -> bool:
    weights = load_file(str(run / "checkpoints" / name / "model.safetensors"))
    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


def test_diverging_run_stops_without_writing_nonfinite_checkpoints(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    line = error_line(capsys, "train", str(tiny_config), "--out", str(out), "--quiet",
                      "--set", "train.lr=1e30", "--set", "train.checkpoint_every=1")
    assert "not finite" in line and "train.lr" in line
    for name in checkpoint_names(out):
        assert all_finite(out, name), name


def test_resuming_with_a_bad_lr_keeps_the_good_checkpoints(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(tiny_config, out, "--set", "train.keep_checkpoints=1") == 0
    assert checkpoint_names(out) == ["step-6"]
    line = error_line(capsys, "train", "--resume", "--out", str(out), "--quiet",
                      "--set", "train.steps=12", "--set", "train.lr=1e30",
                      "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=1")
    assert "not finite" in line
    assert checkpoint_names(out)[-1] >= "step-6"
    for name in checkpoint_names(out):
        assert all_finite(out, name), name


def test_nonfinite_steps_can_be_skipped(tiny_config, tmp_path, monkeypatch, capsys):
    original = objective.token_loss
    calls = []

    def nan_at_step_2(model, inputs, labels):  # one micro-batch per step: call 2 is step 2
        loss, n = original(model, inputs, labels)
        calls.append(n)
        return (loss * float("nan") if len(calls) == 3 else loss), n
    monkeypatch.setattr("extmem.train.loop.token_loss", nan_at_step_2)
    out = tmp_path / "run"
    line = error_line(capsys, "train", str(tiny_config), "--out", str(out), "--quiet")
    assert "not finite" in line and "train again with the same --out" in line
    assert not out.exists()  # no checkpoint yet: nothing half-made is left to trip a rerun
    calls.clear()
    assert train(tiny_config, out, "--set", "train.max_nonfinite_steps=1") == 0
    assert len(calls) == 6 and all_finite(out, "step-6")


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tiny_config, tmp_path,
                                                                 monkeypatch, capsys):
    from extmem.run.checkpoint import local
    original, calls = local.save_file, []

    def disk_full_on_second_checkpoint(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 3:  # three files per checkpoint: the second one fails
            raise OSError(28, "No space left on device")
        return original(tensors, path, *args, **kwargs)
    monkeypatch.setattr(local, "save_file", disk_full_on_second_checkpoint)
    out = tmp_path / "run"
    line = error_line(capsys, "train", str(tiny_config), "--out", str(out), "--quiet")
    assert "No space left on device" in line and "step-6" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-3"]  # no .tmp left
    assert all_finite(out, "step-3")


def test_stale_temporaries_are_removed_and_resume_needs_a_checkpoint(tiny_config, tmp_path,
                                                                     capsys):
    out = tmp_path / "run"
    assert train(tiny_config, out, "--set", "train.steps=3") == 0
    stale = out / "checkpoints" / ".tmp-step-9-99999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert main(["train", "--resume", "--out", str(out), "--quiet",
                 "--set", "train.steps=4"]) == 0
    assert not stale.exists()
    line = error_line(capsys, "train", str(tiny_config), "--out", str(tmp_path / "new"),
                      "--quiet", "--resume")
    assert "no complete checkpoint" in line


def _launch(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "extmem", "train", str(config), "--out",
                             str(out), "--quiet", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final(run: Path, steps: int) -> tuple[dict, list]:
    weights = load_file(str(run / "checkpoints" / f"step-{steps}" / "model.safetensors"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return weights, [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows]


STEPS = ["--set", "train.steps=150", "--set", "train.checkpoint_every=50", "--set", "train.eval_every=50"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from tests.conftest import TINY_TOML
    root = tmp_path_factory.mktemp("reference")
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    done = _launch(config, root / "run", *STEPS)
    assert done.wait(timeout=300) == 0, done.stderr.read()
    return config, root / "run"


@pytest.mark.parametrize("signum,trial", [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_signal_at_a_random_moment_then_resume_equals_uninterrupted(uninterrupted, tmp_path,
                                                                    signum, trial):
    """A real process, signalled while it runs: it saves the finished step and exits with
    128 + signal; resumed, it ends with the same weights (usage counters included: they are
    buffers of the model) and metrics as an uninterrupted run."""
    config, reference = uninterrupted
    out = tmp_path / "run"
    proc = _launch(config, out, *STEPS)
    while not (out / "metrics.jsonl").exists() and proc.poll() is None:  # training has begun
        time.sleep(0.05)
    time.sleep(random.Random(trial).uniform(0.0, 1.5))
    proc.send_signal(signum)
    code = proc.wait(timeout=300)
    finished = (out / "results.json").is_file()
    # 128 + signal: stopped and saved; or the signal came after the run had finished (then
    # SIGTERM's default action may end the process while it exits): nothing left to save
    assert code == 128 + signum or (finished and code in (0, -signum)), (code, proc.stderr.read())
    if not finished:
        resumed = _launch(config, out, "--resume", *STEPS)
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    (wa, ma), (wb, mb) = _final(out, 150), _final(reference, 150)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].equal(wb[name]), name
    assert ma == mb  # every train and validation line
