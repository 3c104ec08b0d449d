"""Operator benchmarks on the test bed's real control plane: CR-to-children latency, start-up resync, RSS.

N pipelines are created across five namespaces at once; for each, the time from its create call
to the moment all its children exist is taken from the API server (by polling lists, which is
what a user watching `kubectl get` would see). The operator is then restarted to time how long it
takes to reconcile every existing pipeline again, and its resident memory is read from /proc.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from bench.loads import Measurement
from sluice_operator.model.render import render
from tests.support.kube import KubeCluster, running_cluster
from tests.support.observe import metric_sum, rss_mib
from tests.support.procs import ManagedProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
OPERATOR = Path(sys.executable).parent / "sluice-operator"
NAMESPACES = [f"bench-{number}" for number in range(5)]
# What a pipeline's children are, by kind: the per-pipeline objects render() produces.
CHILD_KINDS = ("configmaps", "services", "statefulsets.apps", "deployments.apps", "poddisruptionbudgets.policy")
TIMEOUT_PER_PIPELINE = 2.0
CHUNK = 50  # objects per apply call, as a GitOps tool syncing a large directory would send them


class OperatorProcess:
    def __init__(self, kube: KubeCluster, log_dir: Path) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "sluice-operator",
            [str(OPERATOR), *[arg for ns in NAMESPACES for arg in ("--namespace", ns)], "--no-leader-election",
             "--health-listen", f"127.0.0.1:{self.port}"],
            log_dir / "operator.log",
            env=kube.env,
        )  # fmt: skip

    def start(self) -> float:
        started = time.perf_counter()
        self.process.start()
        self.process.wait_ready(lambda: self._get("/healthz") != "", 60)
        return started

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return str(response.read().decode())

    def reconciles(self) -> float:
        return metric_sum(self._get("/metrics"), "sluice_operator_reconciles_total")

    def rss_mib(self) -> float:
        assert self.process.pid is not None
        return rss_mib(self.process.pid)


def pipeline(name: str, namespace: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "wx.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    return dict(doc)


def children_by_pipeline(kube: KubeCluster) -> dict[tuple[str, str], int]:
    listed = json.loads(
        kube.kubectl("get", ",".join(CHILD_KINDS), "-A", "-l", "app.kubernetes.io/managed-by=sluice-operator",
                     "-o", "json").stdout
    )  # fmt: skip
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for item in listed["items"]:
        owners = item["metadata"].get("ownerReferences") or []
        for owner in owners:
            if owner["kind"] == "IngestPipeline":
                counts[(item["metadata"]["namespace"], owner["name"])] += 1
    return counts


def expected_children() -> int:
    """How many children of those kinds one weather pipeline has, as the model renders it."""
    spec = pipeline("probe", "probe")["spec"]
    return len(render("probe", "probe", spec, runtime_image="unused"))


def create_and_time(kube: KubeCluster, count: int, prefix: str) -> Measurement:
    expected = expected_children()
    created: dict[tuple[str, str], float] = {}
    documents = [pipeline(f"{prefix}-{number}", NAMESPACES[number % len(NAMESPACES)]) for number in range(count)]
    for start in range(0, count, CHUNK):
        chunk = documents[start : start + CHUNK]
        kube.apply(chunk)
        now = time.perf_counter()
        created.update({(doc["metadata"]["namespace"], doc["metadata"]["name"]): now for doc in chunk})
    complete: dict[tuple[str, str], float] = {}

    def all_complete() -> bool:
        now = time.perf_counter()
        for key, number in children_by_pipeline(kube).items():
            if key in created and key not in complete and number >= expected:
                complete[key] = now
        return len(complete) == len(created)

    began = min(created.values())
    wait_until(all_complete, 60 + count * TIMEOUT_PER_PIPELINE, f"children of {count} pipelines", interval=0.5)
    latencies = [complete[key] - created[key] for key in created]
    return Measurement(count, max(complete.values()) - began, latencies)


def direct_apply(kube: KubeCluster, count: int, prefix: str) -> Measurement:
    """The baseline: the same children, rendered here and applied straight to the API server, in the same chunks."""
    latencies: list[float] = []
    began = time.perf_counter()
    for start in range(0, count, CHUNK):
        names = [f"{prefix}-{number}" for number in range(start, min(count, start + CHUNK))]
        spec = pipeline("direct", "direct")["spec"]
        children = [
            child
            for number, name in enumerate(names, start)
            for child in render(name, NAMESPACES[number % len(NAMESPACES)], spec, runtime_image="unused")
        ]
        chunk_started = time.perf_counter()
        kube.apply(children)
        latencies += [time.perf_counter() - chunk_started] * len(names)
    return Measurement(count, time.perf_counter() - began, latencies)


def measure_operator(sizes: list[int], work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"createToChildren": {}, "directApply": {}}
    with running_cluster(work / "kube", work / "logs") as kube:
        kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        kube.kubectl("wait", "--for=condition=Established", "crd/ingestpipelines.sluice.dev", "--timeout=60s")
        for namespace in NAMESPACES:
            kube.kubectl("create", "namespace", namespace)
        operator = OperatorProcess(kube, work / "logs")
        operator.start()
        total = 0
        for size in sizes:
            print(f"[operator] {size} pipelines: create to all children present", flush=True)
            measured = create_and_time(kube, size, f"p{size}")
            total += size
            summary = measured.summary()
            results["createToChildren"][str(size)] = summary
            print(f"  p50 {summary['p50Ms'] / 1000:.2f} s, p99 {summary['p99Ms'] / 1000:.2f} s", flush=True)
            baseline = direct_apply(kube, size, f"d{size}").summary()
            results["directApply"][str(size)] = baseline
            print(f"  baseline, the same children applied directly: p99 {baseline['p99Ms'] / 1000:.2f} s", flush=True)
        results["rssMiB"] = {"pipelines": total, "rssMiB": round(operator.rss_mib(), 1)}
        operator.process.stop()
        print(f"[operator] restart with {total} pipelines: start-up resync", flush=True)
        restarted = OperatorProcess(kube, work / "logs")
        started = restarted.start()
        wait_until(lambda: restarted.reconciles() >= total, 60 + total, "the start-up resync", interval=0.2)
        seconds = time.perf_counter() - started
        results["startupResync"] = {"pipelines": total, "seconds": round(seconds, 2)}
        results["rssMiBAfterResync"] = round(restarted.rss_mib(), 1)
        print(f"  {seconds:.1f} s; RSS {results['rssMiBAfterResync']} MiB", flush=True)
        restarted.process.stop()
    return results
