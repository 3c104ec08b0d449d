"""Kubernetes Events on the IngestPipeline (core/v1, the verbs the chart grants: create)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sluice_operator._cogs.naming import MANAGER
from sluice_operator._core import kubeapi

log = logging.getLogger(__name__)


def post(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", "sluice.dev/v1alpha1"),
            "kind": body.get("kind", "IngestPipeline"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason or "Unknown",
        "message": message[:1024],
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER,
        "reportingInstance": MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        kubeapi.request("POST", kubeapi.path("v1", "Event", meta["namespace"]), body=event)
    except Exception as exc:
        # An Event is a courtesy: failing to post one must never fail the reconcile.
        log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)
