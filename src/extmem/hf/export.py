"""`extmem export RUN_DIR --format hf --out DIR`: a run's checkpoint as a Hugging Face directory.

Writes `config.json` (ExtmemConfig: our ModelConfig nested under "model", and an `extmem_load`
line saying how to load it), `model.safetensors`, `generation_config.json`, the run's tokenizer
as a `PreTrainedTokenizerFast` (eos / pad / mask tokens set) and a model card `README.md`
(`extmem.hf.card`). After `import extmem`, `AutoModelForCausalLM.from_pretrained(DIR)` (or
`AutoModelForMaskedLM` for an encoder run, `AutoModelForSequenceClassification` for a new
head on either) loads it offline with the run's logits. Without `import extmem`, transformers
stops with "model type `extmem` ... does not recognize this architecture" (it runs no code of
ours, and we never ask for remote code). The directory is assembled under a temporary name and
renamed, so an interrupted export leaves nothing that looks complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from extmem.data.tokenizer import special_ids
from extmem.errors import CheckpointError, ConfigError, ExtmemError
from extmem.hf.card import CardFacts, last_validation, model_card
from extmem.hf.configuration import ExtmemConfig, extmem_version
from extmem.hf.modeling import ExtmemForCausalLM, ExtmemForMaskedLM
from extmem.model import parameter_counts
from extmem.run.checkpoint import latest_checkpoint, load_checkpoint
from extmem.run.run_dir import TOKENIZER_FILE, load_run_config, read_metrics
from extmem.run.session import with_vocab


def wrap_tokenizer(tokenizer: Tokenizer, max_length: int, causal: bool) -> PreTrainedTokenizerFast:
    """The run's tokenizer as an HF fast tokenizer. Causal models pad on the left, so batched
    `generate()` continues every row from its last real token."""
    ids = special_ids(tokenizer)
    mask = tokenizer.id_to_token(ids.mask) if ids.mask is not None else None
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                   eos_token=tokenizer.id_to_token(ids.eos),
                                   pad_token=tokenizer.id_to_token(ids.pad), mask_token=mask,
                                   model_max_length=max_length,
                                   padding_side="left" if causal else "right")


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already exists and is not an empty directory; "
                          "choose a new directory")


def _read_tokenizer(run_dir: Path) -> Tokenizer:
    path = run_dir / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: {TOKENIZER_FILE} is missing; export needs the run's "
                              "tokenizer")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 (tokenizers raises a plain Exception)
        raise CheckpointError(f"{path} is not a readable tokenizer: {exc}") from None
    try:
        special_ids(tokenizer)
    except ExtmemError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return tokenizer


def _card(out: Path, run_dir: Path, cfg, model, loaded, license: str | None) -> str:
    import torch
    import transformers

    tokens = loaded.state.get("tokens")
    corpus = cfg.data.hf_name if cfg.data.corpus == "hf" else cfg.data.corpus
    facts = CardFacts(name=out.name, architecture=type(model).__name__,
                      parameters=parameter_counts(model.model), run=run_dir.name,
                      checkpoint=loaded.path.name, step=loaded.step,
                      tokens=tokens if isinstance(tokens, int) else None, corpus=corpus,
                      validation=last_validation(read_metrics(run_dir), loaded.step),
                      license=license)
    versions = {"extmem": extmem_version(), "transformers": transformers.__version__,
                "torch": torch.__version__}
    return model_card(model.config.model_config, facts, versions)


def export_run(run_dir: Path, out: Path, checkpoint: str | None = None,
               license: str | None = None) -> dict:
    """Export `run_dir`'s checkpoint (newest, or `checkpoint` = "step-N") into `out`;
    `license` (an SPDX id such as "apache-2.0", or "other") goes into the model card."""
    run_dir, out = Path(run_dir), Path(out)
    check_out_dir(out)
    cfg = load_run_config(run_dir)
    path = run_dir / "checkpoints" / checkpoint if checkpoint else latest_checkpoint(run_dir)
    if path is None or not path.is_dir():
        raise CheckpointError(f"{run_dir}: no complete checkpoint found "
                              f"({'no ' + checkpoint if checkpoint else 'train it first'})")
    tokenizer = _read_tokenizer(run_dir)
    model_cfg = with_vocab(cfg, tokenizer.get_vocab_size()).model
    model_class = ExtmemForCausalLM if model_cfg.causal else ExtmemForMaskedLM
    ids = special_ids(tokenizer)
    config = ExtmemConfig(model=model_cfg, eos_token_id=ids.eos, pad_token_id=ids.pad,
                          architectures=[model_class.__name__])
    model = model_class(config)
    loaded = load_checkpoint(path, model.model)  # verifies the SHA-256 of every file

    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        wrap_tokenizer(tokenizer, model_cfg.max_seq_len, model_cfg.causal).save_pretrained(tmp)
        (tmp / "README.md").write_text(_card(out, run_dir, cfg, model, loaded, license),
                                       encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "run_dir": str(run_dir), "checkpoint": loaded.path.name,
            "step": loaded.step, "architecture": model_class.__name__,
            "files": sorted(p.name for p in out.iterdir())}
