"""The publisher's HTTP application: ``POST /in`` plus health, readiness, status and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from sluice_runtime.common.httpkit import add_observability_routes, error_response, json_response
from sluice_runtime.common.tokens import TokenFile, open_token_file
from sluice_runtime.publisher.delivery import Delivery, DeliveryFailed, Sink
from sluice_runtime.publisher.documents import BatchError, parse_batch
from sluice_runtime.publisher.fileout import FileSink
from sluice_runtime.publisher.indexer import ElasticsearchSink
from sluice_runtime.publisher.indexname import IndexPattern
from sluice_runtime.publisher.metrics import PublisherMetrics
from sluice_runtime.publisher.settings import PublisherSettings

log = logging.getLogger("sluice.publisher")


class Publisher:
    """Turns each batch into documents and answers only once the sink has settled every one of them."""

    def __init__(
        self, settings: PublisherSettings, sink: Sink, metrics: PublisherMetrics, tokens: TokenFile | None
    ) -> None:
        self.settings = settings
        self.sink = sink
        self._tokens = tokens
        self._index = IndexPattern(settings.elasticsearch.index)
        self._metrics = metrics
        self._totals = Delivery()
        self._batches = {"ok": 0, "invalid": 0, "unavailable": 0, "unauthorized": 0}
        # Batch sizes and concurrency as the senders produce them: what their batch.maxMessages and
        # batch.maxInFlight settings actually amount to, seen from this side.
        self._in_flight = 0
        self._max_in_flight = 0
        self._last_batch_size: int | None = None
        self._largest_batch_size = 0

    async def handle_in(self, request: web.Request) -> web.Response:
        if self._tokens is not None and not self._tokens.allows(request.headers.get("Authorization")):
            self._count("unauthorized")
            return error_response(401, "a valid bearer token is required (Authorization: Bearer <token>)")
        try:
            answer = await self.publish(await request.read())
        except BatchError as exc:
            return error_response(400, f"malformed batch: {exc}")
        except DeliveryFailed as exc:
            return error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
        return json_response(answer)

    async def publish(self, body: bytes) -> Mapping[str, Any]:
        """Index one rxtx batch and return what its answer reports. Raises :class:`BatchError` for a batch
        that cannot be indexed as sent, and :class:`DeliveryFailed` when it should be sent again later."""
        started = time.perf_counter()
        try:
            batch = parse_batch(body, self._index)
        except BatchError:
            self._count("invalid")
            raise
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        self._metrics.batches_in_flight.inc()
        try:
            delivery = await self.sink.deliver(batch.documents) if batch.documents else Delivery()
        except DeliveryFailed as exc:
            self._count("unavailable")
            log.warning("batch %s not stored: %s", batch.uuid, exc)
            raise DeliveryFailed(f"batch {batch.uuid} not stored: {exc}", exc.retry_after) from None
        finally:
            self._in_flight -= 1
            self._metrics.batches_in_flight.dec()
        self._count("ok")
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        size = len(batch.documents)
        self._metrics.batch_documents.observe(size)
        self._last_batch_size = size
        self._largest_batch_size = max(self._largest_batch_size, size)
        self._totals.indexed += delivery.indexed
        self._totals.duplicates += delivery.duplicates
        self._totals.dead_lettered += delivery.dead_lettered
        return {
            "status": "OK",
            "uuid": batch.uuid,
            "size": size,
            "indexed": delivery.indexed,
            "duplicates": delivery.duplicates,
            "deadLettered": delivery.dead_lettered,
        }

    def _count(self, result: str) -> None:
        self._batches[result] += 1
        self._metrics.batches.labels(result).inc()

    def status(self) -> Mapping[str, Any]:
        es = self.settings.elasticsearch
        return {
            "index": es.index,
            "deadLetterIndex": es.dead_letter_index,
            **self.sink.status(),
            "batches": dict(self._batches),
            "inFlightBatches": self._in_flight,
            "maxConcurrentBatches": self._max_in_flight,
            "lastBatchSize": self._last_batch_size,
            "largestBatchSize": self._largest_batch_size,
            "documents": {
                "indexed": self._totals.indexed,
                "duplicates": self._totals.duplicates,
                "deadLettered": self._totals.dead_lettered,
            },
        }


def build_sink(settings: PublisherSettings, metrics: PublisherMetrics) -> Sink:
    if settings.elasticsearch.url:
        return ElasticsearchSink(settings, metrics)
    return FileSink(settings.output)


def build_publisher(settings: PublisherSettings, registry: CollectorRegistry) -> Publisher:
    """A publisher and its output, not yet started: ``sink.start()`` and ``sink.close()`` are the caller's.

    Raises :class:`~sluice_runtime.common.config.ConfigError` for unusable settings."""
    metrics = PublisherMetrics(registry)
    tokens = open_token_file(settings.auth, "publisher.auth")
    return Publisher(settings, build_sink(settings, metrics), metrics, tokens)


def build_app(settings: PublisherSettings, registry: CollectorRegistry | None = None) -> web.Application:
    """The publisher as an aiohttp application; its output starts and stops with the application.

    Raises :class:`~sluice_runtime.common.config.ConfigError` for unusable settings, at once or
    (for a fields file or template the engine refuses) when the application starts.
    """
    registry = registry or CollectorRegistry()
    publisher = build_publisher(settings, registry)
    app = web.Application(client_max_size=settings.max_request_bytes)
    app.router.add_post("/in", publisher.handle_in)
    add_observability_routes(app, registry, "publisher", publisher.sink.ready, publisher.status)

    async def output(_: web.Application) -> AsyncIterator[None]:
        await publisher.sink.start()
        yield
        await publisher.sink.close()

    app.cleanup_ctx.append(output)
    return app
