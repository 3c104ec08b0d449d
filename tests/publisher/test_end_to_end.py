"""rxtx-shaped traffic end to end with real processes on loopback: receiver -> publisher -> engine."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.publisher.test_indexing import WX_FIELDS, stored_ids
from tests.receiver.support import publisher_process, receiver_process, services
from tests.support.engines import SearchEngine, call
from tests.support.procs import wait_until

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
