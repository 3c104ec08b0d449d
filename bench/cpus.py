"""CPU time per process, and CPU affinity for running the engine apart from the pipeline.

On one small machine the pipeline and the search engine share the cores, so every microsecond the
receiver and the publisher spend is taken from the engine. In a cluster the engine has nodes of its
own. Pinning the engine to half of the cores and everything else to the other half, for the ceiling
and the end-to-end run alike, measures what the pipeline delivers of an engine it does not starve.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses: the fields proper start after the last ")".
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (the engine's launcher starts the JVM as a child)."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU time spent so far by these processes, all their threads included."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_SECOND


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Every thread of these processes to ``cpus``; threads and children made later inherit it."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in (PROC / str(pid) / "task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cpus)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """The lower half of this process's CPUs for the pipeline, the upper half for the engine; None below two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


@contextlib.contextmanager
def engine_apart(engine_root: int, pipeline: list[int], split: tuple[set[int], set[int]]) -> Iterator[None]:
    """The engine's processes on the upper CPUs; this process, ``pipeline`` and what they start on the lower."""
    everything = os.sched_getaffinity(0)
    pipeline_cpus, engine_cpus = split
    pin(process_tree(engine_root), engine_cpus)
    pin([os.getpid(), *pipeline], pipeline_cpus)
    try:
        yield
    finally:
        pin([*process_tree(engine_root), *process_tree(os.getpid()), *pipeline], everything)


class CpuMeter:
    """CPU time spent by named groups of processes from now on."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = {name: pids for name, pids in groups.items() if pids}
        self._started = {name: cpu_seconds(pids) for name, pids in self._groups.items()}

    def micros_per_document(self, documents: int) -> dict[str, float]:
        return {
            name: (cpu_seconds(pids) - self._started[name]) / documents * 1e6 for name, pids in self._groups.items()
        }
