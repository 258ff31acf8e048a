"""Downstream finetuning of pretrained runs (`extmem finetune`): tasks, classifier, metrics."""

from extmem.finetune.config import MODES, FinetuneConfig
from extmem.finetune.run import finetune
from extmem.finetune.tasks import BUILTIN_TASKS, TaskData, load_task

__all__ = ["BUILTIN_TASKS", "MODES", "FinetuneConfig", "TaskData", "finetune", "load_task"]
