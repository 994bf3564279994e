"""How many CPU threads torch gets: as many as there are idle cores, not as many as there are cores.

torch's default is one thread per core. Its OpenMP threads meet at a barrier after every operator,
so on a machine where another process holds a core (a notebook, a viewer, another job) every
operator waits for the thread that was descheduled: measured on a 2-core machine with one busy
core, training ran 2-10x slower with two threads than with one (see docs/benchmarks.md,
`cellgap bench threads`). So the command line counts the idle cores once at startup, from two
readings of /proc/stat 0.2 s apart, and gives torch that many threads (at least one), through
`OMP_NUM_THREADS` before torch is imported. An explicit `OMP_NUM_THREADS` or `--threads` wins.
Where /proc/stat does not exist the count of usable cores is taken and the log says so.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.2


@dataclass(frozen=True)
class ThreadPlan:
    """The thread count chosen and why, for the run's log."""

    threads: int
    reason: str


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_times(stat: Path) -> tuple[float, float] | None:
    """(busy, total) jiffies over all cores from the first line of /proc/stat."""
    try:
        fields = [float(value) for value in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(stat: Path = PROC_STAT, sample_s: float = SAMPLE_S) -> float | None:
    """How many of the machine's cores other work keeps busy right now, or None where it cannot be read."""
    first = _cpu_times(stat)
    time.sleep(sample_s)
    second = _cpu_times(stat)
    if first is None or second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def plan_threads(requested: int | None = None, environ: dict[str, str] | None = None,
                 busy: float | None = None, cores: int | None = None) -> ThreadPlan:
    """The thread count for this process: `requested`, else OMP_NUM_THREADS, else the idle cores."""
    environ = dict(os.environ) if environ is None else environ
    if requested is not None:
        return ThreadPlan(requested, "as asked")
    if environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return ThreadPlan(int(environ["OMP_NUM_THREADS"]), "from OMP_NUM_THREADS")
    cores = cores or usable_cores()
    if busy is None:
        return ThreadPlan(cores, f"{cores} cores (their load cannot be read here)")
    idle = max(1, min(cores, math.floor(cores - busy + 0.5)))
    return ThreadPlan(idle, f"{cores} cores, {busy:.1f} busy with other work")


def apply_before_torch(plan: ThreadPlan, environ: dict[str, str] | None = None) -> None:
    """Make `plan.threads` torch's and OpenMP's default; effective only before torch is first imported."""
    target = os.environ if environ is None else environ
    target["OMP_NUM_THREADS"] = str(plan.threads)
