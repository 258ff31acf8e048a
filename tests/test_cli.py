"""End to end through the CLI: train, evaluate, generate, and every bad input -> exit 2."""

import json
import os
import subprocess
import sys

import pytest

from extmem.cli import main
from tests.cli_helpers import error_line, run_json, train_tiny


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("cli"), "train.steps=4")


def test_train_writes_a_complete_run_directory(trained_run):
    for name in ("config.toml", "tokenizer.json", "metrics.jsonl", "results.json",
                 "accounting.json", "checkpoints/step-4/model.safetensors",
                 "checkpoints/step-4/state.json"):
        assert (trained_run / name).exists(), name
    assert any((trained_run / "tb").iterdir())
    results = json.loads((trained_run / "results.json").read_text())
    for key in ("val_loss", "val_ppl", "val_bpb", "facts_recalled", "steps", "params",
                "memory_usage"):
        assert key in results, key
    assert results["steps"] == 4
    assert results["params"]["memory_tables"] == 64 * 32


def test_train_json_prints_one_object(tmp_path, tiny_config, capsys):
    result = run_json(capsys, "train", str(tiny_config), "--out", str(tmp_path / "r"),
                      "--quiet", "--set", "train.steps=2", "--set", "train.eval_every=0")
    assert result["steps"] == 2
    assert 0.0 <= result["facts_recalled"] <= 1.0
    assert result["val_ppl"] == pytest.approx(2.718281828 ** result["val_loss"], rel=1e-6)


def test_eval_matches_the_training_evaluation(trained_run, capsys):
    result = run_json(capsys, "eval", str(trained_run))
    final = json.loads((trained_run / "results.json").read_text())
    assert result["checkpoint"] == "step-4"
    assert result["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)
    assert result["facts_recalled"] == final["facts_recalled"]
    usage = result["memory_usage"]["blocks.1.memories.0"]
    assert 0 < usage["usage"] <= 1 and usage["slots"] == 64


def test_eval_on_other_files(trained_run, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("Some text about things.\n\nAnother document here.\n")
    result = run_json(capsys, "eval", str(trained_run), "--data", str(tmp_path / "a.txt"))
    assert result["val_tokens"] > 0 and "facts_recalled" not in result


def test_generate_is_deterministic_per_seed(trained_run, capsys):
    args = ("generate", str(trained_run), "--prompt", "Bo", "--max-new-tokens", "5")
    first = run_json(capsys, *args)
    second = run_json(capsys, *args)
    assert first == second and first["tokens"] == 5


def test_default_run_dir_never_overwrites(tmp_path, tiny_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["train", str(tiny_config), "--quiet", "--set", "train.steps=1"]) == 0
    assert (tmp_path / "runs" / "tiny" / "results.json").exists()
    assert (tmp_path / "runs" / "tiny-2" / "results.json").exists()


@pytest.mark.parametrize("override,fragment", [
    ("model.colour=3", "unknown key 'colour'"),
    ("train.steps='ten'", "train.steps: expected an integer"),
    ("model.memories.0.product_keys.topk=99", "topk: 99 is impossible with n_keys=8"),
    ("model.n_heads=3", "not divisible by model.n_heads"),
    ("data.corpus='wiki'", "data.corpus: 'wiki' is not allowed"),
    ("train.lr=-1", "train.lr: -1"),
])
def test_bad_config_values(tiny_config, tmp_path, capsys, override, fragment):
    line = error_line(capsys, "train", str(tiny_config), "--out", str(tmp_path / "r"),
                      "--quiet", "--set", override)
    assert fragment in line
    assert not (tmp_path / "r").exists()


def test_unknown_key_in_file(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nstepz = 3\n")
    assert "train: unknown key 'stepz'" in error_line(capsys, "train", str(path))


def test_missing_and_invalid_config_file(tmp_path, capsys):
    assert "does not exist" in error_line(capsys, "train", str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    assert "not valid TOML" in error_line(capsys, "train", str(bad))


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    (b"", "empty"),
    (b"caf\xe9 latte\n\nmore text\n", "UTF-8"),
])
def test_bad_data(tiny_config, tmp_path, capsys, content, fragment):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    line = error_line(capsys, "train", str(tiny_config), "--out", str(tmp_path / "r"), "--quiet",
                      "--set", "data.corpus='files'", "--set", f"data.path='{path}'")
    assert fragment.lower() in line.lower()


def test_existing_run_is_not_overwritten(trained_run, tiny_config, capsys):
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    line = error_line(capsys, "train", str(tiny_config), "--out", str(trained_run), "--quiet")
    assert "already holds a run" in line
    after = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    assert before == after


def test_checkpoint_that_does_not_match_the_config(trained_run, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    line = error_line(capsys, "eval", str(copy), "--set", "model.d_model=64")
    assert "does not match the config" in line


def test_truncated_checkpoint(trained_run, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    weights = copy / "checkpoints" / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "truncated or corrupted" in error_line(capsys, "eval", str(copy))


def test_not_a_run_directory(tmp_path, capsys):
    assert "not a run directory" in error_line(capsys, "eval", str(tmp_path))


def test_console_script_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "EXTMEM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "extmem.cli", "train", str(tmp_path / "x.toml")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: config file {str(tmp_path / 'x.toml')!r} does not exist"


def test_masked_lm_trains_and_evaluates(tiny_config, tmp_path, capsys):
    result = run_json(capsys, "train", str(tiny_config), "--out", str(tmp_path / "mlm"), "--quiet",
                      "--set", "model.causal=false", "--set", "train.steps=2")
    assert result["steps"] == 2 and result["val_loss"] > 0
    assert "facts_recalled" not in result and "val_bpb" not in result  # causal-LM figures only
    assert main(["generate", str(tmp_path / "mlm"), "--prompt", "x"]) == 2
    assert "masked-LM encoder" in capsys.readouterr().err


def test_bf16_autocast_trains(tiny_config, tmp_path, capsys):
    result = run_json(capsys, "train", str(tiny_config), "--out", str(tmp_path / "bf16"),
                      "--quiet", "--set", "train.bf16=true", "--set", "train.steps=2")
    assert result["steps"] == 2 and 0 < result["val_loss"] < 20
