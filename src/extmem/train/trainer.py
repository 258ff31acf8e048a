"""What one training session holds and returns: options, the session state (`Trainer`),
one step's result, the logging window, and the interruption raised after SIGINT / SIGTERM."""

from __future__ import annotations

import math
import signal
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console

from extmem.cpu_load import cpu_seconds
from extmem.distributed.context import DistContext
from extmem.distributed.parallel import NullWriter
from extmem.distributed.tables import ShardedValueTable
from extmem.model import Transformer
from extmem.run.config import RunConfig
from extmem.run.run_dir import MetricsLog
from extmem.run.session import RunData
from extmem.train.writers import MetricWriters


class TrainingInterrupted(Exception):
    """Raised after SIGINT / SIGTERM once the finished step has been checkpointed (or, for an
    interrupt that had to act inside a step, with the newest checkpoint left as it was)."""

    def __init__(self, run_dir: Path, step: int, signum: int, saved: bool,
                 resumable: bool = True) -> None:
        name = signal.Signals(signum).name
        what = (f"checkpoint step-{step} saved" if saved else
                "interrupted inside a step: nothing saved after the newest checkpoint")
        then = (f"Continue with: extmem train --resume --out {run_dir}" if resumable else
                "There was no checkpoint yet, so nothing was kept: train again with the same --out")
        super().__init__(f"{name} at step {step}; {what}. {then}")
        self.run_dir, self.step, self.signum, self.saved = run_dir, step, signum, saved

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class TrainOptions:
    # True: continue from the newest complete checkpoint (none is an error); "auto": continue
    # if there is one, else start at step 0 (what `extmem compare` does with a killed run).
    resume: bool | Literal["auto"] = False
    quiet: bool = False   # no progress bar or tables (e.g. tests)
    # The process group; the CLI builds it (it needs it to pick the run directory on rank 0).
    # None: `train` joins torchrun's group itself, or runs as one process.
    ctx: DistContext | None = None
    # skip the check that the memory tables fit in memory (`extmem.model.resources`)
    force: bool = False


@dataclass(frozen=True)
class StepBatches:
    """This rank's micro-batches of one step, each (model inputs (B/W, T), labels (B/W, T)),
    and how many tokens the whole step predicts over every rank and micro-batch."""

    micro: list[tuple[torch.Tensor, torch.Tensor]]
    predicted: int


@dataclass
class Trainer:
    """Everything one training session holds between its steps."""

    cfg: RunConfig
    run_dir: Path
    ctx: DistContext
    device: torch.device
    data: RunData
    model: Transformer
    forward_model: torch.nn.Module          # model, or its compiled / DDP wrapper
    optimizer: torch.optim.Optimizer
    sharded: dict[str, ShardedValueTable]   # parameter name -> this rank's table shard
    accounting: dict
    start: int                              # the step this session starts from
    console: Console
    writer: MetricWriters | NullWriter      # TensorBoard + tracker (rank 0), or NullWriter
    log: MetricsLog | None                  # rank 0 only
    autocast: AbstractContextManager
    rows: slice                             # this rank's rows of each global batch
    # what every checkpoint's state.json records besides the step (tokenizer_sha256, ...)
    extra: dict = field(default_factory=dict)
    # RUN's entries before this session (None: this process created RUN); rank 0 only
    existing: frozenset[str] | None = None
    step: int = 0                           # steps finished so far (the run's, not the session's)
    in_step: bool = False                   # between the forward and the optimizer update
    skipped: int = 0                        # non-finite steps skipped this session
    # (data step, its micro-batches) drawn a step early to warm mapped tables (loop.py)
    batches_ahead: tuple[int, StepBatches] | None = None
    warm_ahead: bool | None = None          # any memory warms a mapped table (None: not asked yet)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.rows_per_step * self.cfg.data.seq_len  # every micro-batch


@dataclass
class StepResult:
    loss: float
    aux: float                    # router balance / z-loss (0 when the model has none)
    grad_norm: float | None       # before clipping; None when clipping is off

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and (self.grad_norm is None or math.isfinite(self.grad_norm))


@dataclass
class Window:
    """Train metrics accumulated since the last log line."""

    loss: float = 0.0
    aux: float = 0.0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    cpu_start: list[float] | None = field(default_factory=cpu_seconds)  # extmem.cpu_load

    def add(self, result: StepResult) -> None:
        if not result.finite:  # a skipped step: no update, nothing to average
            return
        self.loss += result.loss
        self.aux += result.aux
        self.steps += 1
