"""`extmem augment`: dense checkpoint + memory -> a new run that `train --resume` continues."""

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tests.cli_helpers import error_line, run_json

from extmem.cli import main
from extmem.config import read_toml
from extmem.model import ModelConfig
from extmem.model.augment import default_memory, default_product_keys


def dense_toml() -> str:
    from tests.conftest import TINY_TOML
    return re.sub(r"\[\[model\.memories\]\].*?(?=\[data\])", "", TINY_TOML, flags=re.S)


@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory):
    """A causal and a masked-LM dense run, 4 steps each."""
    root = tmp_path_factory.mktemp("augment")
    config = root / "dense.toml"
    config.write_text(dense_toml())
    runs = {}
    for name, causal in (("causal", "true"), ("mlm", "false")):
        runs[name] = root / name
        assert main(["train", str(config), "--out", str(runs[name]), "--quiet",
                     "--set", "train.steps=4", "--set", f"model.causal={causal}"]) == 0
    return runs


@pytest.mark.parametrize("kind", ["causal", "mlm"])
def test_parallel_ffn_keeps_validation_loss(dense_runs, tmp_path, capsys, kind):
    out = tmp_path / "aug"
    report = run_json(capsys, "augment", str(dense_runs[kind]), "--layers", "1",
                      "--placement", "parallel_ffn", "--out", str(out))
    assert abs(report["val_loss_augmented"] - report["val_loss_dense"]) <= 1e-6
    assert report["max_abs_logit_diff"] <= 1e-6
    assert report["dropped_tensors"] == [] and report["new_params"] > 0
    assert json.loads((dense_runs[kind] / "results.json").read_text())["val_loss"] == \
        pytest.approx(report["val_loss_dense"], abs=1e-6)
    cfg = read_toml(out / "config.toml")
    assert cfg["model"]["memories"][0]["layers"] == [1]
    assert cfg["model"]["memories"][0]["zero_init_output"] is True
    assert cfg["train"]["data_offset"] == 4  # continues the source's data, not a replay
    assert (out / "tokenizer.json").read_bytes() == (dense_runs[kind] / "tokenizer.json").read_bytes()
    state = json.loads((out / "checkpoints" / "step-0" / "state.json").read_text())
    assert state["step"] == 0
    assert load_file(str(out / "checkpoints" / "step-0" / "optimizer.safetensors")) == {}


def test_augmented_run_trains_and_resumes(dense_runs, tmp_path, capsys):
    out = tmp_path / "aug"
    assert main(["augment", str(dense_runs["causal"]), "--layers", "0,1", "--out", str(out)]) == 0
    assert "continue with: extmem train --resume" in capsys.readouterr().out
    first = run_json(capsys, "train", "--resume", "--out", str(out), "--quiet",
                     "--set", "train.steps=3", "--set", "train.eval_every=0")
    assert first["steps"] == 3 and len(first["memory_usage"]) == 2
    second = run_json(capsys, "train", "--resume", "--out", str(out), "--quiet",
                      "--set", "train.steps=5", "--set", "train.eval_every=0")
    assert second["steps"] == 5
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and max(steps) == 5


def test_replace_ffn_drops_the_ffn(dense_runs, tmp_path, capsys):
    out = tmp_path / "aug"
    report = run_json(capsys, "augment", str(dense_runs["causal"] / "checkpoints" / "step-3"),
                      "--layers", "1", "--placement", "replace_ffn", "--out", str(out))
    assert report["source_step"] == 3
    assert sorted(report["dropped_tensors"]) == [f"blocks.1.ffn.{w}.weight"
                                                for w in ("down", "gate", "up")]
    saved = load_file(str(out / "checkpoints" / "step-0" / "model.safetensors"))
    assert not any(name.startswith("blocks.1.ffn.") for name in saved)
    assert "blocks.0.ffn.up.weight" in saved
    assert report["val_loss_augmented"] != report["val_loss_dense"]  # the FFN's output is gone


def test_input_placement_keeps_validation_loss(dense_runs, tmp_path, capsys):
    report = run_json(capsys, "augment", str(dense_runs["causal"]), "--layers", "1",
                      "--placement", "input", "--out", str(tmp_path / "aug"))
    assert report["memories"][0]["placement"] == "input"
    assert abs(report["val_loss_augmented"] - report["val_loss_dense"]) <= 1e-6
    assert report["dropped_tensors"] == []


