"""Helpers for the receiver tests: real receivers and publishers (in-process or as processes), a load generator,
and real faults for the search engine behind a publisher."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import plyvel
import pytest
from aiohttp.test_utils import TestClient

from sluice_runtime.publisher.settings import PublisherSettings
from sluice_runtime.receiver.settings import ReceiverSettings
from sluice_runtime.receiver.stored import GROUP_TAG, MESSAGE_PREFIX, MESSAGES_END
from tests.support.engines import SearchEngine
from tests.support.observe import http_ok
from tests.support.procs import ManagedProcess, free_port

# The `sluice` command as its console script runs it.
RECEIVER_ARGV = [sys.executable, "-m", "sluice_runtime", "receiver"]
PUBLISHER_ARGV = [sys.executable, "-m", "sluice_runtime", "publisher"]
RUN_ARGV = [sys.executable, "-m", "sluice_runtime", "run"]


def http_get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return orjson.loads(response.read())


@dataclass
class Service:
    process: ManagedProcess
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Service:
        self.process.start()
        self.process.wait_ready(lambda: http_ok(self.base + "/readyz"), timeout)
        return self

    def status(self) -> Any:
        return http_get_json(self.base + "/status")


def receiver_process(
    data_dir: Path, log: Path, forward_url: str | None, *extra: str, port: int = 0, wrapper: tuple[str, ...] = ()
) -> Service:
    port = port or free_port()
    argv = [*wrapper, *RECEIVER_ARGV, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra]
    if forward_url:
        argv += ["--forward-url", forward_url]
    return Service(ManagedProcess("receiver", argv, log, env={"SLUICE_CONFIG": ""}), port)


def publisher_process(out_dir: Path, log: Path, *extra: str, port: int = 0) -> Service:
    port = port or free_port()
    argv = [*PUBLISHER_ARGV, "--listen", f"127.0.0.1:{port}", *extra]
    if "--es-url" not in extra:
        argv += ["--out-dir", str(out_dir)]
    return Service(ManagedProcess("publisher", argv, log, env={"SLUICE_CONFIG": ""}), port)


def run_process(data_dir: Path, log: Path, *extra: str, port: int = 0) -> Service:
    """``sluice run``: receiver and publisher in one process; only the receiver listens."""
    port = port or free_port()
    argv = [*RUN_ARGV, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra]
    return Service(ManagedProcess("run", argv, log, env={"SLUICE_CONFIG": ""}), port)


def delivered(out_dir: Path) -> list[dict[str, Any]]:
    """Every line of a file publisher's output, repeats included, in the order the documents arrived."""
    # Rotated files are named by UTC time, so they sort oldest first; the current file is the newest.
    rotated = sorted(out_dir.glob("documents-*.ndjson"))
    lines: list[dict[str, Any]] = []
    for path in [*rotated, out_dir / "documents.ndjson"]:
        if path.exists():
            lines += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return lines


def delivered_ids(out_dir: Path) -> list[str]:
    """Every ``_id`` (the message uuid) in a file publisher's output, repeats included, in arrival order."""
    return [line["_id"] for line in delivered(out_dir)]


def delivered_sources(out_dir: Path) -> dict[str, list[bytes]]:
    """``_id`` → the ``rxtxMsg`` of every copy written, encoded again, to check that resends are identical."""
    copies: dict[str, list[bytes]] = {}
    for line in delivered(out_dir):
        copies.setdefault(line["_id"], []).append(orjson.dumps(line["_source"]["rxtxMsg"]))
    return copies


def delivered_payloads(out_dir: Path) -> list[Any]:
    return [line["_source"]["rxtxMsg"]["payload"] for line in delivered(out_dir)]


def stored_members(value: bytes) -> list[bytes]:
    """The envelopes one stored value holds, read as the queue's format is documented (receiver/stored.py):
    a single envelope, or a group tag followed by envelopes one per line."""
    return value[1:].split(b"\n") if value.startswith(GROUP_TAG) else [value]


def stored_envelopes(data_dir: Path) -> list[bytes]:
    """The envelopes in a receiver's queue, as stored, oldest first; the database must not be open elsewhere."""
    db = plyvel.DB(str(data_dir))
    try:
        return [
            envelope
            for _, value in db.iterator(start=MESSAGE_PREFIX, stop=MESSAGES_END)
            for envelope in stored_members(value)
        ]
    finally:
        db.close()


