"""`extmem compare --reuse DIR`: take finished runs with the very same config from other sweeps.

Sweeps often share cells: every claim sweep on GCIDE has the same dense baseline, and a
capacity sweep's d = 32 cells are its recipe grid's defaults. A run of DIR (any
`*/seed-*/` below it) is reused when it has finished (results.json at its config's steps), was
trained from scratch (not augmented from a dense run), and its config.toml resolves to exactly
the config this sweep would train (every field, the seed and the budget included). Its files
are copied into the sweep, checkpoints left behind (the copy cannot be resumed or augmented,
and does not need to be), and the copy's provenance.json records where it came from. What
counts as "the same" is the resolved config only: code changes between the two are not seen,
so reuse runs from the same code, or code that trains those configs identically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from extmem.config import to_dict
from extmem.data import DataConfig, get_tokenizer, load_corpus
from extmem.data.stream_corpus import is_streamed, sample_corpus
from extmem.errors import ConfigError, ExtmemError
from extmem.run.config import RunConfig
from extmem.run.lock import LOCK_FILE
from extmem.run.provenance import record_session
from extmem.run.run_dir import CONFIG_FILE, RESULTS_FILE, load_run_config
from extmem.train.augment_run import AUGMENT_FILE

# what a reused run leaves behind: its checkpoints (large; nothing resumes a finished copy)
LEFT_BEHIND = ("checkpoints", LOCK_FILE)


def config_key(cfg: RunConfig) -> str:
    """A canonical text of a run config without model.vocab_size (0 in a sweep's config,
    resolved from the tokenizer in a trained run's: `reusable_for` checks it apart)."""
    fields = to_dict(cfg)
    fields["model"]["vocab_size"] = 0
    return json.dumps(fields, sort_keys=True, default=str)


def tokenizer_vocab(data: DataConfig) -> int:
    """The vocabulary a run of `data` trains with (the tokenizer is cached)."""
    corpus = sample_corpus(data) if is_streamed(data) else load_corpus(data)
    return get_tokenizer(corpus, data).get_vocab_size()


def reusable_for(cfg: RunConfig, found: dict[str, tuple[Path, int]],
                 vocab: dict[str, int]) -> Path | None:
    """The finished run with `cfg`'s config, or None. Its vocabulary must be the one `cfg`
    resolves to (its own model.vocab_size, or the tokenizer's when that is 0; `vocab`
    memoises the tokenizer's per data config)."""
    match = found.get(config_key(cfg))
    if match is None:
        return None
    run_dir, trained_vocab = match
    wanted = cfg.model.vocab_size
    if wanted == 0:
        key = repr(cfg.data)
        if key not in vocab:
            vocab[key] = tokenizer_vocab(cfg.data)
        wanted = vocab[key]
    return run_dir if trained_vocab == wanted else None


def _finished_steps(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reusable_runs(directories: list[Path]) -> dict[str, tuple[Path, int]]:
    """config key -> (a finished, from-scratch run below one of `directories`, the vocabulary
    it trained with); the first found wins. A directory that does not exist is a
    ConfigError; unreadable runs are passed over."""
    found: dict[str, tuple[Path, int]] = {}
    for directory in directories:
        if not directory.is_dir():
            raise ConfigError(f"--reuse {directory}: not a directory; name a sweep directory "
                              "whose runs to reuse (e.g. runs/sweeps/gcide-long)")
        for run_dir in sorted(directory.glob("*/seed-*")):
            if (run_dir / AUGMENT_FILE).exists() or not (run_dir / CONFIG_FILE).is_file():
                continue
            try:
                cfg = load_run_config(run_dir)
            except ExtmemError:
                continue
            if _finished_steps(run_dir) == cfg.train.steps:
                found.setdefault(config_key(cfg), (run_dir, cfg.model.vocab_size))
    return found


def reuse_run(source: Path, target: Path) -> bool:
    """Copy the finished run `source` into `target`, whole or not at all: assembled beside it,
    then renamed onto it, which works only while `target` is missing or empty. False (and
    nothing changed) when another worker filled `target` first."""
    staging = target.with_name(f".reuse-{target.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    record_session(staging, "reuse", source=str(source.resolve()))
    try:
        os.rename(staging, target)
    except OSError:  # not empty: another worker reused or started it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True
