"""The forwarder against the real publisher on loopback: batching, retries, the in-flight window, resume.

What arrived is read where a user would look for it: the publisher's NDJSON output (one line per
document, in arrival order), its ``/status`` and ``/metrics``, or the search engine behind it. Faults
are real: a publisher whose engine is down, a publisher that is gone, a publisher that refuses a batch
as too large, an engine that has stopped answering.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.receiver.support import (
    delivered,
    delivered_ids,
    delivered_payloads,
    eventually,
    frozen,
    publisher_settings,
    settings,
    status_of,
    stored_envelopes,
)
from tests.support.engines import SearchEngine, call
from tests.support.inprocess import running_publisher, running_receiver
from tests.support.observe import metric_sum
from tests.support.procs import free_port

NDJSON = {"Content-Type": "application/x-ndjson"}


def lines(count: int, start: int = 0, pad: int = 0) -> bytes:
    return b"".join(orjson.dumps({"n": n, "pad": "x" * pad}) + b"\n" for n in range(start, start + count))


def url_of(server: TestClient | int) -> str:
    port = server if isinstance(server, int) else server.port
    return f"http://127.0.0.1:{port}"


async def drain(client: TestClient) -> None:
    async def drained() -> bool:
        return (await status_of(client))["backlog"] == 0

    await eventually(drained, what="the receiver's queue to drain")


# A request's messages are stored in groups of at most 250, and a batch takes whole groups: 300 is no multiple of
# 250, and groups of 150 fill its batches all the same.
@pytest.mark.parametrize(("batch_size", "request_size", "requests"), [(500, 1000, 10), (300, 900, 3)])
async def test_backlog_goes_back_to_back_in_order_in_full_batches(
    tmp_path: Path, batch_size: int, request_size: int, requests: int
) -> None:
    out, total = tmp_path / "out", request_size * requests
    async with running_publisher(publisher_settings(out)) as publisher:
        # maxWait is an hour: draining at all shows that a backlog never waits for it. One batch in flight:
        # with more, a later batch may land before an earlier one (the queue still deletes in order).
        batch = {"maxMessages": batch_size, "maxWait": "1h", "maxInFlight": 1}
        async with running_receiver(settings(tmp_path / "q", forwardUrl=url_of(publisher), batch=batch)) as client:
            for chunk in range(requests):
                body = lines(request_size, chunk * request_size)
                assert (await client.post("/rx/p/k/l", data=body, headers=NDJSON)).status == 200
            await drain(client)
            claimed = (await status_of(client))["batchesClaimed"]
        published = await status_of(publisher)
        metrics = await (await publisher.get("/metrics")).text()
    assert [payload["n"] for payload in delivered_payloads(out)] == list(range(total))
    assert claimed["maxWait"] == 0
    # As many batches as full ones would make, none larger than the limit: every one of them full.
    assert published["batches"]["ok"] == total // batch_size
    assert published["largestBatchSize"] == published["lastBatchSize"] == batch_size
    assert published["documents"]["indexed"] == total
    assert metric_sum(metrics, "sluice_publisher_batch_documents_bucket", le="100.0") == 0
    assert metric_sum(metrics, "sluice_publisher_batch_documents_bucket", le="500.0") == total // batch_size
    assert metric_sum(metrics, "sluice_publisher_batch_documents_sum") == total


async def test_a_partial_batch_goes_whole_once_max_wait_has_passed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with running_publisher(publisher_settings(out)) as publisher:
        batch = {"maxMessages": 100, "maxWait": "700ms"}
        async with running_receiver(settings(tmp_path / "q", forwardUrl=url_of(publisher), batch=batch)) as client:

            def arrived(count: int) -> Any:
                async def check() -> bool:
                    return len(delivered(out)) >= count

                return check

            assert (await client.post("/rx/p/k/l", data=b'{"n": 0}')).status == 200
            await eventually(arrived(1), what="the first message")
            assert (await client.post("/rx/p/k/l", data=lines(3, start=1), headers=NDJSON)).status == 200
            # Far fewer than maxMessages: they go only because maxWait passed, and then all together.
            await eventually(arrived(4), what="the partial batch")
            status = await status_of(client)
        published = await status_of(publisher)
    assert [payload["n"] for payload in delivered_payloads(out)] == [0, 1, 2, 3]
    assert published["batches"]["ok"] == 2
    assert (published["lastBatchSize"], published["largestBatchSize"]) == (3, 3)
    # The first message went at once (nothing was waiting before it); the three waited for company.
    assert status["batchesClaimed"] == {"full": 0, "backlog": 1, "maxWait": 1}


async def test_byte_cap_bounds_a_batch(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with running_publisher(publisher_settings(out)) as publisher:
        batch = {"maxMessages": 1000, "maxBytes": 4096}
        async with running_receiver(settings(tmp_path / "q", forwardUrl=url_of(publisher), batch=batch)) as client:
            assert (await client.post("/rx/p/k/l", data=lines(50, pad=500), headers=NDJSON)).status == 200
            await drain(client)
        published = await status_of(publisher)
    # The publisher writes each envelope back as the receiver stored it (see the resume test below).
    sizes = [len(orjson.dumps(line["_source"]["rxtxMsg"])) for line in delivered(out)]
    assert len(sizes) == published["documents"]["indexed"] == 50
    fits = 4096 // min(sizes)
    assert 1 < published["largestBatchSize"] <= fits
    assert published["batches"]["ok"] >= math.ceil(50 / fits)


async def test_retries_honour_retry_after_then_back_off_and_resend_the_same_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, port = tmp_path / "out", free_port()
    # A publisher whose engine is down answers 503 with Retry-After (here 1 s).
    engine_down = publisher_settings(out, elasticsearch={"url": url_of(free_port()), "retryAfter": 1})
    batch = {"retryInitial": "50ms", "retryMax": "200ms"}
    caplog.set_level(logging.WARNING, logger="sluice.publisher")
    async with running_receiver(settings(tmp_path / "q", forwardUrl=url_of(port), batch=batch)) as client:

        def failures(count: int) -> Any:
            async def check() -> bool:
                metrics = await (await client.get("/metrics")).text()
                return metric_sum(metrics, "rxtx_tx_fails_total") >= count

            return check

        async with running_publisher(engine_down, port) as publisher:
            assert (await client.post("/rx/p/k/l", data=b'{"a": 1}')).status == 200
            await eventually(failures(2), what="two refusals")
            status = await status_of(client)
            refused = (await status_of(publisher))["batches"]
        assert "HTTP 503" in status["lastForwardError"]
        assert "cannot connect" in status["lastForwardError"]
        assert (status["backlog"], status["inFlightBatches"]) == (1, 1)
        assert status["lastRetryDelaySeconds"] >= 1.0  # the publisher's Retry-After, not the 200 ms backoff
        assert refused["ok"] == 0 and refused["unavailable"] >= 2
        # Every refusal the publisher logged was of one and the same batch.
        refused_batches = set(re.findall(r"batch (\S+) not stored", caplog.text))
        assert len(refused_batches) == 1

        # The publisher is gone (connection refused): no Retry-After, so the short backoff applies again.
        async def connection_refused() -> bool:
            error = (await status_of(client))["lastForwardError"]
            return "HTTP 503" not in error

        await eventually(connection_refused, what="a connection error")
        assert (await status_of(client))["lastRetryDelaySeconds"] <= 0.2

        async with running_publisher(publisher_settings(out), port) as publisher:  # back, writing files
            await drain(client)
            published = await status_of(publisher)
        metrics = await (await client.get("/metrics")).text()
    assert published["batches"]["ok"] == 1
    assert [line["_source"]["rxtxMsg"]["payload"] for line in delivered(out)] == [{"a": 1}]
    assert metric_sum(metrics, "rxtx_tx_batches_total") == 1
    assert metric_sum(metrics, "rxtx_tx_fails_total") >= 3
    assert metric_sum(metrics, "sluice_receiver_retry_delay_seconds") > 0


@pytest.mark.engines
async def test_in_flight_window_is_never_exceeded(tmp_path: Path, elasticsearch: SearchEngine) -> None:
    name = f"rx{uuid.uuid4().hex[:10]}"
    index = {"url": elasticsearch.url, "index": f"{name}-%{{+yyyy.MM}}"}
    batch = {"maxMessages": 10, "maxInFlight": 3}
    receiver_samples: list[dict[str, Any]] = []
    publisher_samples: list[dict[str, Any]] = []
    async with (
        running_publisher(publisher_settings(tmp_path / "out", elasticsearch=index)) as publisher,
        running_receiver(settings(tmp_path / "q", forwardUrl=url_of(publisher), batch=batch)) as client,
    ):

        async def sample() -> bool:
            receiver_samples.append(await status_of(client))
            publisher_samples.append(await status_of(publisher))
            return publisher_samples[-1]["inFlightBatches"] == 3

        # The engine stops answering: the publisher holds every batch it gets, so the window fills up.
        with frozen(elasticsearch):
            assert (await client.post("/rx/p/k/l", data=lines(100), headers=NDJSON)).status == 200
            await eventually(sample, what="the publisher to hold three batches")
            for _ in range(25):  # and it stays at three while they are held
                await sample()
        await drain(client)
        final = await status_of(publisher)
    assert max(status["inFlightBatches"] for status in receiver_samples) == 3
    assert all(status["backlog"] == 100 for status in receiver_samples)  # nothing deleted before its answer
    assert all(status["inFlightBatches"] == 3 for status in publisher_samples[-25:])
    assert final["maxConcurrentBatches"] == 3
    assert (final["batches"]["ok"], final["documents"]["indexed"]) == (10, 100)
    call(elasticsearch, "POST", f"/{name}-*/_refresh")
    status, found = call(elasticsearch, "POST", f"/{name}-*/_search?size=200", {"_source": ["rxtxMsg.payload.n"]})
    assert status == 200, found
    numbers = sorted(hit["_source"]["rxtxMsg"]["payload"]["n"] for hit in found["hits"]["hits"])
    assert numbers == list(range(100))


async def test_a_later_batch_acknowledged_first_is_kept_until_the_head_is(tmp_path: Path) -> None:
    out, port = tmp_path / "out", free_port()
    # The first batch (with one large message) is over this publisher's request limit: it is refused with
    # 413 until an operator raises the limit, while the batches after it are accepted at once.
    too_small = publisher_settings(out, maxRequestBytes=8192)
    body = lines(1, pad=20_000) + lines(29, start=1)
    batch = {"maxMessages": 10, "maxWait": "100ms", "maxInFlight": 4, "retryInitial": "50ms", "retryMax": "200ms"}
    async with running_receiver(settings(tmp_path / "q", forwardUrl=url_of(port), batch=batch)) as client:

        def forwarded(count: int) -> Any:
            async def check() -> bool:
                status = await status_of(client)
                return status["batchesForwarded"] == count and "HTTP 413" in (status["lastForwardError"] or "")

            return check

        async with running_publisher(too_small, port) as publisher:
            assert (await client.post("/rx/p/k/l", data=body, headers=NDJSON)).status == 200
            await eventually(forwarded(2), what="the two later batches to be acknowledged")
            # One more message: the forwarder wakes up, sends it, and has acknowledgements to act on.
            assert (await client.post("/rx/p/k/l", data=b'{"n": 30}')).status == 200
            await eventually(forwarded(3), what="the batch after them to be acknowledged")
            status = await status_of(client)
            published = await status_of(publisher)
        # Deleting them now would leave a hole in front of the unacknowledged head.
        assert status["backlog"] == 31
        assert status["inFlightBatches"] == 1
        assert published["batches"]["ok"] == 3
        assert sorted(payload["n"] for payload in delivered_payloads(out)) == list(range(10, 31))

        async with running_publisher(publisher_settings(out), port):  # restarted with the default limit
            await drain(client)
    numbers = [payload["n"] for payload in delivered_payloads(out)]
    assert sorted(numbers[:21]) == list(range(10, 31))
    assert numbers[21:] == list(range(10))  # the head came last, and nothing went twice


async def test_resume_after_restart_sends_the_stored_bytes(tmp_path: Path) -> None:
    data, out = tmp_path / "q", tmp_path / "out"
    async with running_receiver(settings(data)) as client:  # no forwardUrl: queue only
        for n in range(20):
            assert (await client.post("/rx/p/k/l", data=orjson.dumps({"n": n, "f": 1.10}))).status == 200
    stored = stored_envelopes(data)
    assert len(stored) == 20
    async with (
        running_publisher(publisher_settings(out)) as publisher,
        running_receiver(settings(data, forwardUrl=url_of(publisher))) as client,
    ):
        await drain(client)
    # The same envelopes, in order: uuid, seq, time and payload as stored, not made again.
    assert [orjson.dumps(line["_source"]["rxtxMsg"]) for line in delivered(out)] == stored
    assert delivered_ids(out) == [orjson.loads(value)["uuid"] for value in stored]
