"""Conditions that follow the Kubernetes API conventions.

``lastTransitionTime`` moves only when ``status`` changes, so an unchanged reconcile writes an identical status
and the API server sees a no-op (no event, no resourceVersion bump, no feedback loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

READY = "Ready"
RECEIVER_READY = "ReceiverReady"
PUBLISHER_READY = "PublisherReady"
INDEX_TEMPLATE_READY = "IndexTemplateReady"
ORDER = (READY, RECEIVER_READY, PUBLISHER_READY, INDEX_TEMPLATE_READY)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None means Unknown
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    previous: Iterable[Mapping[str, Any]] | None,
    current: Iterable[Condition],
    generation: int | None,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """The new conditions list: keeps lastTransitionTime of conditions whose status did not change."""
    old = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    stamp = timestamp or now()
    result = []
    for condition in sorted(current, key=lambda c: ORDER.index(c.type) if c.type in ORDER else len(ORDER)):
        before = old.get(condition.type)
        unchanged = before is not None and before.get("status") == condition.status_text
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": condition.status_text,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": before.get("lastTransitionTime", stamp) if unchanged and before else stamp,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        result.append(entry)
    return result


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)
