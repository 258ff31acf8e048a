"""What a resumed run must share with its checkpoint (tokenizer, vocabulary, rows per step) and
which checkpoint it resumes from; `--resume` with nothing to resume is an error."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from extmem.config import read_toml
from extmem.errors import CheckpointError, ConfigError
from extmem.run.checkpoint import (
    latest_checkpoint,
    read_state,
    sha256_file,
)
from extmem.run.config import RunConfig
from extmem.run.run_dir import (
    CONFIG_FILE,
    TOKENIZER_FILE,
)
from extmem.train.trainer import TrainOptions


def saved_config(run_dir: Path) -> dict:
    """RUN/config.toml as written by the last session (empty if missing or unreadable)."""
    try:
        return read_toml(run_dir / CONFIG_FILE)
    except ConfigError:
        return {}


def check_rows_per_step(cfg: RunConfig, run_dir: Path, saved: dict) -> None:
    """A resumed step draws train.batch_size * train.grad_accum_steps rows, as the run's
    earlier steps did: changing either changes the product (each step's rows and the
    gradient's batch) is refused; the same rows split otherwise (a smaller batch_size with
    more grad_accum_steps, to save memory) trains alike and is allowed."""
    train = saved.get("train", {})
    batch, accum = train.get("batch_size"), train.get("grad_accum_steps", 1)
    if not isinstance(batch, int) or not isinstance(accum, int):
        return  # no saved config (or not ours): nothing to compare with
    tc = cfg.train
    if batch * accum != tc.rows_per_step:
        raise ConfigError(f"train.batch_size x train.grad_accum_steps: {tc.batch_size} x "
                          f"{tc.grad_accum_steps} = {tc.rows_per_step} rows per step, but "
                          f"{run_dir} was trained with {batch} x {accum} = {batch * accum}; "
                          f"resume with a product of {batch * accum} (e.g. batch_size={batch}, "
                          f"grad_accum_steps={accum}), or train a new run")


def check_resume(cfg: RunConfig, run_dir: Path, checkpoint: Path, state: dict,
                  console: Console) -> None:
    """What a resumed run must share with its checkpoint: the tokenizer (token ids),
    data.vocab_size (unless data.tokenizer names the tokenizer) and the rows per step
    (`check_rows_per_step`). train.steps may change (extending a run is how it is done): one
    line."""
    tokenizer = run_dir / TOKENIZER_FILE
    if "tokenizer_sha256" in state and (not tokenizer.is_file()
                                        or sha256_file(tokenizer) != state["tokenizer_sha256"]):
        what = "is missing" if not tokenizer.is_file() else "was changed or replaced"
        raise CheckpointError(f"{tokenizer} {what}: {checkpoint.name} was trained with another "
                              "tokenizer (its SHA-256 is in state.json), so the token ids would "
                              "not match; restore the run's tokenizer.json, or train a new run")
    saved = saved_config(run_dir)
    vocab = state.get("data_vocab_size", saved.get("data", {}).get("vocab_size"))
    if vocab is not None and vocab != cfg.data.vocab_size and not cfg.data.tokenizer:
        raise ConfigError(f"data.vocab_size: {cfg.data.vocab_size} differs from the {vocab} "
                          f"{run_dir} was trained with (tokenizer and embeddings depend on it); "
                          f"resume with data.vocab_size={vocab}, or train a new run")
    check_rows_per_step(cfg, run_dir, saved)
    steps = saved.get("train", {}).get("steps")
    if isinstance(steps, int) and steps != cfg.train.steps:
        console.print(f"train.steps: {steps} -> {cfg.train.steps}")


def resume_point(cfg: RunConfig, run_dir: Path, options: TrainOptions,
                 console: Console) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its verified state.json (None, None: start anew)."""
    checkpoint = latest_checkpoint(run_dir) if options.resume else None
    if checkpoint is None:
        if options.resume is True:
            raise CheckpointError(f"--resume: {run_dir} has no complete checkpoint to continue "
                                  "from; train it anew (without --resume, or another --out)")
        return None, None
    state = read_state(checkpoint)
    check_resume(cfg, run_dir, checkpoint, state, console)
    return checkpoint, state
