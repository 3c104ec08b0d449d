"""The whole chain as a user lives it: IngestPipeline -> operator -> runtime processes -> documents in Elasticsearch.

The pods the operator's children create are run by the harness (tests/e2e/harness.py), so a mistake anywhere in
what the operator renders (args, env, mounts, URLs) breaks these tests. Figures of the fault rows are printed and
attached to the report as properties (sent, acknowledged, indexed, duplicates, missing).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import Kubelet
from tests.operator.test_operator_kube import Operator, condition, get_json, maybe
from tests.support.engines import SearchEngine, call
from tests.support.kube import KubeCluster
from tests.support.procs import NotReady, wait_until

pytestmark = [pytest.mark.kube, pytest.mark.engines]

PAYLOAD = {"latitude": 47.37, "offset": 1, "currently": {"time": 1764072000, "nearestStormDistance": 12,
                                                         "temperature": 21.5}}
READY_TIMEOUT = 120
DRAIN_TIMEOUT = 180


# --- the user's side: curl-shaped requests, kubectl, Elasticsearch queries -----------------------------------------


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    """``curl -X POST -H 'Content-Type: ...' --data-binary @- URL``; (status, JSON answer), 0 if no answer at all."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}  # refused, reset or timed out: the client cannot know whether it was stored


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def endpoint(kube: KubeCluster, namespace: str, kubelet: Kubelet) -> str:
    """The CR's ``status.endpoint`` (what a user would curl), reached through the harness's Service proxy."""
    status = get_json(kube, "ingp", "wx", "-n", namespace).get("status") or {}
    return kubelet.url(status["endpoint"])


def pipeline_ready(kube: KubeCluster, namespace: str) -> bool:
    obj = maybe(kube, "ingp", "wx", "-n", namespace)
    return (
        obj is not None
        and condition(obj, "Ready").get("status") == "True"
        and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    )


def backlog_column(kube: KubeCluster, namespace: str) -> int | None:
    """The BACKLOG column of ``kubectl get ingp``, as a person reads it."""
    header, row = kube.kubectl("get", "ingp", "wx", "-n", namespace).stdout.splitlines()[:2]
    value = dict(zip(header.split(), row.split(), strict=False)).get("BACKLOG", "<none>")
    return None if value == "<none>" else int(value)


