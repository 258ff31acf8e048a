"""Training: configs, parameter groups, checkpoints, run directories and the loop."""

from extmem.train.config import ParamGroupConfig, RunConfig, TrainConfig

__all__ = ["ParamGroupConfig", "RunConfig", "TrainConfig"]
