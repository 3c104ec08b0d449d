"""The small duration syntax of the CRD (``10s``, ``500ms``, ``1m``)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0}


def seconds(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 10s, 500ms, 1m)")
    return float(match.group(1)) * _UNIT[match.group(2)]
