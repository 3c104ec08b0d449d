"""Load generators: each sends the same rtBeat-shaped documents and reports documents/s and latencies."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from sluice_runtime.common.envelope import Envelope, encode_batch, make_envelope
from sluice_runtime.publisher.bulk import BULK_PATH

PAYLOAD = {
    "latitude": 47.37,
    "longitude": 8.54,
    "offset": 1,
    "currently": {"time": 1764000000, "temperature": 21.5, "humidity": 0.4, "summary": "Partly Cloudy"},
}


@dataclass
class Measurement:
    documents: int
    seconds: float
    latencies: list[float]
    # For loads timed until searchable: when the engine had acknowledged the last document.
    acknowledged_seconds: float | None = None
    # CPU time each process spent on the load, in microseconds a document (engine, receiver, publisher).
    cpu_per_document: dict[str, float] | None = None

    @property
    def per_second(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0

    def summary(self) -> dict[str, Any]:
        summary = {
            "documents": self.documents,
            "seconds": round(self.seconds, 3),
            "perSecond": round(self.per_second, 1),
            "p50Ms": round(self.percentile(0.50) * 1000, 2),
            "p95Ms": round(self.percentile(0.95) * 1000, 2),
            "p99Ms": round(self.percentile(0.99) * 1000, 2),
        }
        if self.acknowledged_seconds:
            summary["acknowledgedSeconds"] = round(self.acknowledged_seconds, 3)
            summary["acknowledgedPerSecond"] = round(self.documents / self.acknowledged_seconds, 1)
        if self.cpu_per_document:
            summary["cpuMicrosPerDocument"] = {name: round(micros, 1) for name, micros in self.cpu_per_document.items()}
        return summary


def envelopes(count: int, body_bytes: int = 500) -> list[Envelope]:
    """The messages the receiver loads store: the same reading, so every load indexes the same documents."""
    payload = orjson.loads(body_of_size(body_bytes))
    return [make_envelope(seq, "bench", "readings", "roof", payload) for seq in range(count)]


def bulk_body(batch: list[Envelope], index: str) -> bytes:
    """What a client writing straight to ``_bulk`` would send for the same messages: the ceiling."""
    lines = []
    for envelope in batch:
        lines.append(orjson.dumps({"create": {"_index": index, "_id": envelope["uuid"]}}))
        lines.append(orjson.dumps({"@timestamp": envelope["time"], "rxtxMsg": envelope}))
    return b"\n".join(lines) + b"\n"


async def _drive(requests: list[Callable[[], Awaitable[None]]], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            started = time.perf_counter()
            await request()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def _post_ok(session: aiohttp.ClientSession, url: str, body: bytes, content_type: str) -> bytes:
    async with session.post(url, data=body, headers={"Content-Type": content_type}) as response:
        text = await response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {url}: HTTP {response.status}: {text[:300]!r}")
        return text


SEARCHABLE_POLL = 0.1  # seconds between _count polls while waiting for documents to become searchable


async def searchable(engine_url: str, index: str, documents: int) -> None:
    """Until ``index`` (a name or pattern) counts ``documents``. No forced ``_refresh``: the index's own refresh
    makes them searchable, as for any reader, and forcing one per poll would cost the engine tiny segments."""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{engine_url}/{index}/_count") as response:
                if response.status == 200 and (await response.json())["count"] >= documents:
                    return
            await asyncio.sleep(SEARCHABLE_POLL)


async def direct_bulk(
    engine_url: str, documents: int, batch_size: int, concurrency: int, until_searchable: bool = False
) -> Measurement:
    """The ceiling: prepared ``_bulk`` bodies sent straight to the engine; with ``until_searchable`` the clock
    stops when all of them can be found, the same finish line as the end-to-end load. It asks for the
    publisher's short answer (``filter_path``): a full one costs the engine CPU that the ceiling should not pay."""
    index = f"bench-direct-{uuid.uuid4().hex[:8]}"
    messages = envelopes(documents)
    bodies = [bulk_body(messages[i : i + batch_size], index) for i in range(0, documents, batch_size)]
    async with aiohttp.ClientSession() as session:

        def request(body: bytes) -> Callable[[], Awaitable[None]]:
            async def send() -> None:
                answer = orjson.loads(await _post_ok(session, engine_url + BULK_PATH, body, "application/x-ndjson"))
                if answer.get("errors"):
                    raise RuntimeError("the direct bulk baseline had item errors")

            return send

        started = time.perf_counter()
        seconds, latencies = await _drive([request(body) for body in bodies], concurrency)
        if not until_searchable:
            await session.delete(f"{engine_url}/{index}")
            return Measurement(documents, seconds, latencies)
        await searchable(engine_url, index, documents)
        searchable_seconds = time.perf_counter() - started
        await session.delete(f"{engine_url}/{index}")
    return Measurement(documents, searchable_seconds, latencies, acknowledged_seconds=seconds)


async def publisher_in(publisher_url: str, documents: int, batch_size: int, concurrency: int) -> Measurement:
    messages = [orjson.dumps(envelope) for envelope in envelopes(documents)]
    bodies = [encode_batch(messages[i : i + batch_size]) for i in range(0, documents, batch_size)]
    async with aiohttp.ClientSession() as session:

        def request(body: bytes) -> Callable[[], Awaitable[None]]:
            async def send() -> None:
                await _post_ok(session, f"{publisher_url}/in", body, "application/json")

            return send

        seconds, latencies = await _drive([request(body) for body in bodies], concurrency)
    return Measurement(documents, seconds, latencies)


def body_of_size(size: int) -> bytes:
    """A JSON reading padded to exactly ``size`` bytes, as the issue's reference figures use 500."""
    base = orjson.dumps({**PAYLOAD, "note": ""})
    return orjson.dumps({**PAYLOAD, "note": "x" * max(0, size - len(base))})


async def receiver_rx(receiver_url: str, messages: int, concurrency: int, body_bytes: int = 500) -> Measurement:
    """Single-message intake, as IoT clients send it: one POST per message, acknowledged after fsync."""
    body = body_of_size(body_bytes)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> None:
            await _post_ok(session, f"{receiver_url}/rx/bench/readings/roof", body, "application/json")

        seconds, latencies = await _drive([send] * messages, concurrency)
    return Measurement(messages, seconds, latencies)


async def receiver_ndjson(
    receiver_url: str, messages: int, per_request: int, concurrency: int, body_bytes: int = 500
) -> Measurement:
    """Many messages per request (``application/x-ndjson``), all-or-nothing, acknowledged after fsync."""
    line = body_of_size(body_bytes) + b"\n"
    body = line * per_request
    requests = max(1, messages // per_request)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def send() -> None:
            await _post_ok(session, f"{receiver_url}/rx/bench/readings/roof", body, "application/x-ndjson")

        seconds, latencies = await _drive([send] * requests, concurrency)
    return Measurement(requests * per_request, seconds, latencies)
