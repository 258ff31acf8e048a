"""A run stopped at any point and resumed ends exactly like an uninterrupted run."""

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from extmem.cli import main
from extmem.data.batches import LMData


def train(config: Path, out: Path, *extra: str) -> int:
    return main(["train", str(config), "--out", str(out), "--quiet", *extra])


def final_weights(run: Path, step: int = 6) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


def train_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].equal(wb[name]), name
    assert train_losses(a) == train_losses(b)
    val_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    val_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in val_a if r["split"] == "val"] == \
           [r["val_loss"] for r in val_b if r["split"] == "val"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_config_module):
    out = tmp_path_factory.mktemp("full") / "run"
    assert train(tiny_config_module, out) == 0
    return out


@pytest.fixture(scope="module")
def tiny_config_module(tmp_path_factory):
    from tests.conftest import TINY_TOML
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def crash_at(monkeypatch, crash_step: int, exc: type[BaseException]):
    original = LMData.train_batch

    def flaky(self, step, batch_size, seed):
        if step == crash_step:
            raise exc("simulated crash")
        return original(self, step, batch_size, seed)
    monkeypatch.setattr(LMData, "train_batch", flaky)


def test_crash_then_resume_equals_uninterrupted(tmp_path, monkeypatch, tiny_config_module,
                                                uninterrupted):
    out = tmp_path / "run"
    crash_at(monkeypatch, 4, RuntimeError)  # after the step-3 checkpoint, mid step 5
    with pytest.raises(RuntimeError):
        train(tiny_config_module, out)
    assert (out / "checkpoints" / "step-3").is_dir()
    assert not (out / "checkpoints" / "step-6").exists()
    monkeypatch.undo()
    assert train(tiny_config_module, out, "--resume") == 0
    assert_same_run(out, uninterrupted)


def signal_at(monkeypatch, data_step: int, signum: int):
    """Deliver `signum` to this process while the batch of `data_step` is being drawn."""
    original = LMData.train_batch

    def signalling(self, step, batch_size, seed):
        if step == data_step:
            os.kill(os.getpid(), signum)
        return original(self, step, batch_size, seed)
    monkeypatch.setattr(LMData, "train_batch", signalling)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_checkpoints_and_resume_equals_uninterrupted(
        tmp_path, monkeypatch, capsys, tiny_config_module, uninterrupted, signum, code):
    out = tmp_path / "run"
    signal_at(monkeypatch, 4, signum)  # inside step 5 (batch of data step 4)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup / a background job
    assert train(tiny_config_module, out) == code
    err = capsys.readouterr().err
    assert "--resume" in err and signal.Signals(signum).name in err
    assert (out / "checkpoints" / "step-5").is_dir()  # step 5 finished, then saved
    assert not (out / "checkpoints" / "step-6").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.undo()
    assert train(tiny_config_module, out, "--resume") == 0
    assert_same_run(out, uninterrupted)


def test_interrupt_inside_a_step_saves_nothing_half_done(tmp_path, monkeypatch, capsys,
                                                         tiny_config_module, uninterrupted):
    out = tmp_path / "run"
    crash_at(monkeypatch, 4, KeyboardInterrupt)  # a second Ctrl-C acts at once, mid-step
    assert train(tiny_config_module, out) == 130
    assert "nothing saved" in capsys.readouterr().err
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-3"]
    monkeypatch.undo()
    assert train(tiny_config_module, out, "--resume") == 0
    assert_same_run(out, uninterrupted)


def test_resume_can_extend_a_finished_run(tmp_path, tiny_config_module, capsys):
    out = tmp_path / "run"
    assert train(tiny_config_module, out, "--set", "train.steps=3") == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--json",
                 "--set", "train.steps=5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 5
    assert (out / "checkpoints" / "step-5").is_dir()
