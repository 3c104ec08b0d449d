"""Reads the runtime's ``GET /status`` over HTTP (never by import, DESIGN section 9).

Pods are polled concurrently with a short timeout: a dead or unreachable pod costs one timeout, never a stall,
and never an exception out of the reconcile.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sluice-probe")


def fetch_status(ip: str, port: int, timeout: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/status", timeout=timeout) as response:
            value = json.loads(response.read(1 << 20))
            return value if isinstance(value, dict) else None
    except Exception:
        # Unreachable, refused, slow or garbage: all mean "unknown" to the caller.
        return None


def fetch_many(ips: Sequence[str], port: int, timeout: float) -> list[dict[str, Any] | None]:
    return list(_POOL.map(lambda ip: fetch_status(ip, port, timeout), ips))


def backlog(statuses: Sequence[dict[str, Any] | None]) -> tuple[int | None, int]:
    """(sum of the reachable receivers' backlog or None if none answered, number that did not answer)."""
    values = [s.get("backlog") for s in statuses if s is not None]
    numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    missing = len(statuses) - len(numbers)
    return (sum(numbers) if numbers else None), missing
