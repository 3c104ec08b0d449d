"""Receiver → publisher → Elasticsearch, with kill -9 of the receiver under load: every acknowledged message is
indexed exactly once (the envelope uuid is the ``_id``, so a resent message lands on itself)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.receiver.support import LoadResult, crash_under_load, publisher_process, receiver_process, services
from tests.support.engines import SearchEngine, indexed_ids
from tests.support.procs import wait_until

pytestmark = pytest.mark.engines


async def test_kill_9_under_load_indexes_every_acknowledged_message_once(
    tmp_path: Path, elasticsearch: SearchEngine
) -> None:
    name = f"rx{uuid.uuid4().hex[:10]}"
    publisher = publisher_process(
        tmp_path / "out", tmp_path / "publisher.log", "--es-url", elasticsearch.url, "--index", f"{name}-%{{+yyyy.MM}}"
    )
    receiver = receiver_process(tmp_path / "q", tmp_path / "receiver.log", publisher.base, "--batch-max-wait", "200ms")
    result = LoadResult()
    with services(receiver, publisher):
        publisher.start(timeout=60)
        receiver.start()
        await crash_under_load(receiver, result, cycles=4, acks_per_cycle=300)
        wait_until(lambda: receiver.status()["backlog"] == 0, 90, "drain into Elasticsearch")

    indexed = indexed_ids(elasticsearch, f"{name}-*")
    assert len(result.acked) > 600
    assert not set(result.acked) - set(indexed), "acknowledged messages missing from the index"
    assert len(indexed) == len(set(indexed))  # exactly once
    # Anything indexed beyond the acknowledged ones was stored just before a kill, before its answer went out.
    assert len(indexed) - len(result.acked) <= 4 * 20
