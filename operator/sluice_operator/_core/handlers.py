"""The kopf handlers, kept thin: each one hands the object to :func:`reconcile` or pokes the work queue.

No delete handler and no timer/daemon: either would make kopf put a finalizer on every IngestPipeline, and a
finalizer that outlives the operator blocks deleting the CR and its namespace. Garbage collection removes the
children through their owner references instead.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from sluice_operator import GROUP, PLURAL, VERSION
from sluice_operator._cogs.naming import MANAGER
from sluice_operator._cogs.settings import OperatorSettings
from sluice_operator._core import metrics
from sluice_operator._core.kubeapi import ApiError
from sluice_operator._core.reconcile import reconcile
from sluice_operator._core.workqueue import Resyncer

log = logging.getLogger(__name__)

# Children whose changes (deletion, hand edits, rollout progress) should trigger a reconcile of their owner
# at once rather than at the next resync.
WATCHED_CHILDREN: tuple[tuple[str, ...], ...] = (
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "deployments"),
    ("v1", "services"),
    ("v1", "configmaps"),
)


def kopf_settings() -> kopf.OperatorSettings:
    """kopf's settings, fixed before ``kopf.run`` so that no watch starts with the defaults."""
    settings = kopf.OperatorSettings()
    # kopf's bookkeeping lives in status, not in annotations: a long inline field list in the last-handled
    # configuration would otherwise push the object past the 256 KiB annotation limit (kopf discussion #1047).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.lastHandledConfiguration")
    # kopf's own "handler succeeded" events are noise next to ours; keep its warnings and errors.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8
    # No cluster-wide scanning of namespaces and CRDs: the operator is told its namespaces (or all of them) and
    # its resources are fixed, so the chart's least-privilege RBAC (no CRD or namespace list) is enough.
    settings.scanning.disabled = True
    return settings


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings, resyncer: Resyncer) -> None:
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def apply_pipeline(body: kopf.Body, **_: Any) -> None:
        try:
            reconcile(dict(body), settings)
        except ApiError as exc:
            if exc.not_found:
                return  # deleted while we worked; garbage collection handles the children
            # Transient (API server busy, conflict): let kopf retry with a delay, no tight loop.
            metrics.ERRORS.labels("ApiError").inc()
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=5) from exc

    for resource in WATCHED_CHILDREN:
        _watch_children(registry, resource, resyncer)


def _watch_children(registry: kopf.OperatorRegistry, resource: tuple[str, ...], resyncer: Resyncer) -> None:
    @kopf.on.event(*resource, labels={"app.kubernetes.io/managed-by": MANAGER}, registry=registry,
                   id=f"child-{resource[-1]}")
    def child_changed(meta: kopf.Meta, type: str | None, **_: Any) -> None:
        if type is None:
            return  # the initial listing: the resync covers it
        owner = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
        if owner and meta.get("namespace"):
            resyncer.queue.add((meta["namespace"], owner))
