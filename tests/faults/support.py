"""Pieces the fault tests share: a receiver → publisher → Elasticsearch pipeline of real processes, the figures
each fault row reports, and a receiver volume that can run full and be given space again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.receiver.support import LoadResult, Service, publisher_process, receiver_process
from tests.support.engines import SearchEngine, indexed_ids
from tests.support.procs import wait_until


@dataclass
class Pipeline:
    """`sluice receiver` forwarding to `sluice publisher`, which writes to indices ``{name}-*``."""

    receiver: Service
    publisher: Service
    engine: SearchEngine
    name: str

    def indexed(self) -> list[str]:
        return indexed_ids(self.engine, f"{self.name}-*")

    def drained(self) -> bool:
        status = self.receiver.status()
        return bool(status["backlog"] == 0 and status["inFlightBatches"] == 0)


@contextlib.contextmanager
def es_pipeline(
    tmp_path: Path,
    engine: SearchEngine,
    *receiver_args: str,
    data_dir: Path | None = None,
    wrapper: tuple[str, ...] = (),
) -> Iterator[Pipeline]:
    """Both processes started (and stopped, always, at the end); the receiver sends 100 ms partial batches."""
    name = f"fault{uuid.uuid4().hex[:10]}"
    publisher = publisher_process(
        tmp_path / "out", tmp_path / "publisher.log", "--es-url", engine.url, "--index", f"{name}-%{{+yyyy.MM}}"
    )
    receiver = receiver_process(
        data_dir or tmp_path / "q",
        tmp_path / "receiver.log",
        publisher.base,
        "--batch-max-wait", "100ms",
        *receiver_args,
        wrapper=wrapper,
    )  # fmt: skip
    try:
        publisher.start(timeout=60)
        receiver.start()
        yield Pipeline(receiver, publisher, engine, name)
    finally:
        receiver.process.stop(10)
        publisher.process.stop(10)


async def polled(check: Callable[[], bool], within: float, what: str) -> None:
    """``wait_until`` off the event loop, so the load generator sharing the loop keeps running meanwhile."""
    await asyncio.to_thread(wait_until, check, within, what)


@dataclass(frozen=True)
class Figures:
    """What a fault row reports: requests sent, messages acknowledged, documents indexed (every copy), and
    how they compare. ``unacknowledged_indexed`` are messages stored just before a kill cut their answer."""

    sent: int
    acknowledged: int
    indexed: int
    missing: int
    duplicates: int
    unacknowledged_indexed: int

    @classmethod
    def of(cls, load: LoadResult, indexed: list[str]) -> Figures:
        unique = set(indexed)
        return cls(
            sent=load.sent,
            acknowledged=len(load.acked),
            indexed=len(indexed),
            missing=len(set(load.acked) - unique),
            duplicates=len(indexed) - len(unique),
            unacknowledged_indexed=len(unique - set(load.acked)),
        )

    def assert_each_acknowledged_message_indexed_once(self, unacknowledged_allowed: int = 0) -> None:
        assert self.missing == 0, f"{self.missing} acknowledged messages missing from Elasticsearch"
        assert self.duplicates == 0, f"{self.duplicates} documents indexed twice"
        # A message stored without its 200 can only be one whose answer a kill cut off; with no kill, nothing
        # that was refused may have been kept.
        assert self.unacknowledged_indexed <= unacknowledged_allowed

    def report(self, row: str, record_property: Callable[[str, object], None], **extra: object) -> None:
        figures = {**vars(self), **extra}
        for key, value in figures.items():
            record_property(key, value)
        print(f"{row}: " + ", ".join(f"{key}={value}" for key, value in figures.items()))


class SmallVolume:
    """A receiver volume that runs full and gets space back.

    Where this process may mount (root), it is a real 16 MiB tmpfs: ``fill`` leaves a sliver of it free
    with a ballast file, so LevelDB's writes fail with ENOSPC as on a full PVC, and ``free`` deletes the
    ballast. Elsewhere the receiver runs under ``prlimit --fsize`` (EFBIG on the file that grows past the
    limit), and ``free`` lifts the limit of the running process.
    """

    SIZE = 16 * 1024 * 1024

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "q"
        self.ballast = root / "ballast"
        self.mounted = False
        self.limit = 2 * 1024 * 1024  # the fallback's file-size limit
        self.pid: int | None = None

    @property
    def kind(self) -> str:
        return "tmpfs" if self.mounted else "prlimit --fsize"

    @property
    def wrapper(self) -> tuple[str, ...]:
        return () if self.mounted else ("prlimit", f"--fsize={self.limit}:unlimited")

    def __enter__(self) -> SmallVolume:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.SIZE}", "sluice-fault", str(self.root)],
                capture_output=True,
                check=False,
            )
            self.mounted = mounted.returncode == 0
        if not self.mounted and shutil.which("prlimit") is None:
            pytest.skip("no tmpfs mount allowed here and no prlimit for a file-size limit")
        return self

    def __exit__(self, *_: object) -> None:
        if self.mounted:
            # Lazily: a process that has not quite gone yet must not leave the mount behind.
            subprocess.run(["umount", "--lazy", str(self.root)], check=False)

    def fill(self, leave: int) -> None:
        """Leave ``leave`` bytes free on the tmpfs (no-op under prlimit, whose limit is set at start)."""
        if not self.mounted:
            return
        stats = os.statvfs(self.root)
        free = stats.f_bavail * stats.f_frsize
        with self.ballast.open("wb") as ballast:
            ballast.truncate(0)
            # Real blocks, not a sparse file: tmpfs only counts pages that are written.
            chunk = b"\0" * (1024 * 1024)
            remaining = max(0, free - leave)
            while remaining > 0:
                remaining -= ballast.write(chunk[: min(len(chunk), remaining)])

    def free(self, pid: int | None) -> None:
        if self.mounted:
            self.ballast.unlink(missing_ok=True)
        elif pid is not None:
            subprocess.run(["prlimit", "--pid", str(pid), "--fsize=unlimited:unlimited"], check=True)
