"""Hugging Face pretrained models as an extmem run's model (Kim & Jung 2020, "Large Product Key
Memory for Pretrained Language Models": memory added to a pretrained LM, then continued
pretraining and finetuning).

- `inject`: our memories at the FFN slots of Hugging Face GPT-2, BERT and Llama-family models
  (`add_memory`, re-exported by `extmem.hf`);
- `source`: a local checkpoint directory read offline, with its MLM / LM head;
- `lm`: `PretrainedLM`, the wrapper the training loop, evaluation and finetuning run;
- `run_copy`: what a run directory keeps of the checkpoint (its config and tokenizer files).

Below `run/` (the run builds its model from here) and above `model/`. Importing this package
does not import transformers; building a model does (extra `hf`).
"""

from extmem.pretrained.run_copy import RUN_COPY, base_dir, copy_base_files

__all__ = ["RUN_COPY", "base_dir", "copy_base_files"]
