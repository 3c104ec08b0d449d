"""NDJSON file output, for the embedded mode with no search engine.

Each line is ``{"_index": …, "_id": …, "_source": {…}}``, the shape of a search hit, so ``jq
._source`` gives the documents and the ``_id`` lets a later loader drop resent lines. Lines go to
``documents.ndjson``; when it would pass ``maxBytes`` it is renamed with a UTC timestamp and a new
one is started, and only the newest ``maxFiles`` rotated files are kept. A batch is answered
after its lines are fsync'd, so an acknowledged batch survives a crash. Files cannot refuse a
document, so nothing is dead-lettered here; a resent batch is written again (at-least-once).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from sluice_runtime.publisher.delivery import Delivery, DeliveryFailed
from sluice_runtime.publisher.documents import Document
from sluice_runtime.publisher.settings import OutputSettings

CURRENT = "documents.ndjson"
ROTATED_GLOB = "documents-*.ndjson"


def file_line(document: Document) -> bytes:
    return (
        b'{"_index":'
        + orjson.dumps(document.index)
        + b',"_id":'
        + orjson.dumps(document.id)
        + b',"_source":'
        + document.source
        + b"}\n"
    )


class FileSink:
    def __init__(self, settings: OutputSettings) -> None:
        self.directory = settings.dir
        self._max_bytes = settings.max_bytes
        self._max_files = settings.max_files
        # One writer at a time: appends from concurrent batches must not interleave.
        self._lock = asyncio.Lock()
        self._file: Any = None
        self._size = 0
        self._written = 0
        self._last_error: str | None = None

    @property
    def path(self) -> Path:
        return self.directory / CURRENT

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    async def close(self) -> None:
        async with self._lock:
            if self._file is not None:
                await asyncio.to_thread(self._file.close)
                self._file = None

    def ready(self) -> tuple[bool, str]:
        return (self._file is not None, "ok" if self._file is not None else "output file not open")

    def status(self) -> Mapping[str, Any]:
        return {
            "output": "file",
            "path": str(self.path),
            "documentsWritten": self._written,
            "lastError": self._last_error,
        }

    async def deliver(self, documents: Sequence[Document]) -> Delivery:
        data = b"".join(file_line(document) for document in documents)
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                self._last_error = f"writing {self.path}: {exc}"
                raise DeliveryFailed(self._last_error) from exc
        self._written += len(documents)
        return Delivery(indexed=len(documents))

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()
        # A new file's name (and a rotation's rename) must reach the disk before a batch in it is acknowledged.
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _append(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self._max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.path.rename(self.directory / f"documents-{stamp}.ndjson")
        for old in sorted(self.directory.glob(ROTATED_GLOB))[: -self._max_files]:
            old.unlink(missing_ok=True)
        self._open()
