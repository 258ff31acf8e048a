"""How busy other processes keep this machine's CPUs: /proc/stat's busy time less this
process's own CPU time, over a stretch of wall time. A tokens/s or step time taken while
other processes ran is not a timing (docs/performance.md); training logs this figure with
every tokens/s, `extmem compare` flags the variants it concerns, and every benchmark's
Environment line states it."""

from __future__ import annotations

import os
import time

# other processes' average CPU use above which a speed is reported as taken on a shared CPU
SHARED_CPU_THRESHOLD = 0.25


def cpu_seconds() -> list[float] | None:
    """[CPU seconds the whole machine has been busy, CPU seconds of this process and its
    waited-for children, a monotonic wall clock]; None without Linux's /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    own = os.times()
    return [busy / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system, time.monotonic()]


def other_cpus_busy(start: list[float] | None, end: list[float] | None) -> float | None:
    """CPUs that other processes kept busy on average between two `cpu_seconds` readings
    (their CPU seconds over the wall seconds; ~0 on a quiet machine); None if unknown."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    other = (end[0] - start[0]) - (end[1] - start[1])
    return round(max(other, 0.0) / (end[2] - start[2]), 2)
