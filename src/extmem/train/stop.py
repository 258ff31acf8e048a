"""Stopping a run cleanly on SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends
before it kills a job): the signal only sets a flag; the loop finishes the step it is in,
writes a checkpoint and exits with the conventional status (128 + signal number).

A second signal of the same kind acts at once (the previous handler is back after the
first). Under torchrun the ranks agree on the flag after every step (one tiny all-reduce),
so all of them checkpoint the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

from extmem.distributed.context import DistContext

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while active, SIGINT / SIGTERM request a stop instead of killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # the next one acts

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers: main thread only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, ctx: DistContext) -> int | None:
        """The signal that asked to stop (on any rank), or None."""
        if not ctx.enabled:
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag) or None
