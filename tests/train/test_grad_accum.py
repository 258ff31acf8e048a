"""train.grad_accum_steps: batch B x A micro-batches trains like one batch of B*A rows (same
rows, masks, token-weighted losses, weights to fp32 rounding), row-sparse optimizers and the
fused row kernel included; tokens count every micro-batch; resume stays exact."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import load_file

from extmem.cli import main
from extmem.data.batches import LMData
from extmem.errors import ConfigError
from extmem.run.config import TrainConfig
from extmem.train import loop

STEPS = ["--set", "train.steps=3", "--set", "train.eval_every=0", "--set",
         "train.checkpoint_every=0"]
SPARSE = ["--set", "model.memories.0.sparse_updates=true"]
# PEER: 400 single-neuron experts read by product keys (the gathered path of memory/experts.py)
PEER = ["--set", 'model.memories.0.readout="experts"', "--set", "model.memories.0.experts.hidden=1",
        "--set", "model.memories.0.product_keys.n_keys=20"]


def with_table_optimizer(config: Path, optimizer: str) -> Path:
    """The tiny config with its memory values trained by a row-sparse `optimizer`."""
    path = config.with_name(f"{optimizer}.toml")
    path.write_text(config.read_text() + f"""
[[train.param_groups]]
name = "memory_values"
patterns = ["*.memories.*.table.weight"]
lr = 1e-2
weight_decay = 0.0
optimizer = "{optimizer}"
""")
    return path


def train(config: Path, out: Path, batch: int, accum: int, *extra: str) -> Path:
    assert main(["train", str(config), "--out", str(out), "--quiet", *STEPS,
                 "--set", f"train.batch_size={batch}",
                 "--set", f"train.grad_accum_steps={accum}", *extra]) == 0
    return out


def train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def weights(run: Path, step: int = 3) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


@pytest.mark.parametrize(("extra", "optimizer", "kernels"), [
    ([], "adamw", "torch"),
    (["--set", "model.causal=false"], "adamw", "torch"),  # masked LM: unequal token counts
    (SPARSE, "lazy_adam", "torch"),
    (SPARSE, "lazy_adam", "numba"),  # the fused lazy-Adam row kernel (train/fused_rows.py)
    (SPARSE, "rowwise_adagrad", "torch"),
    ([*SPARSE, *PEER], "lazy_adam", "torch"),  # expert rows with a row-sparse gradient
])
def test_accumulated_equals_large_batch(tiny_config: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, extra: list[str],
                                        optimizer: str, kernels: str) -> None:
    monkeypatch.setenv("EXTMEM_KERNELS", kernels)
    if optimizer != "adamw":
        tiny_config = with_table_optimizer(tiny_config, optimizer)
    big = train(tiny_config, tmp_path / "big", 8, 1, *extra)
    acc = train(tiny_config, tmp_path / "acc", 4, 2, *extra)
    rows_big, rows_acc = train_rows(big), train_rows(acc)
    assert [r["tokens"] for r in rows_acc] == [r["tokens"] for r in rows_big] == [128, 256, 384]
    assert [r["loss"] for r in rows_acc] == pytest.approx([r["loss"] for r in rows_big],
                                                          rel=1e-5, abs=1e-6)
    w_big, w_acc = weights(big), weights(acc)
    assert w_big.keys() == w_acc.keys()
    for name, value in w_big.items():
        assert (w_acc[name] - value).abs().max() <= 1e-4, name
    with_accum = json.loads((acc / "results.json").read_text())
    assert with_accum["tokens"] == 3 * 8 * 16


def test_micro_batches_are_the_large_batch_rows(tiny_config: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One draw of B*A rows per step (so resume and a batch-B*A run see the same data), and
    backward of every micro-batch but the last inside the wrapper's no_sync."""
    drawn: list[tuple[int, int]] = []
    synced: list[bool] = []
    original = LMData.train_batch

    def recording(self, step, batch_size, seed):
        drawn.append((step, batch_size))
        return original(self, step, batch_size, seed)

    real = loop._sync_unless

    def spy(t, last):
        synced.append(last)
        return real(t, last)

    monkeypatch.setattr(LMData, "train_batch", recording)
    monkeypatch.setattr(loop, "_sync_unless", spy)
    train(tiny_config, tmp_path / "acc", 2, 3)
    assert drawn == [(0, 6), (1, 6), (2, 6)]
    assert synced == [False, False, True] * 3


def test_sync_unless_uses_no_sync_on_non_final_micro_batches() -> None:
    entered: list[str] = []

    class Wrapper:
        @contextmanager
        def no_sync(self):
            entered.append("no_sync")
            yield

    class T:
        forward_model = Wrapper()

    for last in (False, False, True):
        with loop._sync_unless(T(), last):
            pass
    assert entered == ["no_sync", "no_sync"]


def test_crash_then_resume_with_accumulation_is_exact(tiny_config: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ["--set", "train.steps=4", "--set", "train.checkpoint_every=2"]
    full = tmp_path / "full"
    assert main(["train", str(tiny_config), "--out", str(full), "--quiet", *extra,
                 "--set", "train.batch_size=2", "--set", "train.grad_accum_steps=2"]) == 0
    original = LMData.train_batch

    def flaky(self, step, batch_size, seed):
        if step == 3:
            raise RuntimeError("simulated crash")
        return original(self, step, batch_size, seed)

    monkeypatch.setattr(LMData, "train_batch", flaky)
    out = tmp_path / "crashed"
    args = ["train", str(tiny_config), "--out", str(out), "--quiet", *extra,
            "--set", "train.batch_size=2", "--set", "train.grad_accum_steps=2"]
    with pytest.raises(RuntimeError):
        main(args)
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    for name, value in weights(full, 4).items():
        assert weights(out, 4)[name].equal(value), name
    assert [r["loss"] for r in train_rows(out)][-1] == [r["loss"] for r in train_rows(full)][-1]


@pytest.mark.parametrize("value", [0, -1])
def test_grad_accum_steps_must_be_positive(value: int) -> None:
    with pytest.raises(ConfigError, match=rf"train.grad_accum_steps: {value} must be >= 1"):
        TrainConfig(grad_accum_steps=value)
