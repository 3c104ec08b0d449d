"""One ``_bulk`` request: NDJSON body capped in size, optional gzip, and the per-item results.

Every document is sent with the ``create`` operation and its deterministic ``_id``. A resend of a
document that is already there then fails alone with 409, which proves it is stored, and leaves
the stored copy untouched; ``index`` would rewrite it (a new version, a deleted copy for merges
to clean up) for no gain. ``create`` is also the only operation data streams accept.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sluice_runtime.publisher.documents import Document
from sluice_runtime.publisher.engine import EngineClient, EngineError, EngineRefused, EngineUnreachable
from sluice_runtime.publisher.metrics import PublisherMetrics

# Only what the per-item accounting needs; item order is kept because every item has a status.
BULK_PATH = "/_bulk?filter_path=errors,items.*.status,items.*.error"
# How that answer starts when every document was stored: known without parsing an item per document, which
# cost 0.19 us a document. Any other start is parsed in full.
ALL_STORED = b'{"errors":false'
_NDJSON = {"Content-Type": "application/x-ndjson"}
_NDJSON_GZIP = {**_NDJSON, "Content-Encoding": "gzip"}
# Statuses for which the same request may succeed later: timeouts, overload, engine trouble.
TRANSIENT_STATUSES = frozenset({408, 429})


def is_transient(status: int) -> bool:
    return status in TRANSIENT_STATUSES or status >= 500


@dataclass(frozen=True, slots=True)
class Chunk:
    documents: list[Document]
    body: bytes


@dataclass(frozen=True, slots=True)
class ItemFailure:
    status: int
    error: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.error.get("type", "unknown"))


def make_chunks(documents: Sequence[Document], max_bytes: int) -> list[Chunk]:
    """Split into request bodies of at most ``max_bytes``; a single larger document goes alone."""
    chunks: list[Chunk] = []
    current: list[Document] = []
    lines: list[bytes] = []
    size = 0
    for document in documents:
        line = document.bulk_lines
        if current and size + len(line) > max_bytes:
            chunks.append(Chunk(current, b"".join(lines)))
            current, lines, size = [], [], 0
        current.append(document)
        lines.append(line)
        size += len(line)
    if current:
        chunks.append(Chunk(current, b"".join(lines)))
    return chunks


class BulkClient:
    def __init__(
        self, engine: EngineClient, metrics: PublisherMetrics, max_bytes: int, compress: bool, concurrency: int
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self.max_bytes = max_bytes
        self._compress = compress
        self._slots = asyncio.Semaphore(concurrency)

    async def send(self, chunk: Chunk) -> dict[int, ItemFailure]:
        """Send one chunk; return the failed items by position (an empty dict means all were stored).

        Raises :class:`EngineError` when the whole request may succeed later, and
        :class:`EngineRefused` or :class:`EngineUnreachable` when it will not soon.
        """
        body, headers = chunk.body, _NDJSON
        if self._compress:
            # Level 1: most of the size gain for a fraction of the CPU, off the event loop.
            body, headers = await asyncio.to_thread(gzip.compress, body, 1), _NDJSON_GZIP
        async with self._slots:
            started = time.perf_counter()
            try:
                response = await self._engine.request("POST", BULK_PATH, body, headers)
            except (EngineError, EngineUnreachable):
                self._metrics.bulk_requests.labels("error").inc()
                raise
            finally:
                self._metrics.bulk_seconds.observe(time.perf_counter() - started)
        self._metrics.bulk_requests.labels(str(response.status)).inc()
        if response.status == 200:
            return failures(response.body, len(chunk.documents))
        if is_transient(response.status):
            raise EngineError(f"bulk request: {response.error_reason()}")
        raise EngineRefused(f"bulk request refused: {response.error_reason()}")


def failures(answer: bytes, expected: int) -> dict[int, ItemFailure]:
    """The failed items of a ``_bulk`` answer to ``expected`` documents, by position."""
    if answer.startswith(ALL_STORED):
        return {}
    try:
        result = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise EngineError(f"bulk response is not JSON: {answer[:200]!r}") from None
    if not isinstance(result, dict):
        raise EngineError(f"bulk response is not an object: {result!r:.200}")
    if not result.get("errors"):
        return {}
    items = result.get("items")
    if not isinstance(items, list) or len(items) != expected:
        raise EngineError(f"bulk response lists {len(items or [])} items for {expected} documents")
    failed: dict[int, ItemFailure] = {}
    for position, item in enumerate(items):
        (outcome,) = item.values()
        status = int(outcome.get("status", 0))
        if status >= 300:
            failed[position] = ItemFailure(status, outcome.get("error") or {})
    return failed
