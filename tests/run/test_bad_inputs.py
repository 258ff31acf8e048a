"""Bad input around a run ends as promised: one `error:` line, exit 2, and nothing already
written lost or changed (docs/architecture.md: "Contracts")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.cli_helpers import error_line

from extmem.cli import main
from extmem.errors import TrainingError
from extmem.run.checkpoint import sha256_file
from extmem.run.lock import LOCK_FILE, RunLock
from extmem.run.run_dir import read_metrics

STEP = "step-3"


@pytest.fixture(scope="module")
def config_module(tmp_path_factory) -> Path:
    from tests.conftest import TINY_TOML
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, config_module) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", str(config_module), "--out", str(out), "--quiet",
                 "--set", "train.steps=3"]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run (step-3) that a test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def resume(*extra: str) -> tuple[str, ...]:
    return ("train", "--resume", "--quiet", *extra)


def state_path(run: Path) -> Path:
    return run / "checkpoints" / STEP / "state.json"


def edit_state(run: Path, edit) -> None:
    path = state_path(run)
    state = json.loads(path.read_text())
    path.write_text(json.dumps(edit(state)))


def rehash(run: Path, name: str) -> None:
    """Record the current SHA-256 of the checkpoint's file `name` in its state.json."""
    digest = sha256_file(run / "checkpoints" / STEP / name)
    edit_state(run, lambda s: {**s, "files": {**s["files"], name: digest}})


# --- one writer per run directory ---------------------------------------------------------

def test_a_second_writer_is_refused_with_the_holders_pid(run, capsys):
    with RunLock(run):
        before = snapshot(run)
        line = error_line(capsys, *resume("--out", str(run), "--set", "train.steps=5"))
        assert f"process {os.getpid()}" in line and "in use" in line
        assert snapshot(run) == before
    assert main([*resume("--out", str(run), "--set", "train.steps=4")]) == 0  # lock freed


def test_the_python_api_takes_the_lock_too(run):
    from extmem.run.run_dir import load_run_config
    from extmem.train.loop import TrainOptions, train
    with RunLock(run), pytest.raises(TrainingError, match=f"process {os.getpid()}"):
        train(load_run_config(run), run, TrainOptions(resume=True, quiet=True))


@pytest.mark.parametrize("content", [
    '{"pid": 999999999, "host": "gone", "started": "2020-01-01T00:00:00"}\n',  # killed holder
    "not json",
    "",
])
def test_a_lock_file_nobody_holds_does_not_block(run, content):
    (run / LOCK_FILE).write_text(content)
    assert main([*resume("--out", str(run), "--set", "train.steps=4")]) == 0
    with RunLock(run) as lock:  # and it is free again afterwards
        assert lock.held


def test_the_lock_is_released_when_training_fails(run, capsys):
    assert "does not match" in error_line(capsys, *resume("--out", str(run),
                                                          "--set", "model.d_model=64"))
    with RunLock(run) as lock:
        assert lock.held


def test_a_failed_set_up_leaves_no_empty_run_directory(config_module, tmp_path, capsys):
    out = tmp_path / "run"
    line = error_line(capsys, "train", str(config_module), "--out", str(out), "--quiet",
                      "--set", "model.vocab_size=5")  # found too small once the tokenizer is built
    assert "model.vocab_size" in line
    assert not out.exists()


