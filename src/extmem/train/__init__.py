"""Training: the loop (`loop.py`), optimizer groups and schedules, row-sparse optimizers,
`torch.compile` of the dense parts, and `extmem augment`. Configs live in `extmem.run`."""

from extmem.run.config import ParamGroupConfig, RunConfig, TrainConfig

__all__ = ["ParamGroupConfig", "RunConfig", "TrainConfig"]
