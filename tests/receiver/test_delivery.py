"""Real processes on loopback: `sluice receiver` forwarding to `sluice publisher` (file output), an outage of the
publisher, kill -9 of the receiver under load, and a crash while the publisher holds a batch. Every acknowledged
message must arrive, with its envelope."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.receiver.support import (
    LoadResult,
    Service,
    crash_under_load,
    delivered,
    delivered_ids,
    delivered_sources,
    eventually,
    frozen,
    post_load,
    publisher_process,
    publisher_settings,
    receiver_process,
    services,
    status_of,
    stored_envelopes,
)
from tests.support.engines import SearchEngine, call
from tests.support.inprocess import running_publisher
from tests.support.procs import free_port, wait_until


async def post_many(base: str, count: int) -> tuple[dict[str, str], Counter[int]]:
    """POST ``count`` single messages, 10 at a time; returns the acknowledged uuid→seq and the status counts."""
    acked: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            async with session.post(f"{base}/rx/dev/k/l", json={"n": n}) as response:
                statuses[response.status] += 1
                if response.status == 200:
                    answer = await response.json()
                    acked[answer["uuid"]] = answer["seq"]

        for start in range(0, count, 10):
            await asyncio.gather(*(one(n) for n in range(start, min(count, start + 10))))
    return acked, statuses


def drained(receiver: Service) -> bool:
    return receiver.status()["backlog"] == 0


async def test_publisher_outage_fills_the_queue_then_everything_drains_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publisher = publisher_process(out, tmp_path / "publisher.log")
    receiver = receiver_process(
        tmp_path / "q",
        tmp_path / "receiver.log",
        publisher.base,
        "--max-queue", "300",
        "--batch-max-messages", "50",
        "--batch-max-wait", "200ms",
        "--batch-max-in-flight", "1",
    )  # fmt: skip
    with services(receiver, publisher):
        publisher.start()
        receiver.start()
        before, statuses = await post_many(receiver.base, 100)
        assert statuses == Counter({200: 100})
        wait_until(lambda: drained(receiver), 20, "first drain")

        publisher.process.stop()  # the publisher goes away
        during, statuses = await post_many(receiver.base, 400)
        assert statuses[200] == 300  # the queue fills to maxMessages...
        assert statuses[503] == 100  # ...and then refuses, rather than dropping anything
        status = receiver.status()
        assert status["backlog"] == 300
        wait_until(lambda: receiver.status()["lastForwardError"] is not None, 10, "a forward error")

        publisher.start()  # back again: the backlog drains
        wait_until(lambda: drained(receiver), 60, "drain after the outage")
        assert receiver.status()["lastForwardError"] is not None  # kept for the operator to see

    ids = delivered_ids(out)
    acked = {**before, **during}
    assert set(ids) == set(acked)
    assert len(ids) == len(set(ids)) == 400  # nothing twice
    sources = delivered_sources(out)
    seqs = [int(acked[uuid]) for uuid in ids]
    assert seqs == sorted(seqs)  # in order, with one batch in flight
    assert all(len(copies) == 1 for copies in sources.values())


async def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    out = tmp_path / "out"
    publisher = publisher_process(out, tmp_path / "publisher.log")
    data = tmp_path / "q"
    receiver = receiver_process(data, tmp_path / "receiver.log", publisher.base, "--batch-max-wait", "200ms")
    result = LoadResult()
    cycles = 10
    with services(receiver, publisher):
        publisher.start()
        receiver.start()
        seqs_at_restart = await crash_under_load(receiver, result, cycles, acks_per_cycle=200)
        wait_until(lambda: drained(receiver), 60, "final drain")
        final_status = receiver.status()

    acked = result.acked
    ids = delivered_ids(out)
    missing = set(acked) - set(ids)
    assert len(acked) > cycles * 100
    assert not missing, f"{len(missing)} acknowledged messages never delivered"
    # A message may go twice after a crash (at-least-once into files), but always as the same envelope.
    sources = delivered_sources(out)
    assert all(len(set(copies)) == 1 for copies in sources.values())
    # seq keeps rising across every restart, and no seq was handed out twice.
    assert seqs_at_restart == sorted(seqs_at_restart)
    assert len(set(acked.values())) == len(acked)
    assert final_status["backlog"] == 0
    duplicates = len(ids) - len(set(ids))
    print(f"kill -9 x{cycles}: {len(acked)} acknowledged, 0 missing, {duplicates} re-sent copies")


async def test_sigterm_under_load_answers_in_flight_requests_and_keeps_them(tmp_path: Path) -> None:
    data = tmp_path / "q"
    receiver = receiver_process(data, tmp_path / "receiver.log", None)
    result = LoadResult()
    with services(receiver):
        receiver.start()
        stop = asyncio.Event()
        load = asyncio.create_task(post_load(receiver.base, stop, result, connections=20))
        await result.until_acked(500)
        await asyncio.to_thread(receiver.process.stop, 20)
        stop.set()
        await load
        assert receiver.process.proc is not None
        assert receiver.process.proc.returncode == 0
    assert "receiver stopped" in (tmp_path / "receiver.log").read_text()
    stored = {orjson.loads(value)["uuid"] for value in stored_envelopes(data)}
    assert set(result.acked) <= stored


@pytest.mark.engines
async def test_a_batch_cut_off_by_a_crash_is_resent_with_identical_envelopes(
    tmp_path: Path, elasticsearch: SearchEngine
) -> None:
    # The publisher has the whole batch, but its engine has stopped answering; the receiver dies before the
    # answer. The engine comes back and stores the batch. After the restart the receiver sends the same
    # messages again (here to a publisher writing files), and each copy must be the very same envelope.
    name, port, data, out = f"rx{uuid.uuid4().hex[:10]}", free_port(), tmp_path / "q", tmp_path / "out"
    index = {"url": elasticsearch.url, "index": f"{name}-%{{+yyyy.MM}}"}
    forward_url = f"http://127.0.0.1:{port}"
    receiver = receiver_process(data, tmp_path / "receiver.log", forward_url, "--batch-max-wait", "100ms")
    with services(receiver):
        async with running_publisher(publisher_settings(out, elasticsearch=index), port) as publisher:
            await asyncio.to_thread(receiver.start)
            with frozen(elasticsearch):
                async with aiohttp.ClientSession() as session:
                    body = b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(50))
                    headers = {"Content-Type": "application/x-ndjson"}
                    async with session.post(f"{receiver.base}/rx/p/k/l", data=body, headers=headers) as response:
                        assert response.status == 200

                async def publisher_has_the_batch() -> bool:
                    return (await status_of(publisher))["inFlightBatches"] == 1

                await eventually(publisher_has_the_batch, what="the batch to reach the publisher")
                await asyncio.to_thread(receiver.process.kill)

            async def stored_in_the_engine() -> bool:
                return (await status_of(publisher))["documents"]["indexed"] == 50

            await eventually(stored_in_the_engine, what="the publisher to store the batch it can no longer answer")
        # What the dead receiver kept, because it never heard that the batch was stored.
        kept = stored_envelopes(data)
        async with running_publisher(publisher_settings(out), port) as publisher:
            await asyncio.to_thread(receiver.start)
            await asyncio.to_thread(wait_until, lambda: drained(receiver), 20, "drain after restart")
            resent = (await status_of(publisher))["documents"]["indexed"]

    call(elasticsearch, "POST", f"/{name}-*/_refresh")
    status, found = call(elasticsearch, "POST", f"/{name}-*/_search?size=100")
    assert status == 200, found
    first_copies = {orjson.dumps(hit["_source"]["rxtxMsg"]) for hit in found["hits"]["hits"]}
    second_copies = [orjson.dumps(line["_source"]["rxtxMsg"]) for line in delivered(out)]
    assert len(kept) == len(first_copies) == resent == 50  # every message really was sent twice
    assert set(second_copies) == first_copies == set(kept)  # ...as the same envelopes (uuid, seq, time, payload)
    assert second_copies == kept  # the resend is the stored bytes, in order
