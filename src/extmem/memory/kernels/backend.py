"""Which implementation runs each fused CPU kernel: the one switch and the one eligibility rule.

Every numba kernel of extmem (the files of this package) has a portable torch path beside the
operation it accelerates (`extmem.memory.topk`, `pair_topk`, `read_weight_grad`, `score_topk`,
`stats`, `extmem.train.fused_rows`); each dispatch asks `fused_available(*tensors)` here which
one to run. The choice is `EXTMEM_KERNELS` (read at every decision, not only at import),
overridden within a block by `use_kernels(...)`:

- `auto` (default): numba when it is installed (the `fast` extra), the tensors are float32 on
  the CPU and torch owns every core (`owns_all_cores`); otherwise the torch path.
- `numba`: numba wherever the tensors are float32 on the CPU, whatever the thread counts; a
  `ConfigError` when numba is not installed.
- `torch`: always the portable path.

While `torch.compile` traces (`torch.compiler.is_compiling()`), the torch path is taken: the
kernels run on numpy views, which cannot be traced. docs/performance.md lists the kernels.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

import torch

from extmem.errors import ConfigError

try:  # optional: the `fast` extra
    import numba
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

ENV_VAR = "EXTMEM_KERNELS"
CHOICES = ("auto", "numba", "torch")

# the innermost `use_kernels` block of this thread / task (None: the environment decides)
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("extmem_kernels",
                                                                       default=None)


def numba_installed() -> bool:
    return numba is not None


def _checked(choice: str, source: str) -> str:
    value = choice.strip().lower()
    if value not in CHOICES:
        raise ConfigError(f"{source}: {choice!r} is not a kernel back-end; "
                          f"allowed: {', '.join(CHOICES)}")
    if value == "numba" and numba is None:
        raise ConfigError(f"{source} = 'numba' but numba is not installed: "
                          "pip install -e '.[fast]', or use 'auto' or 'torch'")
    return value


def current_choice() -> str:
    """The setting in force here: the innermost `use_kernels` block, else `EXTMEM_KERNELS`
    (unset or empty: 'auto'). Raises ConfigError for an unknown value, or for 'numba' when
    numba is not installed."""
    override = _override.get()
    if override is not None:
        return override
    return _checked(os.environ.get(ENV_VAR, "").strip() or "auto", ENV_VAR)


@contextlib.contextmanager
def use_kernels(choice: str) -> Iterator[None]:
    """Within the block, kernels are chosen by `choice` ('auto', 'numba' or 'torch') instead of
    EXTMEM_KERNELS. Blocks nest; the previous setting is restored on exit (exceptions too).
    The setting is per thread (a context variable): other threads keep their own."""
    token = _override.set(_checked(choice, "use_kernels"))
    try:
        yield
    finally:
        _override.reset(token)


def owns_all_cores() -> bool:
    """numba's thread pool spans every core; when torch was given fewer (OMP_NUM_THREADS=1
    under torchrun or in parallel sweeps) its spinning workers starve the other processes
    (measured: a 2-process step 5x slower), so 'auto' uses the kernels only then."""
    return numba is not None and torch.get_num_threads() >= numba.config.NUMBA_NUM_THREADS


def fused_available(*tensors: torch.Tensor) -> bool:
    """The rule of every numba kernel in extmem: True when the kernel, not the torch path, is
    to run on `tensors` under the current setting (see the module docstring)."""
    if torch.compiler.is_compiling():
        return False
    choice = current_choice()
    if choice == "torch":
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return choice == "numba" or owns_all_cores()


def active_backend(*tensors: torch.Tensor) -> str:
    """'numba' or 'torch': which implementation a kernel dispatch on `tensors` takes now
    (before each operation's own size and layout conditions)."""
    return "numba" if fused_available(*tensors) else "torch"


def jit_once(build: Callable) -> Callable:
    """A getter that builds a numba kernel with `build(numba)` on first use and returns the
    same kernel afterwards (numba is optional, so kernels are compiled lazily)."""
    kernel = None

    def get():
        nonlocal kernel
        if kernel is None:
            kernel = build(numba)
        return kernel
    return get
