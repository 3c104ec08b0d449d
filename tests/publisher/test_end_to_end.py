"""rxtx-shaped traffic end to end with real processes on loopback: receiver -> publisher -> engine, and the
one-hop ``sluice run`` (receiver and publisher in one process) -> engine."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.publisher.test_indexing import WX_FIELDS, stored_ids
from tests.receiver.support import publisher_process, receiver_process, run_process, services
from tests.support.engines import SearchEngine, call
from tests.support.observe import metric_sum
from tests.support.procs import free_port, wait_until

pytestmark = pytest.mark.engines


def post_reading(receiver_base: str, station: str, payload: dict) -> str:
    """What a device does: one curl-shaped POST, and the uuid from the answer."""
    request = urllib.request.Request(
        f"{receiver_base}/rx/{station}/weather/roof",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return str(json.loads(response.read())["uuid"])


def test_messages_flow_from_receiver_to_engine_once(search_engine: SearchEngine, tmp_path: Path) -> None:
    name = f"e{uuid.uuid4().hex[:10]}"
    publisher = publisher_process(
        tmp_path / "out", tmp_path / "publisher.log",
        "--es-url", search_engine.url, "--index", f"{name}-%{{+yyyy.MM}}",
        "--fields", str(WX_FIELDS), "--template-name", name,
    )  # fmt: skip
    receiver = receiver_process(tmp_path / "q", tmp_path / "receiver.log", f"{publisher.base}/in")
    with services(publisher.start(), receiver.start()):
        sent = [
            post_reading(receiver.base, f"station-{n % 3}", {"latitude": 47.5, "offset": n % 100, "n": n})
            for n in range(60)
        ]

        def all_searchable() -> bool:
            return len(stored_ids(search_engine, f"{name}-*")) == len(sent)

        wait_until(all_searchable, 60, "every acknowledged message searchable")
    assert sorted(stored_ids(search_engine, f"{name}-*")) == sorted(sent)
    status, mapping = call(search_engine, "GET", f"/{name}-*/_mapping")
    assert status == 200
    (index_mapping,) = mapping.values()
    payload = index_mapping["mappings"]["properties"]["rxtxMsg"]["properties"]["payload"]["properties"]
    assert payload["latitude"]["type"] == "half_float"
    assert payload["offset"]["type"] == "byte"


def post_ndjson(receiver_base: str, lines: list[dict]) -> None:
    request = urllib.request.Request(
        f"{receiver_base}/rx/gateway/weather/batch",
        data=b"\n".join(json.dumps(line).encode() for line in lines),
        method="POST",
        headers={"Content-Type": "application/x-ndjson"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_one_hop_run_indexes_straight_into_the_engine(search_engine: SearchEngine, tmp_path: Path) -> None:
    name = f"h{uuid.uuid4().hex[:10]}"
    run = run_process(
        tmp_path / "q", tmp_path / "run.log",
        "--es-url", search_engine.url, "--index", f"{name}-%{{+yyyy.MM}}",
        "--fields", str(WX_FIELDS), "--template-name", name, "--batch-max-wait", "0.2",
    )  # fmt: skip
    with services(run.start()):
        sent = [post_reading(run.base, "station-1", {"latitude": 47.5, "offset": n}) for n in range(30)]
        post_ndjson(run.base, [{"latitude": 46.9, "offset": n} for n in range(40)])

        def all_searchable() -> bool:
            return len(stored_ids(search_engine, f"{name}-*")) == 70

        wait_until(all_searchable, 60, "every acknowledged message searchable")
        wait_until(lambda: run.status()["backlog"] == 0, 30, "the queue emptied once the engine acknowledged")
        status = run.status()
        metrics = urllib.request.urlopen(f"{run.base}/metrics", timeout=5).read().decode()
    assert set(sent) <= set(stored_ids(search_engine, f"{name}-*"))
    # The publisher reports through the receiver: there is no second listener to ask.
    assert status["forwardUrl"] == "in-process publisher"
    assert status["publisher"]["ready"] is True
    assert status["publisher"]["documents"] == {"indexed": 70, "duplicates": 0, "deadLettered": 0}
    assert status["publisher"]["indexTemplate"]["name"] == name
    assert metric_sum(metrics, "sluice_publisher_documents_total", result="indexed") == 70
    assert metric_sum(metrics, "sluice_receiver_messages_forwarded_total") == 70
    status_code, mapping = call(search_engine, "GET", f"/{name}-*/_mapping")
    assert status_code == 200
    (index_mapping,) = mapping.values()
    payload = index_mapping["mappings"]["properties"]["rxtxMsg"]["properties"]["payload"]["properties"]
    assert payload["latitude"]["type"] == "half_float"


def test_one_hop_run_keeps_messages_while_the_engine_is_unreachable(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    run = run_process(tmp_path / "q", tmp_path / "run.log", "--es-url", nowhere, "--batch-max-wait", "0.1")
    with services(run.start()):
        uuid_sent = post_reading(run.base, "station-1", {"latitude": 47.5})

        def retried() -> bool:
            return run.status()["lastForwardError"] is not None

        wait_until(retried, 30, "the batch was refused and is being retried")
        status = run.status()
    assert uuid_sent
    assert status["backlog"] == 1  # acknowledged, so kept until the engine takes it
    assert f"not stored: cannot connect to {nowhere}" in status["lastForwardError"]
    assert status["publisher"]["batches"]["unavailable"] >= 1
    assert status["lastRetryDelaySeconds"] >= 5  # the publisher's Retry-After, as over the wire
