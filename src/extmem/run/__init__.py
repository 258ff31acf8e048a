"""A run and its directory: the whole config (`RunConfig`), checkpoints (one entry point,
local and distributed back ends), the run directory's files, the session that rebuilds data,
tokenizer and model for a run, the training objective and evaluation.

Below `train/` (the loop and optimizers) and the apps (`experiments/`, `finetune/`,
`report/`, `hf/`, the CLI), which all reach a run only through this package.
"""

from extmem.run.config import ParamGroupConfig, RunConfig, TrainConfig

__all__ = ["ParamGroupConfig", "RunConfig", "TrainConfig"]
