"""The runtime under test as real processes: this checkout's, or a previous version's from a git worktree."""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.observe import http_ok, rss_mib
from tests.support.procs import ManagedProcess, free_port

READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class RuntimeVersion:
    name: str
    source: Path

    @property
    def label(self) -> str:
        return "".join(char if char.isalnum() else "-" for char in self.name)

    @property
    def index_prefix(self) -> str:
        """Where the names of this version's publisher indices start (it writes one index a month)."""
        return f"bench-{self.label}-"


@dataclass(frozen=True)
class Running:
    url: str
    process: ManagedProcess

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/status", timeout=5) as response:
            return dict(json.loads(response.read()))

    def rss_mib(self) -> float:
        assert self.process.pid is not None
        return rss_mib(self.process.pid)


@contextlib.contextmanager
def _sluice(version: RuntimeVersion, role: str, flags: list[str], work: Path) -> Iterator[Running]:
    port = free_port()
    argv = [sys.executable, "-m", "sluice_runtime", role, "--listen", f"127.0.0.1:{port}", *flags]
    # PYTHONPATH comes before the editable install on sys.path, so the chosen version is the one run.
    environment = {"PYTHONPATH": str(version.source)}
    process = ManagedProcess(f"{role}-{version.label}", argv, work / f"{role}.log", env=environment)
    url = f"http://127.0.0.1:{port}"
    process.start()
    try:
        process.wait_ready(lambda: http_ok(f"{url}/readyz"), READY_TIMEOUT)
        yield Running(url, process)
    finally:
        process.stop()


def running_publisher(
    version: RuntimeVersion, engine_url: str, work: Path
) -> contextlib.AbstractContextManager[Running]:
    index = version.index_prefix + "%{+yyyy.MM}"
    return _sluice(version, "publisher", ["--es-url", engine_url, "--index", index], work)


def running_receiver(
    version: RuntimeVersion, forward_url: str, work: Path, max_queue: int
) -> contextlib.AbstractContextManager[Running]:
    """A receiver whose queue lives in ``work``, so a second one started there finds the first one's backlog."""
    flags = ["--data-dir", str(work / "queue"), "--forward-url", forward_url, "--max-queue", str(max_queue)]
    return _sluice(version, "receiver", flags, work)


def running_one_hop(
    version: RuntimeVersion, engine_url: str, work: Path, max_queue: int
) -> contextlib.AbstractContextManager[Running]:
    """``sluice run --es-url``: receiver and publisher in one process, indexing into the engine."""
    index = version.index_prefix + "%{+yyyy.MM}"
    flags = ["--data-dir", str(work / "queue"), "--es-url", engine_url, "--index", index, "--max-queue", str(max_queue)]
    return _sluice(version, "run", flags, work)