def test_out_naming_a_file(config_module, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    line = error_line(capsys, "train", str(config_module), "--out", str(path), "--quiet")
    assert "is a file" in line
    assert path.read_text() == "keep me"


# --- state.json schema ----------------------------------------------------------------------

def _drop(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


def _drop_file(name):
    return lambda s: {**s, "files": {k: v for k, v in s["files"].items() if k != name}}


@pytest.mark.parametrize("edit,fragment", [
    (lambda s: [s], "not an object"),
    (lambda s: {**s, "format_version": "2"}, "format version"),
    (lambda s: {**s, "format_version": 99}, "format version"),
    (_drop("step"), "'step'"),
    (lambda s: {**s, "step": "abc"}, "'step'"),
    (lambda s: {**s, "step": -5}, "'step'"),
    (lambda s: {**s, "step": True}, "'step'"),
    (lambda s: {**s, "step": 3.0}, "'step'"),
    (lambda s: {**s, "step": 9}, "does not match the directory name step-3"),
    (_drop("files"), "'files'"),
    (lambda s: {**s, "files": {}}, "'files'"),
    (lambda s: {**s, "files": ["model.safetensors"]}, "'files'"),
    (_drop_file("model.safetensors"), "does not list model.safetensors"),
    (_drop_file("rng.safetensors"), "does not list rng.safetensors"),
    (lambda s: {**s, "files": {**s["files"], "model.safetensors": "abc"}},
     "'files.model.safetensors'"),
    (lambda s: {**s, "files": {**s["files"], "../config.toml": "0" * 64}}, "'files'"),
    (lambda s: {**s, "optimizers": ["adamw"]}, "'optimizers'"),
    (lambda s: {**s, "tokenizer_sha256": 5}, "'tokenizer_sha256'"),
])
def test_state_json_is_checked_before_anything_is_written(run, capsys, edit, fragment):
    edit_state(run, edit)
    before = snapshot(run)
    line = error_line(capsys, *resume("--out", str(run), "--set", "train.steps=5"))
    assert fragment in line and STEP in line, line
    assert snapshot(run) == before  # metrics kept, no checkpoint overwritten, config unchanged
    assert "checkpoints" in error_line(capsys, "eval", str(run))


# --- damaged checkpoint files -----------------------------------------------------------------

def _garbage_rng(run: Path) -> None:
    (run / "checkpoints" / STEP / "rng.safetensors").write_bytes(b"\x00not safetensors")
    rehash(run, "rng.safetensors")


def _garbage_rng_unlisted(run: Path) -> None:
    (run / "checkpoints" / STEP / "rng.safetensors").write_bytes(b"\x00not safetensors")
    edit_state(run, _drop_file("rng.safetensors"))


def _wrong_rng_tensors(run: Path) -> None:
    save_file({"x": torch.zeros(3)}, str(run / "checkpoints" / STEP / "rng.safetensors"))
    rehash(run, "rng.safetensors")


def _no_optimizer(run: Path) -> None:
    (run / "checkpoints" / STEP / "optimizer.safetensors").unlink()
    edit_state(run, _drop_file("optimizer.safetensors"))


def _wrong_optimizer_shape(run: Path) -> None:
    path = run / "checkpoints" / STEP / "optimizer.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in sorted(tensors) if k.endswith("::exp_avg"))
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    save_file(tensors, str(path))
    rehash(run, "optimizer.safetensors")


def _nan_weights(run: Path) -> None:
    path = run / "checkpoints" / STEP / "model.safetensors"
    tensors = load_file(str(path))
    tensors["embed.weight"][0, 0] = float("nan")
    save_file(tensors, str(path))
    rehash(run, "model.safetensors")


@pytest.mark.parametrize("damage,fragment", [
    (_garbage_rng, "rng.safetensors is not readable"),
    (_garbage_rng_unlisted, "does not list rng.safetensors"),
    (_wrong_rng_tensors, "no CPU RNG state"),
    (_no_optimizer, "does not list optimizer.safetensors"),
    (_wrong_optimizer_shape, "has shape"),
    (_nan_weights, "weights are not finite"),
])
def test_damaged_checkpoint_files_on_resume(run, capsys, damage, fragment):
    damage(run)
    before = snapshot(run)
    line = error_line(capsys, *resume("--out", str(run), "--set", "train.steps=5"))
    assert fragment in line, line
    assert snapshot(run) == before  # config.toml not rewritten, metrics kept


def test_eval_of_nonfinite_weights_is_an_error(run, capsys):
    _nan_weights(run)
    line = error_line(capsys, "eval", str(run))
    assert "weights are not finite" in line and "embed.weight" in line


# --- resuming must match the checkpoint ---------------------------------------------------------

def _edit_tokenizer(run: Path) -> None:
    path = run / "tokenizer.json"
    path.write_text(path.read_text() + "\n")


def _swap_tokenizer(run: Path) -> None:
    from tokenizers import Tokenizer, models
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
        str(run / "tokenizer.json"))


@pytest.mark.parametrize("change,overrides,fragment", [
    (None, ["data.vocab_size=400"], "data.vocab_size"),
    (_edit_tokenizer, [], "tokenizer.json was changed or replaced"),
    (_swap_tokenizer, [], "tokenizer.json was changed or replaced"),
    (lambda run: (run / "tokenizer.json").unlink(), [], "tokenizer.json is missing"),
    (None, ["model.d_model=64"], "does not match the config"),
    (None, ["model.memories.0.product_keys.n_keys=6"], "does not match the config"),
    (None, ["train.batch_size=2"], "train.batch_size x train.grad_accum_steps: 2 x 1 = 2 rows "
                                   "per step, but"),
    (None, ["train.grad_accum_steps=2"], "train.batch_size x train.grad_accum_steps: 4 x 2 = 8 "
                                         "rows per step, but"),
])
def test_resume_refuses_another_vocabulary_tokenizer_or_model(run, capsys, change, overrides,
                                                              fragment):
    if change is not None:
        change(run)
    before = snapshot(run)
    sets = [arg for o in overrides for arg in ("--set", o)]
    line = error_line(capsys, *resume("--out", str(run), *sets))
    assert fragment in line, line
    assert snapshot(run) == before  # config.toml is written only after the checkpoint loaded


def test_resume_may_split_the_same_rows_into_micro_batches(run, capsys):
    """batch_size 4 x 1 resumed as 2 x 2: the same rows per step, so it is allowed."""
    assert main([*resume("--out", str(run), "--json", "--set", "train.steps=4",
                         "--set", "train.batch_size=2", "--set", "train.grad_accum_steps=2")]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4


def test_checkpoints_record_the_tokenizer(trained):
    state = json.loads(state_path(trained).read_text())
    assert state["tokenizer_sha256"] == sha256_file(trained / "tokenizer.json")


def test_resume_with_more_steps_says_so(run, capsys):
    assert main(["train", "--resume", "--out", str(run), "--set", "train.steps=4"]) == 0
    assert "train.steps: 3 -> 4" in capsys.readouterr().err


# --- metrics.jsonl --------------------------------------------------------------------------

def test_non_utf8_metrics_line_reads_like_a_corrupt_one(run, capsys):
    path = run / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], b'{"step": 1, "x": "\xff\xfe"}\n', *lines[1:],
                               b"[1, 2]\n"]))
    records = read_metrics(run)
    assert len(records) == len(lines) and all(isinstance(r, dict) for r in records)
    assert main(["usage", str(run), "--no-plots", "--json"]) == 0
    capsys.readouterr()
    assert main([*resume("--out", str(run), "--set", "train.steps=4")]) == 0
    assert b"\xff" not in path.read_bytes()  # dropped on resume, like a torn line
    assert max(r["step"] for r in read_metrics(run)) == 4


