"""The kernel back-end switch (extmem.memory.kernels; docs/performance.md): EXTMEM_KERNELS and
`use_kernels` pick numba or the portable torch path of every fused CPU kernel, by one rule."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from extmem.errors import ConfigError
from extmem.memory import kernels
from extmem.memory.kernels import backend
from extmem.memory.pair_topk import best_pairs
from extmem.memory.read_weight_grad import read_weight_grad
from extmem.memory.topk import topk
from extmem.train import fused_rows

needs_numba = pytest.mark.skipif(not kernels.numba_installed(),
                                 reason="numba is not installed (the `fast` extra)")


@pytest.fixture(autouse=True)
def _no_env_setting(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)


def test_torch_setting_takes_the_portable_path_everywhere(monkeypatch) -> None:
    x = torch.randn(300, 40)
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.current_choice() == "torch"
    assert kernels.active_backend(x) == "torch"
    assert not fused_rows.available(torch.nn.Parameter(x))
    values, idx = topk(x, 5)  # the portable path: exactly torch.topk
    ref_values, ref_idx = x.topk(5, dim=-1)
    assert torch.equal(values, ref_values) and torch.equal(idx, ref_idx)


@needs_numba
def test_numba_setting_ignores_thread_counts_but_not_dtype_or_device(monkeypatch) -> None:
    monkeypatch.setenv(kernels.ENV_VAR, "numba")
    assert kernels.current_choice() == "numba"
    assert kernels.active_backend(torch.randn(4, 3)) == "numba"
    assert kernels.fused_available(torch.randn(4, 3), torch.randn(2))
    assert kernels.active_backend(torch.randn(4, 3, dtype=torch.float64)) == "torch"
    assert kernels.active_backend(torch.randn(4, 3, dtype=torch.bfloat16)) == "torch"
    assert kernels.active_backend(torch.empty(4, 3, device="meta")) == "torch"
    assert kernels.active_backend(torch.randn(4, 3), torch.randn(2).double()) == "torch"
    assert fused_rows.available(torch.nn.Parameter(torch.randn(8, 4)))
    assert not fused_rows.available(torch.nn.Parameter(torch.randn(4, 8).t()))  # not contiguous


def test_auto_is_numba_only_when_torch_owns_every_core(monkeypatch) -> None:
    x = torch.randn(4, 3)
    expected = "numba" if kernels.numba_installed() and backend.owns_all_cores() else "torch"
    assert kernels.current_choice() == "auto"  # unset
    assert kernels.active_backend(x) == expected
    for value in ("auto", " AUTO ", ""):  # case, spaces and empty are auto too
        monkeypatch.setenv(kernels.ENV_VAR, value)
        assert kernels.current_choice() == "auto"
        assert kernels.active_backend(x) == expected
    assert kernels.active_backend(x.double()) == "torch"


def test_the_environment_is_read_at_each_decision(monkeypatch) -> None:
    x = torch.randn(4, 3)
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.active_backend(x) == "torch"
    if kernels.numba_installed():
        monkeypatch.setenv(kernels.ENV_VAR, "numba")
        assert kernels.active_backend(x) == "numba"


def test_an_invalid_setting_names_the_value_and_the_allowed_ones(monkeypatch) -> None:
    monkeypatch.setenv(kernels.ENV_VAR, "gpu")
    with pytest.raises(ConfigError, match=r"EXTMEM_KERNELS: 'gpu' .*allowed: auto, numba, torch"):
        kernels.active_backend(torch.randn(4, 3))
    with pytest.raises(ConfigError, match="'gpu'"):  # every dispatch asks the rule, whatever its size
        topk(torch.randn(2, 5), 2)
    with pytest.raises(ConfigError, match=r"use_kernels: 'fast' .*allowed: auto, numba, torch"):
        with kernels.use_kernels("fast"):
            pass


def test_the_context_manager_overrides_the_environment_and_restores_it(monkeypatch) -> None:
    x = torch.randn(4, 3)
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    with kernels.use_kernels("auto"):
        assert kernels.current_choice() == "auto"
        with kernels.use_kernels("torch"):
            assert kernels.active_backend(x) == "torch"
        assert kernels.current_choice() == "auto"
    assert kernels.current_choice() == "torch"
    with pytest.raises(RuntimeError, match="boom"), kernels.use_kernels("auto"):
        raise RuntimeError("boom")
    assert kernels.current_choice() == "torch"  # restored on an exception too
    monkeypatch.setenv(kernels.ENV_VAR, "gpu")
    with kernels.use_kernels("torch"):  # the block decides: the environment is not read
        assert kernels.active_backend(x) == "torch"


def test_a_block_in_one_thread_leaves_other_threads_alone(monkeypatch) -> None:
    monkeypatch.setenv(kernels.ENV_VAR, "auto")
    inside, seen = threading.Event(), []

    def other() -> None:
        inside.wait(5)
        seen.append(kernels.current_choice())

    thread = threading.Thread(target=other)
    thread.start()
    with kernels.use_kernels("torch"):
        inside.set()
        thread.join(5)
    assert seen == ["auto"]


@needs_numba
def test_each_dispatch_follows_the_switch() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=g)
    table = torch.randn(50, 8, generator=g)
    bags = torch.randint(0, 50, (9, 4), generator=g)
    grad_out = torch.randn(9, 8, generator=g)
    k = 8
    top1 = torch.randn(300, k, generator=g).sort(-1, descending=True).values
    top2 = torch.randn(300, k, generator=g).sort(-1, descending=True).values
    grid = torch.arange(1, k + 1)
    first, second = (grid[:, None] * grid[None, :] <= k).nonzero().unbind(1)
    results = {}
    for choice in ("numba", "torch"):
        with kernels.use_kernels(choice):
            results[choice] = (topk(x, k), read_weight_grad(table, bags, grad_out),
                               best_pairs(top1, top2, first.contiguous(), second.contiguous(), k))
    (fv, fi), f_rw, (f1, f2) = results["numba"]
    (pv, pi), p_rw, (p1, p2) = results["torch"]
    assert torch.equal(fv, pv) and torch.equal(fi, pi)
    torch.testing.assert_close(f_rw, p_rw)
    assert torch.equal(f1, p1) and torch.equal(f2, p2)


def test_tracing_under_torch_compile_takes_the_torch_path() -> None:
    seen = []

    def fn(x):
        seen.append(kernels.active_backend(x))
        return x + 1

    with kernels.use_kernels("torch" if not kernels.numba_installed() else "numba"):
        torch.compile(fn, backend="eager", fullgraph=True)(torch.randn(3))
    assert seen == ["torch"]


def test_numba_forced_without_numba_is_a_config_error() -> None:
    # a fresh interpreter in which `import numba` fails (the `fast` extra not installed)
    script = """
import os, sys
sys.modules["numba"] = None
import torch
from extmem.errors import ConfigError
from extmem.memory import kernels
from extmem.memory.topk import topk

def refused(run):
    try:
        run()
    except ConfigError as err:
        return "numba is not installed" in str(err)
    return False

assert not kernels.numba_installed()
assert kernels.active_backend(torch.randn(3)) == "torch"  # auto: the torch path
assert refused(lambda: kernels.use_kernels("numba").__enter__())
os.environ["EXTMEM_KERNELS"] = "numba"
assert refused(lambda: kernels.active_backend(torch.randn(3)))
assert refused(lambda: topk(torch.randn(300, 9), 2))
print("ok")
"""
    env = {**os.environ, kernels.ENV_VAR: "auto"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
