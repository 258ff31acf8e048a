"""Build what a run needs from its config: data, tokenizer, model, device.

Shared by `train`, `eval` and `generate`, so every command sees the same data and model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from extmem.data import Corpus, LMData, build_lm_data, get_tokenizer, load_corpus
from extmem.data.stream_corpus import build_streamed_lm_data, is_streamed, sample_corpus
from extmem.distributed.context import DistContext
from extmem.distributed.tables import shard_tables
from extmem.errors import CheckpointError, ConfigError
from extmem.memory.table_init import deferred_tables
from extmem.model import Transformer
from extmem.model.resources import check_table_memory, per_rank, table_needs
from extmem.pretrained import base_dir
from extmem.pretrained.lm import PretrainedLM, build_pretrained
from extmem.run.config import RunConfig, matching_group
from extmem.run.run_dir import TOKENIZER_FILE


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available; "
                          "use 'cpu' or 'auto'")
    return torch.device(name)


@dataclass
class RunData:
    corpus: Corpus
    tokenizer: Tokenizer
    lm: LMData


def load_run_data(cfg: RunConfig, run_dir: Path | None = None) -> RunData:
    """Corpus, tokenizer (the run directory's own if it has one) and token streams."""
    saved = run_dir / TOKENIZER_FILE if run_dir is not None else None
    streamed = is_streamed(cfg.data)  # in RAM: at most the sample a tokenizer is trained on
    trains = not cfg.data.tokenizer and not (saved is not None and saved.is_file())
    corpus = (load_corpus(cfg.data) if not streamed else sample_corpus(cfg.data) if trains
              else Corpus(cfg.data.corpus, [], []))
    if saved is not None and saved.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(saved))
        except Exception as exc:  # noqa: BLE001 (tokenizers raises a plain Exception)
            raise CheckpointError(f"{saved} is not a readable tokenizer: {exc}") from None
    else:
        tokenizer = get_tokenizer(corpus, cfg.data)
    lm = (build_streamed_lm_data(cfg.data, tokenizer) if streamed
          else build_lm_data(corpus, tokenizer, cfg.data))
    if not cfg.model.causal and lm.mask_id is None:
        raise ConfigError("model.causal: false (masked LM) needs a mask token, but the "
                          f"tokenizer{' ' + repr(cfg.data.tokenizer) if cfg.data.tokenizer else ''}"
                          " has none (<mask> or [MASK]); use a causal model or another tokenizer")
    return RunData(corpus=corpus, tokenizer=tokenizer, lm=lm)


def with_vocab(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """The config with model.vocab_size resolved from the tokenizer (0 means automatic)."""
    if cfg.model.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    if cfg.model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's {vocab_size}; use 0 (automatic) or >= {vocab_size}")
    return cfg


def build_model(cfg: RunConfig, device: torch.device, force: bool = False,
                training: bool = True, tokenizer: Tokenizer | None = None,
                run_dir: Path | None = None,
                ctx: DistContext | None = None) -> Transformer | PretrainedLM:
    """Model with deterministic initialisation from train.seed; lookups that read token text
    (Engram's tokenizer compression) build their maps from `tokenizer`, and a checkpoint
    loaded afterwards restores the maps it was trained with.

    With `model.pretrained` the model is that Hugging Face checkpoint with the memories added
    (`extmem.pretrained`), built from the run's own copy of its config when `run_dir` has one
    (its checkpoint then supplies the weights), else from the checkpoint's own weights.

    First, unless `force`, a ConfigError if the memory tables (with the optimizer state and
    gradients of training, if `training`) would not fit in the memory available
    (`extmem.model.resources`).

    Under torchrun (`ctx.enabled`) the memory tables are sharded as `train.table_sharding`
    says while the model is built: each rank draws only its shard (never the whole table,
    `extmem.distributed.tables`), and the memory check counts only the shard."""
    world = ctx.world_size if ctx is not None and ctx.enabled else 1
    shard = world > 1 and cfg.train.table_sharding != "replicate"
    if not force:
        def optimizer_for(name: str) -> str:
            group = matching_group(name, cfg.train.param_groups)
            return group.optimizer if group is not None else "adamw"
        needs = table_needs(cfg.model, optimizer_for if training else None)
        if shard:
            needs = [per_rank(need, world) if memory.readout != "experts" else need
                     for need, memory in zip(needs, cfg.model.memories, strict=True)]
        check_table_memory(needs, device, "pass --force" if training else "free memory")
    torch.manual_seed(cfg.train.seed)
    with deferred_tables(shard):
        if cfg.model.pretrained:
            model = build_pretrained(cfg.model, base_dir(cfg.model.pretrained, run_dir))
        else:
            model = Transformer(cfg.model)
    if world > 1:
        shard_tables(model, cfg.train.table_sharding, ctx)
    if tokenizer is not None:
        model.use_tokenizer(tokenizer)
    return model.to(device)


@dataclass
class TrainedRun:
    """A run directory's config, data and model restored from one of its checkpoints."""

    run_dir: Path
    cfg: RunConfig
    data: RunData
    model: Transformer
    checkpoint: Path
    step: int


def load_trained(run_dir: Path, overrides: list[str] | None = None,
                 checkpoint: str | None = None) -> TrainedRun:
    """Restore `run_dir` at checkpoint `step-N` (default: the newest complete one)."""
    from extmem.run.checkpoint import latest_checkpoint, load_checkpoint
    from extmem.run.run_dir import load_run_config

    cfg = load_run_config(run_dir, overrides)
    path = run_dir / "checkpoints" / checkpoint if checkpoint else latest_checkpoint(run_dir)
    if path is None or not (path / "state.json").is_file():
        raise CheckpointError(f"{run_dir}: no complete checkpoint found "
                              f"({'no ' + checkpoint if checkpoint else 'train it first'})")
    data = load_run_data(cfg, run_dir)
    cfg = with_vocab(cfg, data.lm.vocab_size)
    model = build_model(cfg, resolve_device(cfg.train.device), training=False, run_dir=run_dir)
    loaded = load_checkpoint(path, model)
    return TrainedRun(run_dir, cfg, data, model, loaded.path, loaded.step)
