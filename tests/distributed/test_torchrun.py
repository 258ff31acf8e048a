"""`torchrun --nproc_per_node=2 -m extmem train` (gloo, CPU) against one process.

A model with a sharded product-key memory and a sharded per-layer token table: the same
losses as one process with the same global batch, identical dense replicas, and checkpoints
written on 2 ranks that load on 1 (and the reverse).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from extmem.cli import main
from tests.cli_helpers import run_json
from tests.conftest import TINY_TOML

TOKEN_TABLE = """
[[model.memories]]
layers = [0]
placement = "parallel_ffn"
lookup = "token"
readout = "add"
"""
SPARSE = ["--set", "model.memories.0.sparse_updates=true",
          "--set", "model.memories.1.sparse_updates=true",
          "--set", 'train.param_groups=[{name="values", patterns=["*.table.weight"], lr=1e-2, '
                   'weight_decay=0.0, optimizer="lazy_adam"}]']


def torchrun(*args: str, nproc: int = 2) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "extmem", *args, "--quiet", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def losses(run_dir) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ([r["loss"] for r in rows if r["split"] == "train"],
            [r["val_loss"] for r in rows if r["split"] == "val"])


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "dist.toml"
    path.write_text(TINY_TOML.replace("[data]", TOKEN_TABLE + "\n[data]", 1))
    return path


@pytest.mark.parametrize("layout,extra", [("rows", []), ("columns", SPARSE)],
                         ids=["rows-adamw", "columns-lazy-adam"])
def test_two_processes_match_one(config, tmp_path, capsys, layout, extra):
    sets = ["--set", f"train.table_sharding={layout}", *extra]
    one = run_json(capsys, "train", str(config), "--out", str(tmp_path / "one"), "--quiet", *sets)
    two = torchrun("train", str(config), "--out", str(tmp_path / "two"), *sets)
    assert two["world_size"] == 2
    assert two["replica_max_abs_diff"] == 0.0  # DDP kept the dense replicas identical
    assert two["params"] == one["params"]      # accounting counts the whole tables
    train_1, val_1 = losses(tmp_path / "one")
    train_2, val_2 = losses(tmp_path / "two")
    assert len(train_2) == len(train_1) == 6
    assert train_2 == pytest.approx(train_1, rel=1e-5)
    assert val_2 == pytest.approx(val_1, rel=1e-5)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    for key in ("usage", "train_windowed_usage"):  # counters see every rank's reads
        for name, figures in one["memory_usage"].items():
            assert two["memory_usage"][name][key] == pytest.approx(figures[key], rel=1e-6)
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["world_size"] == 2 and state["table_sharding"] == layout

    # saved on 2 ranks, evaluated in 1 process: the same validation loss
    evaluated = run_json(capsys, "eval", str(tmp_path / "two"))
    assert evaluated["val_loss"] == pytest.approx(two["val_loss"], rel=1e-6)


def test_checkpoints_cross_world_sizes(config, tmp_path, capsys):
    """Resume a 2-rank run on 1 process and a 1-process run on 2 ranks: same end state."""
    sets = ["--set", "train.checkpoint_every=3"]
    full = run_json(capsys, "train", str(config), "--out", str(tmp_path / "full"), "--quiet", *sets)
    torchrun("train", str(config), "--out", str(tmp_path / "two"), *sets,
             "--set", "train.steps=3")
    # `extmem augment` reads a 2-rank (DCP) checkpoint too: loss before training unchanged
    aug = run_json(capsys, "augment", str(tmp_path / "two"), "--layers", "0",
                   "--out", str(tmp_path / "two-augmented"))
    assert aug["val_loss_augmented"] == pytest.approx(aug["val_loss_dense"], abs=1e-5)
    # the half-trained 2-rank run continues in one process (DCP checkpoint, resharded)
    shutil.copytree(tmp_path / "two", tmp_path / "two-then-one")
    resumed_1 = run_json(capsys, "train", "--resume", "--out", str(tmp_path / "two-then-one"),
                         "--quiet", "--set", "train.steps=6")
    # a half-trained 1-process run continues on 2 ranks (safetensors checkpoint, sharded)
    assert main(["train", str(config), "--out", str(tmp_path / "one"), "--quiet", *sets,
                 "--set", "train.steps=3"]) == 0
    capsys.readouterr()
    resumed_2 = torchrun("train", "--resume", "--out", str(tmp_path / "one"),
                         "--set", "train.steps=6")
    for resumed in (resumed_1, resumed_2):
        assert resumed["steps"] == 6
        assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)


def test_batch_must_split_evenly(config, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=3", "-m", "extmem", "train", str(config),
                           "--out", str(tmp_path / "bad"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode != 0
    assert "error: train.batch_size: 4 must be divisible by the number of processes (3)" \
        in done.stderr


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_run_augmented_from_hugging_face_trains_on_two_ranks_as_on_one(tmp_path, capsys,
                                                                          family):
    """`extmem augment HF_DIR` then `torchrun ... train --resume`: the pretrained weights load
    on every rank (the memory's table sharded) and the losses are those of one process."""
    pytest.importorskip("transformers")
    from tests.pretrained.hf_dirs import write_bert, write_gpt2
    source = (write_bert if family == "bert" else write_gpt2)(tmp_path / family)
    assert main(["augment", str(source), "--layers", "1", "--out", str(tmp_path / "run"),
                 "--set", "train.eval_every=0", "--set", "train.eval_tokens=2048",
                 "--set", "train.batch_size=4"]) == 0
    capsys.readouterr()
    shutil.copytree(tmp_path / "run", tmp_path / "two")
    sets = ["--set", "train.steps=4", "--set", "train.log_every=1"]
    one = run_json(capsys, "train", "--resume", "--out", str(tmp_path / "run"), "--quiet", *sets)
    two = torchrun("train", "--resume", "--out", str(tmp_path / "two"), *sets)
    assert two["world_size"] == 2 and two["replica_max_abs_diff"] == 0.0
    train_1, _ = losses(tmp_path / "run")
    train_2, _ = losses(tmp_path / "two")
    assert len(train_2) == len(train_1) == 4
    assert train_2 == pytest.approx(train_1, rel=1e-5)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