def test_memory_from_a_toml_file(dense_runs, tmp_path, capsys):
    memory = tmp_path / "memory.toml"
    memory.write_text('layers = [0]\nplacement = "parallel_ffn"\n\n[product_keys]\n'
                      'n_keys = 8\nheads = 2\ntopk = 4\nkey_dim = 16\n')
    report = run_json(capsys, "augment", str(dense_runs["causal"]), "--memory", str(memory),
                      "--out", str(tmp_path / "a"))
    assert report["memories"][0]["layers"] == [0]
    assert report["memories"][0]["product_keys"]["n_keys"] == 8
    assert report["val_loss_augmented"] == pytest.approx(report["val_loss_dense"], abs=1e-6)
    # a run config's [[model.memories]] works too; --layers overrides the file's layers
    from tests.conftest import TINY_TOML
    run_config = tmp_path / "run.toml"
    run_config.write_text(TINY_TOML)
    report = run_json(capsys, "augment", str(dense_runs["causal"]), "--memory", str(run_config),
                      "--layers", "0", "--out", str(tmp_path / "b"))
    assert report["memories"][0]["layers"] == [0]


def test_default_memory_scales_the_paper_settings():
    root = Path(__file__).resolve().parents[2]
    quickstart = read_toml(root / "configs" / "quickstart.toml")["model"]["memories"][0]["product_keys"]
    pk = default_product_keys(128)
    assert (pk.n_keys, pk.heads, pk.topk, pk.key_dim) == (
        quickstart["n_keys"], quickstart["heads"], quickstart["topk"], quickstart["key_dim"])
    pk = default_product_keys(768)  # BERT-base width: the paper's own settings
    assert (pk.n_keys, pk.heads, pk.topk, pk.key_dim) == (512, 4, 32, 256)
    memory = default_memory(ModelConfig(d_model=32, n_heads=2), [1])
    assert memory.zero_init_output and memory.placement == "parallel_ffn"
    assert memory.product_keys.n_keys == 16


def test_bad_input_is_one_line_and_writes_nothing(dense_runs, tmp_path, capsys):
    source = str(dense_runs["causal"])
    out = tmp_path / "o"
    assert "--layers 'a,b'" in error_line(capsys, "augment", source, "--layers", "a,b",
                                         "--out", str(out))
    assert "out of range" in error_line(capsys, "augment", source, "--layers", "7",
                                        "--out", str(out))
    assert "give --layers" in error_line(capsys, "augment", source, "--out", str(out))
    assert ("--placement: 'paralel_ffn' is not allowed; choose one of 'replace_ffn', "
            "'parallel_ffn', 'input'") in error_line(capsys, "augment", source, "--layers", "1",
                                                     "--placement", "paralel_ffn",
                                                     "--out", str(out))
    assert "neither a run directory" in error_line(capsys, "augment", str(tmp_path),
                                                   "--layers", "1", "--out", str(out))
    no_layers = tmp_path / "m.toml"
    no_layers.write_text('placement = "replace_ffn"\n')
    assert "has no layers" in error_line(capsys, "augment", source, "--memory", str(no_layers),
                                         "--out", str(out))
    assert not out.exists()
    assert "already holds a run" in error_line(capsys, "augment", source, "--layers", "1",
                                               "--out", source)


def test_data_offset_shifts_the_training_batches(tmp_path, monkeypatch):
    from extmem.data import LMData
    seen = []
    original = LMData.train_batch

    def recording(self, step, batch_size, seed):
        seen.append(step)
        return original(self, step, batch_size, seed)

    monkeypatch.setattr(LMData, "train_batch", recording)
    config = tmp_path / "dense.toml"
    config.write_text(dense_toml())
    assert main(["train", str(config), "--out", str(tmp_path / "r"), "--quiet",
                 "--set", "train.steps=2", "--set", "train.eval_every=0",
                 "--set", "train.data_offset=5"]) == 0
    assert seen == [5, 6]


def test_tables_that_do_not_fit_are_refused_unless_forced(dense_runs, tmp_path, capsys,
                                                          monkeypatch):
    from extmem.model import resources
    monkeypatch.setattr(resources, "available_ram_bytes", lambda: 1)  # extmem.model.resources
    out = tmp_path / "aug"
    args = ["augment", str(dense_runs["causal"]), "--layers", "1", "--out", str(out)]
    line = error_line(capsys, *args)
    assert line.startswith("error: memory tables need ") and line.endswith("or pass --force")
    assert not out.exists()
    assert main([*args, "--force"]) == 0
    assert (out / "augment.json").is_file()
