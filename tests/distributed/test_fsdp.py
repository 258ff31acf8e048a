"""`train.data_parallel = "fsdp"`: FSDP2 over the dense core, composed with sharded tables.

2 gloo processes against one process with the same global batch: the same losses, DCP
checkpoints of the FSDP state that load in one process, and resumes (FSDP -> FSDP, one
process -> FSDP) that end where the uninterrupted run ends.
"""

import json

import pytest

from extmem.cli import main
from extmem.config import from_dict
from extmem.distributed.context import DistContext
from extmem.distributed.parallel import check_distributed_config
from extmem.errors import ConfigError
from extmem.run.config import RunConfig
from tests.cli_helpers import run_json
from tests.conftest import TINY_TOML
from tests.distributed.test_torchrun import TOKEN_TABLE, losses, torchrun

FSDP = ["--set", "train.data_parallel=fsdp"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    patch = pytest.MonkeyPatch()  # the session's tokenizer cache (conftest), for module scope
    patch.setenv("EXTMEM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    path = tmp_path_factory.mktemp("fsdp") / "fsdp.toml"
    path.write_text(TINY_TOML.replace("[data]", TOKEN_TABLE + "\n[data]", 1))
    yield path
    patch.undo()


@pytest.fixture(scope="module")
def full_run(config):
    """The uninterrupted one-process run (6 steps) both resume tests end at."""
    out = config.parent / "full"
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_fsdp_matches_one_process(config, full_run, tmp_path, capsys):
    one_dir, one = full_run
    two = torchrun("train", str(config), "--out", str(tmp_path / "two"), *FSDP)
    assert two["world_size"] == 2 and two["params"] == one["params"]
    train_1, val_1 = losses(one_dir)
    train_2, val_2 = losses(tmp_path / "two")
    assert len(train_2) == len(train_1) == 6
    assert train_2 == pytest.approx(train_1, rel=1e-5)
    assert val_2 == pytest.approx(val_1, rel=1e-5)
    assert len(two["peak_rss_bytes_per_rank"]) == 2
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["world_size"] == 2
    # the FSDP checkpoint (dense core as Shard(0) DTensors) evaluated in one process
    evaluated = run_json(capsys, "eval", str(tmp_path / "two"))
    assert evaluated["val_loss"] == pytest.approx(two["val_loss"], rel=1e-6)


@pytest.mark.parametrize("first", ["fsdp", "one"])
def test_fsdp_resumes_where_the_full_run_ends(config, full_run, tmp_path, capsys, first):
    """A half-trained FSDP run (DCP) or one-process run (safetensors) continues under FSDP."""
    full_dir, full = full_run
    half = ["--out", str(tmp_path / "half"), "--set", "train.steps=3"]
    if first == "fsdp":
        torchrun("train", str(config), *half, *FSDP)
    else:
        run_json(capsys, "train", str(config), *half, "--quiet")
    resumed = torchrun("train", "--resume", "--out", str(tmp_path / "half"), *FSDP,
                       "--set", "train.steps=6")
    assert resumed["steps"] == 6
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    assert losses(tmp_path / "half")[0][3:] == pytest.approx(losses(full_dir)[0][3:], rel=1e-5)


@pytest.mark.parametrize("train,memory,message", [
    ({"compile": True}, {}, "train.compile: true is not supported with train.data_parallel"),
    ({"table_sharding": "replicate"}, {"sparse_updates": True},
     "model.memories[0].sparse_updates: FSDP cannot shard a row-sparse gradient"),
])
def test_fsdp_refuses_what_it_cannot_shard(train, memory, message):
    cfg = from_dict(RunConfig, {"train": {"data_parallel": "fsdp", **train},
                               "model": {"memories": [{"layers": [0], **memory}]}})
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_distributed_config(cfg, DistContext(rank=0, world_size=2))
