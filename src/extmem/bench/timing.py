"""Small helpers shared by the benchmarks: wall-clock timing, summaries, environment, RSS.

Timings are wall-clock (`time.perf_counter`) on the CPU. Benchmarks interleave the models they
compare (`timed_rounds`) so that machine noise (other processes, frequency scaling) hits every
model alike, and report the median (typical) and the minimum (least disturbed) over
repetitions.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import torch

from extmem.cpu_load import cpu_seconds, other_cpus_busy


def time_ms(fn: Callable[[], object]) -> float:
    """Run `fn` once and return its wall-clock duration in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def summarize(samples_ms: list[float]) -> dict[str, object]:
    """median / min / max / all of a list of millisecond samples (at least one)."""
    if not samples_ms:
        raise ValueError("summarize: no samples")
    return {"median": statistics.median(samples_ms), "min": min(samples_ms),
            "max": max(samples_ms), "samples": list(samples_ms)}


def log_progress(progress: bool, message: str) -> None:
    """One progress line on stderr (stdout stays clean for --json)."""
    if progress:
        print(message, file=sys.stderr, flush=True)


Ops = dict[str, Callable[[], object]]  # operation name ("infer_ms", "step_ms") -> one call of it


def warm_up(subjects: dict[str, Ops], rounds: int) -> None:
    """Call every operation of every subject `rounds` times, untimed."""
    for _ in range(rounds):
        for ops in subjects.values():
            for op in ops.values():
                op()


def timed_rounds(subjects: dict[str, Ops], repeats: int) -> dict[str, dict]:
    """Side-by-side timings of several subjects' operations, in one run.

    Each of `repeats` rounds runs every subject's first operation, then every subject's next
    one, ..., in a subject order reversed every other round, so that drift in the machine's
    speed reaches all subjects alike. Each timed call follows one untimed call of the same
    operation: a 1M-slot dense-Adam step leaves caches, TLB and heap in a state that made the
    next subject's call up to 2x slower here. Returns subject -> operation -> `summarize`."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {op: [] for op in ops} for name, ops in subjects.items()}
    names = list(subjects)
    operations = list(dict.fromkeys(op for ops in subjects.values() for op in ops))
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for op in operations:
            for name in order:
                if op in subjects[name]:
                    subjects[name][op]()  # settle: not timed in the state the last subject left
                    samples[name][op].append(time_ms(subjects[name][op]))
    return {name: {op: summarize(values) for op, values in ops.items()}
            for name, ops in samples.items()}


def proc_status_bytes(*names: str) -> dict[str, int]:
    """Fields of /proc/self/status (e.g. "VmRSS", "VmHWM", "RssFile"), in bytes; the fields
    found only, so {} where there is no /proc (not Linux)."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in names:
                    fields[name] = int(value.split()[0]) * 1024  # reported in kB
    except OSError:
        pass
    return fields


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # macOS: bytes


def load_average() -> list[float] | None:
    """The 1 / 5 / 15 minute load average; None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, object]:
    """Versions and machine facts that a timing depends on (JSON-serialisable); a run ends
    it with `finish_environment`."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),  # 1/5/15 min load at the start: other work on the machine
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_seconds_start": cpu_seconds(),
    }


def finish_environment(env: dict) -> None:
    """At the end of a run: the load average then, and `other_cpus_busy`, the CPUs that other
    processes kept busy on average while it ran (their CPU seconds over the wall seconds:
    ~0 on a quiet machine, unlike the load average, which trails by minutes)."""
    env["load_average_end"] = load_average()
    others = other_cpus_busy(env.pop("cpu_seconds_start", None), cpu_seconds())
    if others is not None:
        env["other_cpus_busy"] = others


def load_text(env: dict) -> str:
    """How busy the machine was, for a report's Environment line."""
    text = (f"load average (1/5/15 min) {env['load_average']} at start, "
            f"{env.get('load_average_end')} at end")
    if env.get("other_cpus_busy") is not None:
        text += (f", other processes kept {env['other_cpus_busy']} of {env['cpu_count']} CPUs "
                 "busy during the run")
    return text


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with `threads` intra-op threads (0: leave torch's setting), then restore it."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
