"""`extmem export --format hf` for a run that started from a Hugging Face checkpoint
(`model.pretrained`, `extmem augment HF_DIR`).

The model is the checkpoint's own architecture with memories at its FFN slots
(`extmem.pretrained.inject`), so the export is that model's `save_pretrained`: `config.json`
keeps the base model's fields, with `model_type = "extmem_augmented"` when memories were added
(after `import extmem`, `AutoModelForMaskedLM` / `AutoModelForCausalLM.from_pretrained(DIR)`
rebuild them; docs/huggingface.md), and the checkpoint's tokenizer files as they came, or the
run's tokenizer wrapped as a fast tokenizer when the checkpoint had only tokenizer.json.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from extmem.hf.export import check_out_dir, wrap_tokenizer
from extmem.pretrained import RUN_COPY
from extmem.pretrained.run_copy import TOKENIZER_FILES
from extmem.run.session import load_trained

TOKENIZER_CONFIG = "tokenizer_config.json"  # present: the tokenizer files are complete


def _card(run, out: Path) -> str:
    cfg = run.cfg.model
    auto = "AutoModelForCausalLM" if cfg.causal else "AutoModelForMaskedLM"
    memories = ", ".join(f"{m.lookup} at layers {m.layers} ({m.placement})"
                         for m in cfg.memories) or "none"
    return "\n".join([
        f"# {out.name}", "",
        f"A Hugging Face {run.model.hf.config.model_type} model continued with extmem "
        f"(run `{run.run_dir.name}`, {run.checkpoint.name}). Base checkpoint: "
        f"`{cfg.pretrained}` ({cfg.pretrained_init}). Memories: {memories}.", "",
        "```python", "import extmem  # registers model_type \"extmem_augmented\"",
        f"from transformers import {auto}, AutoTokenizer",
        f'model = {auto}.from_pretrained("{out.name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{out.name}")', "```", ""])


def export_pretrained_run(run_dir: Path, out: Path, checkpoint: str | None = None) -> dict:
    """Export the pretrained-model run `run_dir` (newest checkpoint, or `checkpoint`)."""
    run_dir, out = Path(run_dir), Path(out)
    check_out_dir(out)
    run = load_trained(run_dir, None, checkpoint)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        run.model.hf.save_pretrained(tmp)
        base = run_dir / RUN_COPY
        if (base / TOKENIZER_CONFIG).is_file():
            for name in TOKENIZER_FILES:
                if (base / name).is_file():
                    shutil.copyfile(base / name, tmp / name)
        else:
            wrap_tokenizer(run.data.tokenizer, run.cfg.model.max_seq_len,
                           run.cfg.model.causal).save_pretrained(tmp)
        (tmp / "README.md").write_text(_card(run, out), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kind = "ForCausalLM" if run.cfg.model.causal else "ForMaskedLM"
    return {"out": str(out), "run_dir": str(run_dir), "checkpoint": run.checkpoint.name,
            "step": run.step, "architecture": type(run.model.hf).__name__,
            "auto_class": f"AutoModel{kind}", "files": sorted(p.name for p in out.iterdir())}
