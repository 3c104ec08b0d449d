"""The publisher's Prometheus metrics, in a registry of its own so two roles can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Up to twice the receiver's largest sensible batch.maxMessages; its default is 4000.
_BATCH_SIZE_BUCKETS = (1, 10, 100, 500, 1000, 2000, 4000, 8000, 16000)


class PublisherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "sluice_publisher_batches", "Batches received on POST /in, by result", ["result"], registry=registry
        )
        self.batch_seconds = Histogram(
            "sluice_publisher_batch_duration_seconds",
            "Time from receiving a batch to answering it",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_documents = Histogram(
            "sluice_publisher_batch_documents",
            "Documents per accepted batch",
            buckets=_BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batches_in_flight = Gauge(
            "sluice_publisher_batches_in_flight", "Batches received and not yet answered", registry=registry
        )
        self.documents = Counter(
            "sluice_publisher_documents",
            "Documents accounted for: indexed, duplicate (already present) or dead_lettered",
            ["result"],
            registry=registry,
        )
        self.bulk_requests = Counter(
            "sluice_publisher_bulk_requests", "Bulk requests by HTTP status (or error)", ["status"], registry=registry
        )
        self.bulk_seconds = Histogram(
            "sluice_publisher_bulk_duration_seconds",
            "Latency of one _bulk request",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.item_failures = Counter(
            "sluice_publisher_item_failures",
            "Bulk items the engine refused, by status and error type (409 duplicates excluded)",
            ["status", "type"],
            registry=registry,
        )
        self.template_installed = Gauge(
            "sluice_publisher_template_installed",
            "1 when the index template in the engine matches the configured one",
            registry=registry,
        )
        self.template_installs = Counter(
            "sluice_publisher_template_installs",
            "Index template install attempts, by result",
            ["result"],
            registry=registry,
        )
