"""Ratios against the baselines of the same run, and the chart."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each figure over its baseline from the same run: the direct ``_bulk`` ceiling, and the previous version."""
    ceiling = results["directBulk"]
    current = results["current"]
    previous = results.get("previous")
    out: dict[str, Any] = {
        "publisherToDirectBulk": {
            size: _ratio(current["publisherIn"][size]["perSecond"], ceiling[size]["perSecond"]) for size in ceiling
        }
    }
    largest = max(ceiling, key=int)
    out["drainToDirectBulk"] = _ratio(current["drainToEngine"]["perSecond"], ceiling[largest]["perSecond"])
    if previous:
        out["currentToPrevious"] = {
            "publisherIn": {
                size: _ratio(current["publisherIn"][size]["perSecond"], previous["publisherIn"][size]["perSecond"])
                for size in ceiling
            },
            **{
                key: _ratio(current[key]["perSecond"], previous[key]["perSecond"])
                for key in ("receiverRx", "receiverNdjson", "drainToEngine")
                if key in previous
            },
        }
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(size) for size in results["directBulk"]]
    series = {"direct _bulk (ceiling)": results["directBulk"], "publisher /in": results["current"]["publisherIn"]}
    if results.get("previous"):
        series[f"publisher /in ({results['previousRef']})"] = results["previous"]["publisherIn"]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, points in series.items():
        throughput.plot(sizes, [points[str(size)]["perSecond"] for size in sizes], marker="o", label=label)
        latency.plot(sizes, [points[str(size)]["p95Ms"] for size in sizes], marker="o", label=label)
    throughput.set(xscale="log", xlabel="batch size (documents)", ylabel="documents/s", title="Throughput")
    latency.set(xscale="log", xlabel="batch size (documents)", ylabel="p95 per batch (ms)", title="Batch latency p95")
    for axes in (throughput, latency):
        axes.grid(True, alpha=0.3)
        axes.legend()
    rx = results["current"]["receiverRx"]
    figure.suptitle(
        f"Receiver: {rx['perSecond']:,.0f} acknowledged msg/s, p50 {rx['p50Ms']} ms, p99 {rx['p99Ms']} ms"
        f"  ({results['machine']['cpus']} CPUs)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
