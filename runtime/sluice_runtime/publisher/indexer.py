"""Delivery to Elasticsearch/OpenSearch: per-item results, retries with backoff, the dead-letter index.

Each bulk item ends in one of four ways:

* stored (2xx), or already stored (409 from ``create``: a resend of a document the engine has);
* transient (408, 429, 5xx): sent again after a backoff, until ``retryTimeout`` runs out;
* refused for the document's own sake (other 4xx, such as a mapping conflict): written to the
  dead-letter index with the original, the error and the time, and then counted as settled;
* refused for the engine's sake (401, 403, 404: credentials, permissions, a missing index that
  may not be created): the batch fails at once, because dead-lettering every document over a
  configuration problem would empty the queue into the wrong place.

A batch is answered only when every document is stored or dead-lettered. A batch that fails part
way is safe to send again: the documents already stored come back as 409 and are not duplicated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sluice_runtime.publisher.bulk import BulkClient, Chunk, ItemFailure, is_transient, make_chunks
from sluice_runtime.publisher.delivery import Delivery, DeliveryFailed
from sluice_runtime.publisher.documents import Document, dead_letter, describe_error
from sluice_runtime.publisher.engine import (
    EngineClient,
    EngineError,
    EngineRefused,
    EngineUnreachable,
    backoff_delay,
)
from sluice_runtime.publisher.indexname import IndexPattern
from sluice_runtime.publisher.metrics import PublisherMetrics
from sluice_runtime.publisher.settings import PublisherSettings
from sluice_runtime.publisher.template import TemplateInstaller

log = logging.getLogger("sluice.publisher.indexer")

ALREADY_EXISTS = 409
# Refusals about the engine's configuration rather than the document: credentials, permissions, a missing index.
ENGINE_SIDE_REFUSALS = frozenset({401, 403, 404})


@dataclasses.dataclass
class _Round:
    """What one pass over the pending documents left to do."""

    retry: list[Document] = dataclasses.field(default_factory=list)
    dead_letters: list[Document] = dataclasses.field(default_factory=list)
    problem: str = ""


class ElasticsearchSink:
    def __init__(self, settings: PublisherSettings, metrics: PublisherMetrics) -> None:
        es = settings.elasticsearch
        self.url = es.url
        self._metrics = metrics
        self._engine = EngineClient(es)
        self._bulk = BulkClient(self._engine, metrics, es.max_bulk_bytes, es.gzip, es.max_concurrent_requests)
        self._dead_letter_index = IndexPattern(es.dead_letter_index)
        self._retry_timeout = es.retry_timeout
        self._retry_after = es.retry_after
        self._last_error: str | None = None
        self._last_success: float | None = None
        template = settings.index_template
        name = settings.template_name()
        self.template = (
            TemplateInstaller(
                self._engine,
                name,
                template.fields_file,
                settings.template_patterns(),
                template.priority,
                template.check_interval,
                metrics,
                data_stream=es.data_stream,
            )
            if name is not None
            else None
        )

    async def start(self) -> None:
        await self._engine.start()
        if self.template is not None:
            try:
                await self.template.start()
            except BaseException:
                await self._engine.close()
                raise

    async def close(self) -> None:
        if self.template is not None:
            await self.template.close()
        await self._engine.close()

    def ready(self) -> tuple[bool, str]:
        if self.template is not None and self.template.installed_hash is None:
            return False, f"index template {self.template.name} not installed: {self.template.error or 'pending'}"
        return True, "ok"

    def status(self) -> Mapping[str, Any]:
        return {
            "output": "elasticsearch",
            "url": self.url,
            "lastError": self._last_error,
            "secondsSinceLastSuccess": None if self._last_success is None else time.monotonic() - self._last_success,
            "indexTemplate": self.template.status() if self.template is not None else None,
        }

    async def deliver(self, documents: Sequence[Document]) -> Delivery:
        is_ready, reason = self.ready()
        if not is_ready:
            # Indexing before the template is in place would fix dynamic mappings into new indices.
            raise DeliveryFailed(reason, self._retry_after)
        try:
            delivery = await self._deliver(documents)
        except DeliveryFailed as exc:
            self._last_error = str(exc)
            exc.retry_after = self._retry_after
            raise
        self._last_success = time.monotonic()
        return delivery

    async def _deliver(self, documents: Sequence[Document]) -> Delivery:
        delivery = Delivery()
        deadline = time.monotonic() + self._retry_timeout
        pending = list(documents)
        attempt = 0
        while pending:
            result = await self._round(pending, delivery)
            pending = result.dead_letters + result.retry
            if not result.retry:
                continue
            attempt += 1
            delay = backoff_delay(attempt)
            if time.monotonic() + delay > deadline:
                waited = f"{len(result.retry)} documents still not accepted after {self._retry_timeout:.0f}s"
                raise DeliveryFailed(f"{waited}: {result.problem}")
            log.info("retrying %d documents in %.2fs: %s", len(result.retry), delay, result.problem)
            await asyncio.sleep(delay)
        return delivery

    async def _round(self, pending: list[Document], delivery: Delivery) -> _Round:
        chunks = make_chunks(pending, self._bulk.max_bytes)
        outcomes = await asyncio.gather(*(self._bulk.send(chunk) for chunk in chunks), return_exceptions=True)
        result = _Round()
        fatal: str | None = None
        before = dataclasses.replace(delivery)
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            if isinstance(outcome, EngineUnreachable | EngineRefused):
                fatal = str(outcome)
            elif isinstance(outcome, EngineError):
                result.retry.extend(chunk.documents)
                result.problem = str(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                fatal = self._settle(chunk, outcome, delivery, result) or fatal
        # Counted per round, not per document, to keep the metrics off the per-document path.
        for label, now, then in (
            ("indexed", delivery.indexed, before.indexed),
            ("duplicate", delivery.duplicates, before.duplicates),
            ("dead_lettered", delivery.dead_lettered, before.dead_lettered),
        ):
            if now > then:
                self._metrics.documents.labels(label).inc(now - then)
        if fatal is not None:
            # Whatever was stored in this round stays stored; a resend finds it as 409.
            raise DeliveryFailed(fatal)
        return result

    def _settle(self, chunk: Chunk, failures: dict[int, ItemFailure], delivery: Delivery, result: _Round) -> str | None:
        """Account for one chunk's items; return a reason when the batch cannot complete."""
        if not failures:
            for document in chunk.documents:
                _count(document, delivery, duplicate=False)
            return None
        fatal: str | None = None
        for position, document in enumerate(chunk.documents):
            failure = failures.get(position)
            if failure is None or failure.status == ALREADY_EXISTS:
                _count(document, delivery, duplicate=failure is not None)
                continue
            self._metrics.item_failures.labels(str(failure.status), failure.type).inc()
            reason = f"HTTP {failure.status} for {document.index}/{document.id}: {describe_error(failure.error)}"
            if is_transient(failure.status):
                result.retry.append(document)
                result.problem = reason
            elif document.dead_letter or failure.status in ENGINE_SIDE_REFUSALS:
                what = "dead letter refused" if document.dead_letter else "document refused"
                log.error("%s: %s", what, reason)
                fatal = f"{what}: {reason}"
            else:
                log.warning("dead-lettering %s", reason)
                result.dead_letters.append(
                    dead_letter(document, self._dead_letter_index, failure.status, failure.error, datetime.now(UTC))
                )
        return fatal


def _count(document: Document, delivery: Delivery, duplicate: bool) -> None:
    # A dead letter that already exists (409) was written by an earlier attempt: it still counts as settled.
    if document.dead_letter:
        delivery.dead_lettered += 1
    elif duplicate:
        delivery.duplicates += 1
    else:
        delivery.indexed += 1
