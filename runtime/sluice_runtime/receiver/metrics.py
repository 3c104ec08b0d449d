"""The receiver's Prometheus metrics: rxtx's set (same names, so old dashboards work) plus Sluice's own.

They live in a registry of their own so a receiver and a publisher can share a process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_GROUP_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # rxtx's names and meanings.
        self.received = Counter("rxtx_total_messages_received", "Total number of messages received.", registry=registry)
        self.queued = Gauge("rxtx_messages_in_queue", "Number of messages in the queue.", registry=registry)
        self.tx_batches = Counter("rxtx_tx_batches", "Total number of batch transmissions.", registry=registry)
        self.tx_failures = Counter("rxtx_tx_fails", "Total number of failed batch transmissions.", registry=registry)
        self.db_errors = Counter("rxtx_db_errors", "Total number of database errors.", registry=registry)
        self.message_errors = Counter(
            "rxtx_msg_errors", "Total number of rejected messages (bad requests).", registry=registry
        )
        self.response_time = Summary(
            "rxtx_response_time", "Time it took to respond to a post, in seconds.", registry=registry
        )
        # Sluice's additions.
        self.rejected = Counter(
            "sluice_receiver_requests_rejected", "Requests refused, by HTTP status", ["status"], registry=registry
        )
        self.dropped = Counter(
            "sluice_receiver_messages_dropped",
            "Messages deleted unsent to make room (whenFull: dropOldest)",
            registry=registry,
        )
        self.tx_messages = Counter(
            "sluice_receiver_messages_forwarded", "Messages acknowledged by the publisher", registry=registry
        )
        self.oldest_age = Gauge(
            "sluice_receiver_oldest_message_age_seconds", "Age of the oldest message in the queue", registry=registry
        )
        self.group_commit_size = Histogram(
            "sluice_receiver_group_commit_messages",
            "Messages written by one fsync'd group commit",
            buckets=_GROUP_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "sluice_receiver_group_commit_duration_seconds",
            "Duration of one fsync'd group commit",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "sluice_receiver_ack_latency_seconds",
            "Time from a request's arrival to its durable acknowledgement",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.forward_seconds = Histogram(
            "sluice_receiver_forward_duration_seconds",
            "Time from a batch's first send to its acknowledgement, retries included",
            buckets=(*_LATENCY_BUCKETS, 30, 60, 300),
            registry=registry,
        )
        self.in_flight = Gauge(
            "sluice_receiver_batches_in_flight", "Batches sent and not yet acknowledged", registry=registry
        )
        self.batches_claimed = Counter(
            "sluice_receiver_batches_claimed",
            "Batches taken from the queue, by why they went when they did: full, backlog (back-to-back) or maxWait",
            ["reason"],
            registry=registry,
        )
        self.retry_delay = Gauge(
            "sluice_receiver_retry_delay_seconds",
            "Delay chosen before the latest retry of a batch (never less than the publisher's Retry-After)",
            registry=registry,
        )

    def bind_live(
        self, backlog: Callable[[], float], oldest_age: Callable[[], float], in_flight: Callable[[], float]
    ) -> None:
        """Gauges read at scrape time from the queue and forwarder."""
        self.queued.set_function(backlog)
        self.oldest_age.set_function(oldest_age)
        self.in_flight.set_function(in_flight)

    def committed(self, messages: int, seconds: float, dropped: int) -> None:
        self.dropped.inc(dropped)
        if messages:
            self.group_commit_size.observe(messages)
        self.commit_seconds.observe(seconds)
