"""What a run directory keeps of the Hugging Face checkpoint it started from.

RUN/pretrained/ holds the checkpoint's config.json and tokenizer files, never its weights (the
run's own checkpoints hold those, memories included). So a run directory is complete without
the original checkpoint: it can be moved, resumed, evaluated, finetuned and exported after the
source directory is gone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from extmem.errors import CheckpointError

RUN_COPY = "pretrained"
CONFIG_NAME = "config.json"
# tokenizer files of the families extmem.pretrained supports (WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model")


def base_dir(pretrained: str, run_dir: Path | None) -> Path:
    """The directory to build the model from: the run's own copy when it has one, else the
    checkpoint directory that `model.pretrained` names."""
    if run_dir is not None and (run_dir / RUN_COPY / CONFIG_NAME).is_file():
        return run_dir / RUN_COPY
    path = Path(pretrained).expanduser()
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"model.pretrained: {pretrained!r} is not a Hugging Face "
                              f"checkpoint directory (no {CONFIG_NAME}); give a local "
                              "directory holding config.json and the weights")
    return path


def copy_base_files(source: Path, run_dir: Path) -> list[str]:
    """Copy config.json and the tokenizer files of `source` into RUN/pretrained/; returns the
    names copied. Nothing happens when `source` is already the run's copy."""
    target = run_dir / RUN_COPY
    if source.resolve() == target.resolve():
        return []
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (CONFIG_NAME, *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    return copied
