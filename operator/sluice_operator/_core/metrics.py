"""Prometheus metrics of the operator itself (issue 6, item 6)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("sluice_operator_reconciles_total", "Reconciles of IngestPipelines, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    "sluice_operator_reconcile_duration_seconds",
    "Time one reconcile of one IngestPipeline takes.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter("sluice_operator_errors_total", "Reconcile errors, by kind.", ["kind"])
MANAGED = Gauge("sluice_operator_managed_pipelines", "IngestPipelines seen at the last resync.")
LEADER = Gauge("sluice_operator_leader", "1 while this replica holds the leader Lease.")
