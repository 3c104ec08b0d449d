"""Reads the runtime's ``GET /status`` over HTTP (never by import, DESIGN section 9).

Pods are polled concurrently with a short timeout: a dead or unreachable pod costs one timeout, never a stall,
and never an exception out of the reconcile.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sluice-probe")

# A JSON file {"<podIP>:<port>": "<host>:<port>"}, re-read on every probe. Only for test beds without a pod network
# (kwok), where the pods' processes run on loopback and their pod IPs lead nowhere; unset in a real cluster.
ADDRESS_MAP_ENV = "SLUICE_OPERATOR_ADDRESS_MAP"


def address(ip: str, port: int) -> str:
    """``ip:port``, or what the address map file (if any) says to use instead."""
    direct = f"{ip}:{port}"
    path = os.environ.get(ADDRESS_MAP_ENV)
    if not path:
        return direct
    try:
        mapped = json.loads(Path(path).read_text()).get(direct)
    except (OSError, ValueError, AttributeError):
        return direct
    return mapped if isinstance(mapped, str) else direct


def fetch_status(ip: str, port: int, timeout: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{address(ip, port)}/status", timeout=timeout) as response:
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
