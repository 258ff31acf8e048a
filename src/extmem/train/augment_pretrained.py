"""`extmem augment HF_DIR`: a run directory that starts from a local Hugging Face checkpoint.

Kim & Jung 2020 ("Large Product Key Memory for Pretrained Language Models", sec. 3.2-3.3) take
a model pretrained without memory, add product-key memory beside the FFN (ResM, `parallel_ffn`)
or in its place (`replace_ffn`), continue pretraining and finetune. This command writes the run
directory that the rest of the tool chain continues (`train --resume`, `eval`, `usage`,
`finetune`, `export --format hf`), like `extmem augment RUN` does for extmem's own models:

- config.toml: `model.pretrained` = the checkpoint, the architecture read from its config, the
  memories (zero-initialised output unless the memory file says otherwise); the data and train
  sections are the defaults with the `--set` overrides (masked LM for encoders, causal LM for
  decoders, as the checkpoint was trained);
- tokenizer.json: the checkpoint's own tokenizer (its ids are the embedding's rows);
- pretrained/: the checkpoint's config.json and tokenizer files (not its weights), so the run
  is complete without the source directory;
- checkpoints/step-0/: the pretrained weights + the new memories (+ a new MLM head when the
  checkpoint holds only the encoder, as sentence-transformers models do: said in augment.json
  and on the console);
- augment.json: provenance and the step-0 check, the validation loss with and without the
  memories (equal for `parallel_ffn` with a zero-initialised output).

`--no-memory` writes the same run without memory: the continued-pretraining control arm.
`model.pretrained_init = "random"` (via `--set`) builds the same shape with fresh weights: the
"scratch" arm.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from extmem.config import apply_overrides, from_dict, to_dict
from extmem.data import DataConfig
from extmem.errors import CheckpointError, ConfigError
from extmem.memory.config import MemoryConfig
from extmem.model.augment import add_memories
from extmem.model.config import ModelConfig
from extmem.pretrained import copy_base_files
from extmem.pretrained.lm import architecture
from extmem.pretrained.source import read_hf_config
from extmem.run.checkpoint import save_checkpoint, sha256_file
from extmem.run.config import RunConfig
from extmem.run.provenance import record_session
from extmem.run.run_dir import TOKENIZER_FILE, save_run_config, write_json
from extmem.run.session import build_model, load_run_data, resolve_device, with_vocab
from extmem.train.augment_run import AUGMENT_FILE, _check, _prepare_out, build_memories, publish
from extmem.train.optim import build_optimizer

HEAD_NOTE = ("the checkpoint has no {what} head; created one (its transform freshly "
             "initialised, its decoder tied to the word embeddings): {names}")


def is_hf_checkpoint(path: Path) -> bool:
    """A Hugging Face checkpoint directory (config.json), not an extmem run (config.toml)."""
    return (path / "config.json").is_file() and not (path / "config.toml").is_file()


def _run_config(source: Path, memories: list[MemoryConfig] | None, memory_path: Path | None,
                layers: list[int] | None, placement: str | None,
                overrides: list[str]) -> tuple[RunConfig, RunConfig]:
    """(the run without memory, the run with them), overrides applied to both."""
    arch = architecture(read_hf_config(source), str(source))
    dense = RunConfig(model=ModelConfig(**arch, pretrained=str(source.resolve())),
                      data=DataConfig(tokenizer=str(source.resolve())))
    dense = from_dict(RunConfig, apply_overrides(to_dict(dense), overrides))
    if memories is None:
        memories = build_memories(dense.model, memory_path, layers, placement)
    if not memories:
        return dense, dense
    return dense, dataclasses.replace(dense, model=add_memories(dense.model, memories))


def _copy_tokenizer(source: Path, tmp: Path) -> None:
    if not (source / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{source}: no {TOKENIZER_FILE}; extmem reads the checkpoint's "
                              "own tokenizer from it (save it with the tokenizer's "
                              "save_pretrained, which writes tokenizer.json)")
    shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)


def _head_note(created: list[str], causal: bool) -> str | None:
    """The sentence that says which head tensors loading the checkpoint created."""
    if not created:
        return None
    return HEAD_NOTE.format(what="LM" if causal else "MLM", names=", ".join(created))


def augment_pretrained(source: Path, out: Path, memory_path: Path | None = None,
                       layers: list[int] | None = None, placement: str | None = None,
                       overrides: list[str] | None = None,
                       memories: list[MemoryConfig] | None = None, force: bool = False,
                       no_memory: bool = False) -> dict[str, Any]:
    """Write the run directory `out` from the Hugging Face checkpoint `source`; returns what
    augment.json holds. `memories` (validated) replace `memory_path` / `layers` / `placement`;
    `no_memory` writes the control run without memory."""
    if no_memory and (memories or memory_path or layers):
        raise ConfigError("augment: --no-memory takes no --memory or --layers")
    dense_cfg, cfg = _run_config(source, [] if no_memory else memories, memory_path, layers,
                                 placement, overrides or [])
    tmp = _prepare_out(out)
    try:
        _copy_tokenizer(source, tmp)
        data = load_run_data(cfg, tmp)  # the checkpoint's tokenizer, copied above
        dense_cfg, cfg = with_vocab(dense_cfg, data.lm.vocab_size), with_vocab(cfg, data.lm.vocab_size)
        device = resolve_device(cfg.train.device)
        dense = build_model(dense_cfg, device, force=force, training=False)
        model = build_model(cfg, device, force=force, tokenizer=data.tokenizer)
        # the same pretrained (and created head) weights in both, whatever the seed drew
        moved = model.load_state_dict(dense.state_dict(), strict=False)
        created = dense.created_tensors
        note = _head_note(created, cfg.model.causal)
        check = _check(dense, model, cfg, data, device)
        model.train()
        new = [n for n in moved.missing_keys if ".usage." not in n]
        report = {"run_dir": str(out), "source_checkpoint": str(source.resolve()),
                  "source_step": 0, "init": cfg.model.pretrained_init,
                  "memories": [to_dict(m) for m in cfg.model.memories], **check,
                  "created_head": created, "note": note, "new_tensors": new,
                  "dropped_tensors": sorted(moved.unexpected_keys),
                  "new_params": sum(p.numel() for n, p in model.named_parameters() if n in new),
                  "optimizer": "fresh AdamW and warmup + cosine schedule; steps count from 0"}
        save_run_config(tmp, cfg)
        copy_base_files(source, tmp)
        optimizer, _ = build_optimizer(model, cfg.train)
        save_checkpoint(tmp, 0, model, optimizer, {
            "tokens": 0, "augmented_from": str(source.resolve()),
            "data_vocab_size": cfg.data.vocab_size,
            "tokenizer_sha256": sha256_file(tmp / TOKENIZER_FILE)})
        write_json(tmp / AUGMENT_FILE, report)
        record_session(tmp, "augment", source=str(source.resolve()))
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report