# --- config paths and values --------------------------------------------------------------------

def test_config_path_that_is_a_directory(tmp_path, capsys):
    line = error_line(capsys, "train", str(tmp_path), "--out", str(tmp_path / "run"))
    assert "is a directory" in line and "does not exist" not in line


def test_nested_field_is_named_once(config_module, tmp_path, capsys):
    line = error_line(capsys, "train", str(config_module), "--out", str(tmp_path / "run"),
                      "--set", "model.memories.0.product_keys.n_keys=0")
    assert "model.memories[0].product_keys.n_keys:" in line
    assert "product_keys.product_keys" not in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [str(1 << 64), "-1"])
def test_train_seed_range(config_module, tmp_path, capsys, value):
    line = error_line(capsys, "train", str(config_module), "--out", str(tmp_path / "run"),
                      "--set", f"train.seed={value}")
    assert "train.seed" in line


@pytest.mark.parametrize("args,fragment", [
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-0.5"], "--temperature"),
    (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--top-k", "-1"], "--top-k"),
    (["--seed", str(1 << 64)], "--seed"),
    (["--seed", "-1"], "--seed"),
])
def test_generate_options(trained, capsys, args, fragment):
    line = error_line(capsys, "generate", str(trained), "--prompt", "the", *args)
    assert fragment in line


def test_generate_largest_seed(trained, capsys):
    assert main(["generate", str(trained), "--prompt", "the", "--max-new-tokens", "2",
                 "--seed", str((1 << 64) - 1)]) == 0


# --- out of memory --------------------------------------------------------------------------

def _oom_on_step(monkeypatch, exc: BaseException) -> None:
    from extmem.train import setup
    original = setup.build_optimizer

    def build(model, tc):
        optimizer, groups = original(model, tc)

        def step(*args, **kwargs):
            raise exc
        optimizer.step = step
        return optimizer, groups
    monkeypatch.setattr(setup, "build_optimizer", build)


OOMS = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                     "allocate memory: you tried to allocate 1099511627776 bytes.")]