def settings(data_dir: Path, **overrides: Any) -> ReceiverSettings:
    return ReceiverSettings.model_validate({"listen": "127.0.0.1:0", "dataDir": str(data_dir), **overrides})


def publisher_settings(out_dir: Path, **overrides: Any) -> PublisherSettings:
    """A publisher writing NDJSON files to ``out_dir`` (unless ``elasticsearch.url`` is among the overrides)."""
    return PublisherSettings.model_validate({"output": {"dir": str(out_dir)}, **overrides})


async def status_of(client: TestClient) -> dict[str, Any]:
    response = await client.get("/status")
    assert response.status == 200
    answer: dict[str, Any] = await response.json()
    return answer


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0, what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail naming ``what`` if it is not within a (generous) deadline."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what} not reached within {within}s"
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def frozen(engine: SearchEngine) -> Iterator[None]:
    """The engine's processes stopped (SIGSTOP), as in a long GC pause or a hung node: connections are still
    accepted by the kernel, but nothing is answered until the block ends (SIGCONT, always)."""
    if engine.process is None or engine.process.pid is None:
        pytest.skip(f"{engine.name} at {engine.url} is external; it cannot be paused by the tests")
    group = engine.process.pid  # the engine runs in a session (and process group) of its own
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


@dataclass
class LoadResult:
    acked: dict[str, str] = field(default_factory=dict)  # uuid -> seq
    sent: int = 0  # requests started, whatever became of them
    errors: int = 0  # no answer (connection refused or cut, timeout): the message may or may not be stored
    refused: int = 0
    refusals: Counter[int] = field(default_factory=Counter)  # status -> count, for every non-200 answer
    refusals_without_retry_after: int = 0  # 503/507 answers that did not say when to come back
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def ack(self, message_uuid: str, seq: str) -> None:
        self.acked[message_uuid] = seq
        self.progress.set()

    def refuse(self, status: int, retry_after: str | None) -> None:
        self.refused += 1
        self.refusals[status] += 1
        if status in (503, 507) and not retry_after:
            self.refusals_without_retry_after += 1
        self.progress.set()

    async def until(self, check: Callable[[LoadResult], bool], within: float = 30.0, what: str = "load") -> None:
        """Until ``check(self)`` holds, woken by every answer; fails naming ``what`` after ``within`` seconds."""
        deadline = time.monotonic() + within
        while not check(self):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{what} not reached within {within}s ({len(self.acked)} acknowledged)"
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), remaining)

    async def until_acked(self, count: int, within: float = 30.0) -> None:
        """Until ``count`` messages in all have been acknowledged; fails if that takes more than ``within`` s."""
        await self.until(lambda result: len(result.acked) >= count, within, f"{count} acknowledged messages")


async def post_load(
    base: str, stop: asyncio.Event, result: LoadResult, connections: int = 20, body: bytes = b'{"v": 1}'
) -> None:
    """POST single messages on ``connections`` connections until ``stop``; record every 2xx's uuid."""

    async def worker(session: aiohttp.ClientSession, number: int) -> None:
        url = f"{base}/rx/load{number}/k/lbl"
        while not stop.is_set():
            result.sent += 1
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    payload = await response.read()
                    if response.status == 200:
                        answer = orjson.loads(payload)
                        result.ack(answer["uuid"], answer["seq"])
                    else:
                        result.refuse(response.status, response.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError, OSError):
                result.errors += 1
                # A client's pause before trying again while the receiver is down, not a wait for readiness.
                await asyncio.sleep(0.02)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=connections)) as session:
        await asyncio.gather(*(worker(session, number) for number in range(connections)))


async def crash_under_load(receiver: Service, result: LoadResult, cycles: int, acks_per_cycle: int) -> list[int]:
    """``cycles`` times: load the receiver on 20 connections until ``acks_per_cycle`` more messages are
    acknowledged, kill -9 it in the middle of that load, and start it again. Returns its ``nextSeq`` after
    each restart."""
    seqs_at_restart: list[int] = []
    for _ in range(cycles):
        stop = asyncio.Event()
        load = asyncio.create_task(post_load(receiver.base, stop, result, connections=20))
        await result.until_acked(len(result.acked) + acks_per_cycle)
        receiver.process.kill()
        stop.set()
        await load
        receiver.start()
        seqs_at_restart.append(int(receiver.status()["nextSeq"]))
    return seqs_at_restart


@contextlib.contextmanager
def services(*items: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for item in items:
            item.process.stop(10)