def patch_spec(kube: KubeCluster, namespace: str, spec: dict[str, Any]) -> None:
    kube.kubectl("patch", "ingp", "wx", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def documents(es: SearchEngine, prefix: str) -> list[dict[str, Any]]:
    """Every document of the test's indices (a test stays below the 10 000 of one search page)."""
    call(es, "POST", f"/{prefix}-*/_refresh")
    status, body = call(es, "POST", f"/{prefix}-*/_search", {"size": 10000, "query": {"match_all": {}}})
    assert status == 200, body
    hits = body["hits"]["hits"]
    assert len(hits) < 10000, "a test must stay below one search page"
    return hits


def keys_indexed(es: SearchEngine, prefix: str) -> Counter[str]:
    return Counter(hit["_source"]["rxtxMsg"]["key"] for hit in documents(es, prefix))


def wait_indexed(es: SearchEngine, prefix: str, count: int, timeout: float = DRAIN_TIMEOUT) -> None:
    wait_until(lambda: len(documents(es, prefix)) >= count, timeout, f"{count} documents in {prefix}-*", 0.5)


def setup(kube: KubeCluster, namespace: str, kubelet: Kubelet, pipeline: dict[str, Any]) -> str:
    """Create the pipeline and wait until it runs end to end; the receiver endpoint for the test to post to."""
    kube.apply(pipeline)
    spec = pipeline["spec"]
    kubelet.wait_ready("receiver", spec["receiver"]["replicas"], READY_TIMEOUT)
    kubelet.wait_ready("publisher", spec["publisher"]["replicas"], READY_TIMEOUT)
    wait_until(lambda: pipeline_ready(kube, namespace), READY_TIMEOUT, "IngestPipeline Ready")
    return endpoint(kube, namespace, kubelet)


def message_url(base: str, key: str, producer: str = "station-1", label: str = "reading") -> str:
    return f"{base}/{producer}/{key}/{label}"


# --- traffic that runs while faults happen ----------------------------------------------------------------------------


class Sender(threading.Thread):
    """Posts one message per request, each with its own key, and never resends one: a message whose answer was lost
    may be stored or not, but a stored one can never be a duplicate made by the client."""

    def __init__(self, url: Callable[[], str], pause: float = 0.01) -> None:
        super().__init__(name="e2e-sender", daemon=True)
        self.url = url
        self.pause = pause
        self.sent = 0
        self.acked: set[str] = set()
        self.refused: Counter[int] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        body = json.dumps(PAYLOAD).encode()
        while not self.stop.is_set():
            key = f"m-{self.sent:06d}"
            self.sent += 1
            status, _ = post(message_url(self.url(), key), body)
            if status == 200:
                self.acked.add(key)
            else:
                self.refused[status] += 1
            # A steady trickle rather than a flood: the figures stay within one search page.
            self.stop.wait(self.pause)

    def wait_acked(self, more: int, timeout: float = 60) -> None:
        """Until ``more`` further messages are acknowledged (the chain works again after a fault)."""
        target = len(self.acked) + more
        wait_until(lambda: len(self.acked) >= target, timeout, f"{more} more acknowledged messages")


@contextlib.contextmanager
def traffic(kube: KubeCluster, namespace: str, kubelet: Kubelet) -> Iterator[Sender]:
    base = endpoint(kube, namespace, kubelet)
    sender = Sender(lambda: base)
    sender.start()
    try:
        sender.wait_acked(20)
        yield sender
    finally:
        sender.stop.set()
        sender.join(30)


def report(
    sender: Sender, es: SearchEngine, prefix: str, record_property: Callable[[str, object], None], **extra: object
) -> dict[str, Any]:
    """Wait for the drain, then the figures of a fault row; they are printed and attached to the report."""

    def drained() -> bool:
        return sender.acked <= set(keys_indexed(es, prefix))

    with contextlib.suppress(NotReady):  # the figures are printed either way; the caller asserts on them
        wait_until(drained, DRAIN_TIMEOUT, "every acknowledged message indexed", 1)
    indexed = keys_indexed(es, prefix)
    figures: dict[str, Any] = {
        "sent": sender.sent,
        "acknowledged": len(sender.acked),
        "refused": dict(sender.refused),
        "indexed": sum(indexed.values()),
        "indexed_without_ack": len(set(indexed) - sender.acked),  # stored, but the answer was lost on the way
        "duplicates": sum(n - 1 for n in indexed.values()),
        "missing": len(sender.acked - set(indexed)),
        **extra,
    }
    print(f"\nfigures: {json.dumps(figures, sort_keys=True)}")
    for name, value in figures.items():
        record_property(name, value)
    return figures


# --- the chain ------------------------------------------------------------------------------------------------------


def expected_types(fields: list[dict[str, Any]], prefix: str = "") -> dict[str, str]:
    """Dotted field name -> mapping type, for the types that map one for one (from the CR's own fields list)."""
    plain = {"half_float", "byte", "short", "long", "integer", "float", "double", "keyword", "date", "text"}
    found: dict[str, str] = {}
    for entry in fields:
        name = f"{prefix}{entry['name']}" if "name" in entry else prefix.rstrip(".")
        if entry.get("fields"):
            found |= expected_types(entry["fields"], f"{name}." if name else "")
        elif entry.get("type") in plain:
            found[name] = entry["type"]
    return found


def mapping_type(mapping: dict[str, Any], dotted: str) -> str | None:
    node: dict[str, Any] = {"properties": mapping}
    for part in dotted.split("."):
        node = (node.get("properties") or {}).get(part) or {}
    return node.get("type")


def test_documents_land_in_the_monthly_index_with_the_seed_mapping(
    kube: KubeCluster, namespace: str, kubelet: Kubelet, operator: Operator, wx_pipeline: dict[str, Any],
    elasticsearch: SearchEngine, index_prefix: str,
) -> None:
    base = setup(kube, namespace, kubelet, wx_pipeline)
    answers: dict[str, dict[str, Any]] = {}
    sent = Counter[str]()
    for n in range(30):
        producer = f"station-{n % 3}"
        key = f"k-{n:03d}"
        status, answer = post(message_url(base, key, producer), json.dumps(PAYLOAD | {"offset": n}).encode())
        assert status == 200, answer
        answers[key] = answer
        sent[producer] += 1
    wait_indexed(elasticsearch, index_prefix, 30)

    hits = documents(elasticsearch, index_prefix)
    assert len(hits) == 30
    assert Counter(h["_source"]["rxtxMsg"]["producer"] for h in hits) == sent
    for hit in hits:
        message = hit["_source"]["rxtxMsg"]
        when = datetime.fromisoformat(message["time"])
        assert hit["_index"] == f"{index_prefix}-{when:%Y.%m}", "the monthly index of the message's own time"
        assert hit["_id"] == message["uuid"] == answers[message["key"]]["uuid"]
        assert message["payload"]["offset"] == int(message["key"][2:])

    types = expected_types(wx_pipeline["spec"]["indexTemplate"]["fields"])
    assert {"half_float", "byte", "long", "integer"} <= set(types.values())
    index = hits[0]["_index"]
    status, body = call(elasticsearch, "GET", f"/{index}/_mapping")
    assert status == 200, body
    mapping = body[index]["mappings"]["properties"]
    assert {name: mapping_type(mapping, name) for name in types} == types


def test_backlog_rises_while_elasticsearch_is_away_and_drains_after(
    kube: KubeCluster, namespace: str, kubelet: Kubelet, operator: Operator, wx_pipeline: dict[str, Any],
    elasticsearch: SearchEngine, index_prefix: str, record_property: Callable[[str, object], None],
) -> None:
    if not elasticsearch.managed:
        pytest.skip("an external Elasticsearch (SLUICE_TEST_ES_URL) cannot be stopped by the tests")
    base = setup(kube, namespace, kubelet, wx_pipeline)
    wait_until(lambda: backlog_column(kube, namespace) == 0, READY_TIMEOUT, "BACKLOG 0 before the outage")
    body = json.dumps(PAYLOAD).encode()
    elasticsearch.stop()
    try:
        for n in range(50):
            status, answer = post(message_url(base, f"b-{n:03d}"), body)
            assert status == 200, answer  # the queue is durable: the receiver acknowledges without the engine
        wait_until(lambda: (backlog_column(kube, namespace) or 0) > 0, 60, "BACKLOG above 0 in kubectl get ingp")
        peak = backlog_column(kube, namespace)
    finally:
        elasticsearch.start()  # session-scoped: the other tests need it back whatever happened here
    wait_until(lambda: backlog_column(kube, namespace) == 0, DRAIN_TIMEOUT, "BACKLOG back to 0", 1)
    indexed = keys_indexed(elasticsearch, index_prefix)
    record_property("backlog_peak", peak)
    print(f"\nbacklog peak while Elasticsearch was stopped: {peak}")
    assert indexed == Counter({f"b-{n:03d}": 1 for n in range(50)})


def test_three_receivers_are_three_queues_and_every_message_arrives_once(
    kube: KubeCluster, namespace: str, kubelet: Kubelet, operator: Operator, wx_pipeline: dict[str, Any],
    elasticsearch: SearchEngine, index_prefix: str,
) -> None:
    base = setup(kube, namespace, kubelet, wx_pipeline)
    body = json.dumps(PAYLOAD).encode()
    for n in range(30):
        assert post(message_url(base, f"a-{n:03d}"), body)[0] == 200
    patch_spec(kube, namespace, {"receiver": {"replicas": 3}})
    kubelet.wait_ready("receiver", 3, READY_TIMEOUT)
    wait_until(lambda: pipeline_ready(kube, namespace), READY_TIMEOUT, "IngestPipeline Ready with 3 receivers")
    for n in range(300):
        assert post(message_url(base, f"c-{n:03d}"), body)[0] == 200

    receivers = kubelet.containers("receiver")
    data_dirs = sorted({str(c.volumes["data"]) for c in receivers})
    assert [Path(d).name for d in data_dirs] == ["data-wx-receiver-0", "data-wx-receiver-1", "data-wx-receiver-2"]
    assert all((Path(d) / "queue" / "CURRENT").exists() for d in data_dirs), "each receiver keeps its own queue"
    stored = [http_json(f"http://127.0.0.1:{c.local('http')}/status")["nextSeq"] - 1 for c in receivers]
    assert all(n > 0 for n in stored), f"the Service spreads messages over the three queues: {stored}"

    want = Counter({f"a-{n:03d}": 1 for n in range(30)} | {f"c-{n:03d}": 1 for n in range(300)})
    wait_until(lambda: sum(keys_indexed(elasticsearch, index_prefix).values()) >= 330, DRAIN_TIMEOUT, "330 documents")
    hits = documents(elasticsearch, index_prefix)
    assert Counter(h["_source"]["rxtxMsg"]["key"] for h in hits) == want
    assert len({h["_id"] for h in hits}) == 330

    # And back: the scaled-away receivers' processes stop (their drained queues stay on their volumes).
    patch_spec(kube, namespace, {"receiver": {"replicas": 1}})
    kubelet.wait_ready("receiver", 1, READY_TIMEOUT)
    assert all(Path(d).exists() for d in data_dirs)


def batch_histogram(kubelet: Kubelet) -> tuple[int, int]:
    """(batches accepted, of which with at most 10 documents) from the publisher's batch-size histogram."""
    (publisher,) = kubelet.containers("publisher")
    with urllib.request.urlopen(f"http://127.0.0.1:{publisher.local('http')}/metrics", timeout=5) as response:
        text = response.read().decode()
    count = re.search(r"^sluice_publisher_batch_documents_count (\S+)$", text, re.M)
    small = re.search(r'^sluice_publisher_batch_documents_bucket\{le="10\.0"\} (\S+)$', text, re.M)
    assert count and small, text
    return int(float(count.group(1))), int(float(small.group(1)))


def test_batch_size_change_rolls_the_runtime_and_takes_effect(
    kube: KubeCluster, namespace: str, kubelet: Kubelet, operator: Operator, wx_pipeline: dict[str, Any],
    elasticsearch: SearchEngine, index_prefix: str,
) -> None:
    wx_pipeline["spec"]["receiver"]["batch"]["maxMessages"] = 100
    base = setup(kube, namespace, kubelet, wx_pipeline)
    ndjson = "\n".join(json.dumps(PAYLOAD) for _ in range(250)).encode() + b"\n"
    assert post(message_url(base, "before"), ndjson, "application/x-ndjson")[0] == 200
    wait_indexed(elasticsearch, index_prefix, 250)
    (publisher,) = kubelet.containers("publisher")
    largest_before = http_json(f"http://127.0.0.1:{publisher.local('http')}/status")["largestBatchSize"]
    assert 10 < largest_before <= 100

    (old,) = kubelet.containers("receiver")
    patch_spec(kube, namespace, {"receiver": {"batch": {"maxMessages": 10}}})

    def rolled() -> bool:
        running = kubelet.containers("receiver")
        return len(running) == 1 and running[0].uid != old.uid and running[0].ready
    wait_until(rolled, READY_TIMEOUT, "the receiver pod replaced with the new config")
    wait_until(lambda: pipeline_ready(kube, namespace), READY_TIMEOUT, "IngestPipeline Ready after the roll")
    (new,) = kubelet.containers("receiver")
    config = yaml.safe_load((new.volumes["config"] / "sluice.yaml").read_text())
    assert config["receiver"]["batch"]["maxMessages"] == 10

    batches, small = batch_histogram(kubelet)
    assert post(message_url(base, "after"), ndjson, "application/x-ndjson")[0] == 200
    wait_indexed(elasticsearch, index_prefix, 500)
    batches_after, small_after = batch_histogram(kubelet)
    assert batches_after - batches >= 25, "250 messages in batches of at most 10"
    assert small_after - small == batches_after - batches, "no batch after the roll held more than 10"
    assert Counter(h["_source"]["rxtxMsg"]["key"] for h in documents(elasticsearch, index_prefix)) == Counter(
        {"before": 250, "after": 250}
    )


# --- fault rows -------------------------------------------------------------------------------------------------------

# Each change touches a different part of the rendered children: the ConfigMap (and a receiver roll), the
# StatefulSet's replicas, the Deployment's replicas.
OPERATOR_CHANGES = [
    {"receiver": {"batch": {"maxMessages": 3000}}},
    {"receiver": {"replicas": 2}},
    {"publisher": {"replicas": 2}},
]
_CHILD_PATCH = (
    r'"PATCH /apis?/[^"]*/namespaces/{ns}/(configmaps|services|statefulsets|deployments|poddisruptionbudgets)/'
)


def test_operator_killed_mid_reconcile_converges_and_loses_nothing(
    kube: KubeCluster, namespace: str, kubelet: Kubelet, wired_operator: Callable[[str], Operator],
    wx_pipeline: dict[str, Any], elasticsearch: SearchEngine, index_prefix: str,
    record_property: Callable[[str, object], None],
) -> None:
    operator = wired_operator("op-0")
    setup(kube, namespace, kubelet, wx_pipeline)
    child_patch = re.compile(_CHILD_PATCH.format(ns=re.escape(namespace)))
    kills: list[dict[str, Any]] = []
    with traffic(kube, namespace, kubelet) as sender:
        for cycle, change in enumerate(OPERATOR_CHANGES, 1):
            log = operator.process.log_path
            offset = log.stat().st_size
            patch_spec(kube, namespace, change)

            def applying(log: Path = log, offset: int = offset) -> bool:
                with log.open("rb") as handle:
                    handle.seek(offset)
                    return child_patch.search(handle.read().decode(errors="replace")) is not None

            # The first child applied after the change: the reconcile is under way, and SIGKILL lands in it.
            wait_until(applying, 60, "the operator applying a child", interval=0.005)
            operator.process.kill()
            cr = get_json(kube, "ingp", "wx", "-n", namespace)
            with log.open("rb") as handle:
                handle.seek(offset)
                applied = len(child_patch.findall(handle.read().decode(errors="replace")))
            kills.append({"cycle": cycle, "childrenAppliedBeforeKill": applied,
                          "statusBehind": (cr.get("status") or {}).get("observedGeneration")
                          != cr["metadata"]["generation"]})
            operator = wired_operator(f"op-{cycle}")

        wait_until(lambda: pipeline_ready(kube, namespace), READY_TIMEOUT, "IngestPipeline Ready after the kills")
        kubelet.wait_ready("receiver", 2, READY_TIMEOUT)
        kubelet.wait_ready("publisher", 2, READY_TIMEOUT)
        sender.wait_acked(50)

    config = get_json(kube, "configmap", "wx-sluice-config", "-n", namespace)
    assert yaml.safe_load(config["data"]["sluice.yaml"])["receiver"]["batch"]["maxMessages"] == 3000
    assert get_json(kube, "statefulset", "wx-receiver", "-n", namespace)["spec"]["replicas"] == 2
    assert get_json(kube, "deployment", "wx-publisher", "-n", namespace)["spec"]["replicas"] == 2
    figures = report(sender, elasticsearch, index_prefix, record_property, kills=kills)
    assert figures["missing"] == 0 and figures["duplicates"] == 0


@pytest.mark.parametrize(("kind", "name"), [("service", "wx-receiver"), ("deployment", "wx-publisher")])
def test_deleted_child_comes_back_while_traffic_flows(
    kube: KubeCluster, namespace: str, kubelet: Kubelet, operator: Operator, wx_pipeline: dict[str, Any],
    elasticsearch: SearchEngine, index_prefix: str, record_property: Callable[[str, object], None],
    kind: str, name: str,
) -> None:
    setup(kube, namespace, kubelet, wx_pipeline)
    uid = get_json(kube, kind, name, "-n", namespace)["metadata"]["uid"]
    pods_before = {c.uid for c in kubelet.containers()}
    with traffic(kube, namespace, kubelet) as sender:
        acked_before = len(sender.acked)
        kube.kubectl("delete", kind, name, "-n", namespace, "--wait=true")

        def recreated() -> bool:
            obj = maybe(kube, kind, name, "-n", namespace)
            return obj is not None and obj["metadata"]["uid"] != uid
        wait_until(recreated, READY_TIMEOUT, f"{kind} {name} recreated by the operator", 0.5)
        if kind == "deployment":
            # The garbage collector took the old publisher pod with it; traffic must reach a new one.
            wait_until(lambda: not {c.uid for c in kubelet.containers("publisher")} & pods_before, READY_TIMEOUT,
                       "the old publisher process gone")
        kubelet.wait_ready("receiver", 1, READY_TIMEOUT)
        kubelet.wait_ready("publisher", 1, READY_TIMEOUT)
        wait_until(lambda: pipeline_ready(kube, namespace), READY_TIMEOUT, "IngestPipeline Ready again")
        sender.wait_acked(50)
    replaced = sorted(c.pod for c in kubelet.containers() if c.uid not in pods_before)
    figures = report(sender, elasticsearch, index_prefix, record_property, deleted=f"{kind}/{name}",
                     acknowledged_before_delete=acked_before, pods_replaced=replaced)
    assert figures["missing"] == 0 and figures["duplicates"] == 0