@pytest.mark.parametrize("exc", OOMS, ids=["accelerator", "cpu"])
def test_out_of_memory_in_the_first_step_leaves_no_half_made_run(config_module, tmp_path,
                                                                  monkeypatch, capsys, exc):
    out = tmp_path / "run"
    _oom_on_step(monkeypatch, exc)
    line = error_line(capsys, "train", str(config_module), "--out", str(out), "--quiet")
    assert "out of memory at step 1" in line and "train.batch_size" in line
    assert not out.exists()
    monkeypatch.undo()
    assert main(["train", str(config_module), "--out", str(out), "--quiet",
                 "--set", "train.steps=1"]) == 0


def test_out_of_memory_keeps_what_was_there(config_module, run, tmp_path, monkeypatch, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    _oom_on_step(monkeypatch, OOMS[1])
    error_line(capsys, "train", str(config_module), "--out", str(other), "--quiet")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]  # .lock and run files removed
    before = snapshot(run)  # a run with a checkpoint: nothing removed
    line = error_line(capsys, *resume("--out", str(run), "--set", "train.steps=5"))
    assert "out of memory at step 4" in line and "intact" in line
    assert snapshot(run).keys() >= {k for k in before if k.startswith("checkpoints/")}


def test_other_runtime_errors_are_not_called_out_of_memory(config_module, tmp_path, monkeypatch):
    _oom_on_step(monkeypatch, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["train", str(config_module), "--out", str(tmp_path / "run"), "--quiet"])


# --- augment ------------------------------------------------------------------------------------

def test_augment_out_naming_a_file(trained, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    line = error_line(capsys, "augment", str(trained), "--layers", "0", "--out", str(path))
    assert "is a file" in line and path.read_text() == "keep me"


def test_an_augmented_run_records_its_tokenizer(trained, tmp_path, capsys):
    out = tmp_path / "augmented"
    assert main(["augment", str(trained), "--layers", "0", "--out", str(out), "--json"]) == 0
    state = json.loads((out / "checkpoints" / "step-0" / "state.json").read_text())
    assert state["tokenizer_sha256"] == sha256_file(out / "tokenizer.json")
    _edit_tokenizer(out)
    capsys.readouterr()
    assert "tokenizer.json was changed" in error_line(capsys, *resume("--out", str(out)))


def test_distributed_layout_needs_its_dcp_and_rng_files(tmp_path):
    from extmem.errors import CheckpointError
    from extmem.run.checkpoint import check_state
    path = tmp_path / "checkpoints" / "step-2"
    (path / "dcp").mkdir(parents=True)
    digest = "0" * 64
    files = {"dcp/.metadata": digest, "dcp/__0_0.distcp": digest, "dcp/__1_0.distcp": digest,
             "rng-rank0.safetensors": digest, "rng-rank1.safetensors": digest}
    state = {"format_version": 2, "step": 2, "world_size": 2, "files": files}
    assert check_state(path, state) is state
    for name, fragment in [("rng-rank1.safetensors", "rng-rank1.safetensors"),
                           ("dcp/.metadata", "dcp/.metadata")]:
        broken = {**state, "files": {k: v for k, v in files.items() if k != name}}
        with pytest.raises(CheckpointError, match=f"does not list {fragment}"):
            check_state(path, broken)
    no_shards = {k: v for k, v in files.items() if not k.endswith(".distcp")}
    with pytest.raises(CheckpointError, match=r"dcp/\*\.distcp"):
        check_state(path, {**state, "files": no_shards})
    with pytest.raises(CheckpointError, match="rng-rank"):
        check_state(path, {**state, "world_size": 10**12})
