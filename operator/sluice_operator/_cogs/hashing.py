"""Stable content hashes: the pod-template annotation that rolls pods when, and only when, config changes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

CONFIG_HASH_ANNOTATION = "sluice.dev/config-hash"


def stable_hash(value: Any) -> str:
    # sort_keys makes dict order irrelevant, so equal configs always hash equal.
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]
