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


def _end_to_end_ratios(pair: dict[str, Any], suffix: str) -> dict[str, float | None]:
    """End to end over the direct ``_bulk`` of the same documents: timed until searchable, and until the engine
    acknowledged the last document."""
    end_to_end, ceiling = pair["endToEnd"], pair["directBulkSearchable"]
    return {
        f"endToEndToDirectBulk{suffix}": _ratio(end_to_end["perSecond"], ceiling["perSecond"]),
        f"endToEndAcknowledgedToDirectBulk{suffix}": _ratio(
            end_to_end["acknowledgedPerSecond"], ceiling["acknowledgedPerSecond"]
        ),
    }


# The end-to-end pairs measured besides the two-process one, by result key and ratio name suffix: one process
# (sluice run --es-url), and two with the engine on CPUs of its own, as it has nodes of its own in a cluster.
END_TO_END_VARIANTS = (("oneHop", "OneHop"), ("engineApart", "EngineApart"))


def runtime_ratios(runtime: dict[str, Any]) -> dict[str, Any]:
    ceiling = runtime["directBulk"]
    current = runtime["current"]
    previous = runtime.get("previous")
    largest = max(ceiling, key=int)
    out: dict[str, Any] = {
        "publisherToDirectBulk": {
            size: _ratio(current["publisherIn"][size]["perSecond"], ceiling[size]["perSecond"]) for size in ceiling
        },
        "drainToDirectBulk": _ratio(current["drainToEngine"]["perSecond"], ceiling[largest]["perSecond"]),
        # Against the same documents sent straight to _bulk in turns with it, both timed until searchable.
        **_end_to_end_ratios(current, ""),
    }
    for key, suffix in END_TO_END_VARIANTS:
        if current.get(key):
            out.update(_end_to_end_ratios(current[key], suffix))
    if previous:
        out["currentToPrevious"] = {
            "publisherIn": {
                size: _ratio(current["publisherIn"][size]["perSecond"], previous["publisherIn"][size]["perSecond"])
                for size in ceiling
            },
            **{
                key: _ratio(current[key]["perSecond"], previous[key]["perSecond"])
                for key in ("receiverRx", "receiverNdjson", "drainToEngine", "endToEnd")
                if key in previous
            },
        }
        for key, suffix in END_TO_END_VARIANTS:
            if current.get(key) and previous.get(key):
                out["currentToPrevious"][f"endToEnd{suffix}"] = _ratio(
                    current[key]["endToEnd"]["perSecond"], previous[key]["endToEnd"]["perSecond"]
                )
    return out


def operator_ratios(operator: dict[str, Any]) -> dict[str, Any]:
    """Pipelines made whole per second by the operator, over the API server's own rate for the same objects."""
    return {
        size: _ratio(measured["perSecond"], operator["directApply"][size]["perSecond"])
        for size, measured in operator["createToChildren"].items()
    }


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each figure over its baseline from the same run: the direct ``_bulk`` or apply ceiling, the previous version."""
    out: dict[str, Any] = {}
    if "runtime" in results:
        out["runtime"] = runtime_ratios(results["runtime"])
    if "operator" in results:
        out["operatorToDirectApply"] = operator_ratios(results["operator"])
    return out


def _runtime_panels(runtime: dict[str, Any], throughput: Any, latency: Any) -> str:
    sizes = [int(size) for size in runtime["directBulk"]]
    series = {"direct _bulk (ceiling)": runtime["directBulk"], "publisher /in": runtime["current"]["publisherIn"]}
    if runtime.get("previous"):
        series[f"publisher /in ({runtime['previousRef']})"] = runtime["previous"]["publisherIn"]
    for label, points in series.items():
        throughput.plot(sizes, [points[str(size)]["perSecond"] for size in sizes], marker="o", label=label)
        latency.plot(sizes, [points[str(size)]["p95Ms"] for size in sizes], marker="o", label=label)
    throughput.set(xscale="log", xlabel="batch size (documents)", ylabel="documents/s", title="Bulk throughput")
    latency.set(xscale="log", xlabel="batch size (documents)", ylabel="p95 per batch (ms)", title="Batch latency p95")
    rx = runtime["current"]["receiverRx"]
    return f"Receiver: {rx['perSecond']:,.0f} acknowledged msg/s, p50 {rx['p50Ms']} ms, p99 {rx['p99Ms']} ms"


def _operator_panel(operator: dict[str, Any], axes: Any) -> None:
    counts = [int(count) for count in operator["createToChildren"]]
    for quantile in ("p50Ms", "p99Ms"):
        values = [operator["createToChildren"][str(count)][quantile] / 1000 for count in counts]
        axes.plot(counts, values, marker="o", label=f"operator {quantile[:3]}")
        direct = [operator["directApply"][str(count)][quantile] / 1000 for count in counts]
        axes.plot(counts, direct, marker="x", linestyle="--", label=f"direct apply {quantile[:3]}")
    axes.set(xlabel="pipelines created at once", ylabel="seconds to all children", title="Operator")


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency, operator) = plt.subplots(1, 3, figsize=(17, 4.8))
    title = f"{results['machine']['cpus']} CPUs"
    if "runtime" in results:
        title = f"{_runtime_panels(results['runtime'], throughput, latency)}  ({title})"
    if "operator" in results:
        _operator_panel(results["operator"], operator)
    for axes in (throughput, latency, operator):
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "not run", ha="center", va="center", transform=axes.transAxes)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
