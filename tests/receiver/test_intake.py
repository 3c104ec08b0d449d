"""The receiver in-process on loopback, with a real LevelDB in tmp_path: answers, durability, refusals."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import plyvel
import pytest

from sluice_runtime.common.envelope import format_seq, make_envelope
from sluice_runtime.receiver import queue as queue_module
from sluice_runtime.receiver.queue import (
    COUNTED_KEY,
    NEXT_SEQ_KEY,
    OLD_COUNT_KEY,
    OLD_COUNTED_KEY,
    OLD_KEYS,
    OLD_NEXT_SEQ_KEY,
    MessageQueue,
    QueueFull,
)
from sluice_runtime.receiver.stored import message_key
from tests.receiver.support import delivered, eventually, publisher_settings, settings, status_of, stored_envelopes
from tests.support.inprocess import running_publisher, running_receiver

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


def stored(data_dir: Path) -> list[dict]:
    return [orjson.loads(envelope) for envelope in stored_envelopes(data_dir)]


async def test_single_message_is_stored_before_the_answer(tmp_path: Path) -> None:
    async with running_receiver(settings(tmp_path / "q")) as client:
        response = await client.post("/rx/dev1/temp/room/7", data=b'{"t": 21.5}', headers=JSON)
        assert response.status == 200
        answer = await response.json()
        assert answer["status"] == "OK"
        also = await client.post("/rxs/dev1/temp/x", data=b'{"t": 22}')  # alias, no Content-Type
        assert also.status == 200
        status = await (await client.get("/status")).json()
        assert status["backlog"] == 2
        assert status["ready"] is True
        assert status["inFlightBatches"] == 0
        assert status["lastForwardError"] is None
        assert status["oldestMessageAgeSeconds"] >= 0
    messages = stored(tmp_path / "q")
    first = messages[0]
    assert first["uuid"] == answer["uuid"]
    assert first["seq"] == answer["seq"] == "00000000000000000001"
    assert (first["producer"], first["key"], first["label"]) == ("dev1", "temp", "/room/7")
    assert first["payload"] == {"t": 21.5}
    assert first["time"].endswith("Z")


async def test_ndjson_is_stored_all_or_nothing(tmp_path: Path) -> None:
    async with running_receiver(settings(tmp_path / "q")) as client:
        lines = b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(500))
        response = await client.post("/rx/p/k/l", data=lines, headers=NDJSON)
        assert response.status == 200
        answer = await response.json()
        assert answer == {
            "status": "OK",
            "count": 500,
            "firstSeq": "00000000000000000001",
            "lastSeq": "00000000000000000500",
        }
        bad = lines + b'{"n": 500}\n{"n": oops}\n'
        refused = await client.post("/rx/p/k/l", data=bad, headers=NDJSON)
        assert refused.status == 400
        assert "line 502" in (await refused.json())["message"]
        assert (await (await client.get("/status")).json())["backlog"] == 500
    assert [m["payload"]["n"] for m in stored(tmp_path / "q")] == list(range(500))


async def test_concurrent_requests_share_group_commits(tmp_path: Path) -> None:
    async with running_receiver(settings(tmp_path / "q")) as client:
        responses = await asyncio.gather(*(client.post(f"/rx/p{n}/k/l", data=b'{"a":1}') for n in range(300)))
        assert {r.status for r in responses} == {200}
        seqs = sorted([(await r.json())["seq"] for r in responses])
        assert len(set(seqs)) == 300
        metrics = await (await client.get("/metrics")).text()
    commits = next(
        line for line in metrics.splitlines() if line.startswith("sluice_receiver_group_commit_messages_count ")
    )
    # 300 requests in far fewer fsyncs: the whole point of group commit.
    assert float(commits.split()[-1]) < 150
    assert "rxtx_total_messages_received_total 300.0" in metrics


async def test_seq_stays_monotonic_across_restarts_even_when_drained(tmp_path: Path) -> None:
    data = tmp_path / "q"
    async with running_publisher(publisher_settings(tmp_path / "out")) as publisher:
        config = settings(data, forwardUrl=str(publisher.make_url("/in")))
        async with running_receiver(config) as client:
            first = [(await (await client.post("/rx/p/k/l", data=b"{}")).json())["seq"] for _ in range(3)]

            async def drained() -> bool:
                return (await status_of(client))["backlog"] == 0

            await eventually(drained, what="the queue to drain")
    async with running_receiver(settings(data)) as client:
        assert (await status_of(client))["backlog"] == 0
        later = (await (await client.post("/rx/p/k/l", data=b"{}")).json())["seq"]
    assert first == sorted(first)
    assert later > first[-1]


async def test_backlog_survives_a_restart_with_or_without_the_stored_count(tmp_path: Path) -> None:
    data = tmp_path / "q"
    async with running_receiver(settings(data, queue={"maxMessages": 100})) as client:
        ndjson = {"Content-Type": "application/x-ndjson"}
        assert (await client.post("/rx/p/k/l", data=b"{}\n" * 40, headers=ndjson)).status == 200
    async with running_receiver(settings(data, queue={"maxMessages": 100})) as client:
        assert (await status_of(client))["backlog"] == 40
    # A queue written before the count was kept: the receiver counts the messages instead. Without the stored
    # next seq as well, it numbers on from the last message of the newest group (the 40 are one).
    db = plyvel.DB(str(data))
    db.delete(COUNTED_KEY, sync=True)
    db.delete(NEXT_SEQ_KEY, sync=True)
    db.close()
    async with running_receiver(settings(data, queue={"maxMessages": 100})) as client:
        assert (await status_of(client))["backlog"] == 40
        assert (await (await client.post("/rx/p/k/l", data=b"{}")).json())["seq"] == format_seq(41)
        # And the count it keeps from then on is right: 59 more fill the queue exactly.
        assert (await client.post("/rx/p/k/l", data=b"{}\n" * 59, headers=ndjson)).status == 200
        assert (await client.post("/rx/p/k/l", data=b"{}")).status == 503


async def test_a_queue_of_single_envelopes_from_an_earlier_version_is_forwarded(tmp_path: Path) -> None:
    # Earlier versions stored one envelope a key; those are read as groups of one, beside new groups.
    data, out = tmp_path / "q", tmp_path / "out"
    db = plyvel.DB(str(data), create_if_missing=True)
    for seq in range(1, 6):
        db.put(message_key(seq), orjson.dumps(make_envelope(seq, "p", "k", "/l", {"n": seq - 1})))
    db.put(OLD_NEXT_SEQ_KEY, (6).to_bytes(8, "big"))
    db.put(OLD_COUNT_KEY, (5).to_bytes(8, "big"))
    db.close()
    async with running_publisher(publisher_settings(out)) as publisher:
        # One batch in flight: with more, a later batch may be stored first, and the order below is the point.
        batch = {"maxMessages": 3, "maxWait": "1h", "maxInFlight": 1}
        config = settings(data, forwardUrl=str(publisher.make_url("/in")), batch=batch)
        async with running_receiver(config) as client:
            assert (await status_of(client))["backlog"] == 5
            ndjson = b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(5, 12))
            answer = await (await client.post("/rx/p/k/l", data=ndjson, headers=NDJSON)).json()
            assert answer["firstSeq"] == format_seq(6)

            async def drained() -> bool:
                return (await status_of(client))["backlog"] == 0

            await eventually(drained, what="the queue to drain")
        published = await status_of(publisher)
    assert [line["_source"]["rxtxMsg"]["payload"]["n"] for line in delivered(out)] == list(range(12))
    assert published["largestBatchSize"] <= 3


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "needle"),
    [
        ("/rx/p/k/l", b"{not json", JSON, 400, "not valid JSON"),
        ("/rx/p/k/l", b"[1,2,3]", JSON, 400, "must be a JSON object"),
        ("/rx/p/k/l", b"", JSON, 400, "empty"),
        ("/rx/p/k/l", b'{"a":"\xc3\x28"}', JSON, 400, "not valid UTF-8"),
        ("/rx/p/k/l", b'{"a":' * 70 + b"1" + b"}" * 70, JSON, 400, "nested deeper than 64"),
        ("/rx/p/k/l", b"{}", {"Content-Type": "text/html"}, 415, "not accepted"),
        ("/rx/p/k/l", b"<a/>", {"Content-Type": "application/xml"}, 415, "not accepted"),
        ("/rx/p/k/", b"{}", JSON, 400, "label must not be empty"),
        ("/rx/p/k", b"{}", JSON, 400, "label must not be empty"),
        ("/rx/p/k/a%00b", b"{}", JSON, 400, "control characters"),
        ("/rx/p/k/a%1Bb", b"{}", JSON, 400, "control characters"),
        ("/rx/" + "p" * 300 + "/k/l", b"{}", JSON, 400, "producer is longer"),
        ("/rx/p/" + "k" * 300 + "/l", b"{}", JSON, 400, "key is longer"),
    ],
)
async def test_bad_requests_get_a_clear_4xx_and_disturb_nothing(
    tmp_path: Path, path: str, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    async with running_receiver(settings(tmp_path / "q")) as client:
        good = await client.post("/rx/p/k/l", data=b'{"ok": 1}')
        response = await client.post(path, data=body, headers=headers)
        assert response.status == status
        answer = await response.json()
        assert answer["status"] == "FAIL"
        assert needle in answer["message"]
        after = await client.post("/rx/p/k/l", data=b'{"ok": 2}')
        assert (good.status, after.status) == (200, 200)
        status_now = await (await client.get("/status")).json()
        assert status_now["backlog"] == 2
        assert status_now["ready"]
        metrics = await (await client.get("/metrics")).text()
        assert "rxtx_msg_errors_total 1.0" in metrics


async def test_oversize_body_is_413(tmp_path: Path) -> None:
    async with running_receiver(settings(tmp_path / "q", maxBodyBytes=4096)) as client:
        big = b'{"a":"' + b"x" * 5000 + b'"}'
        response = await client.post("/rx/p/k/l", data=big, headers=JSON)
        assert response.status == 413
        assert "limit" in (await response.json())["message"]

        async def chunks():  # no Content-Length: the limit must hold while reading
            for _ in range(10):
                yield b"x" * 1000

        chunked = await client.post("/rx/p/k/l", data=chunks(), headers=JSON)
        assert chunked.status == 413
        assert (await client.post("/rx/p/k/l", data=b'{"small": true}')).status == 200


async def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    async with running_receiver(settings(tmp_path / "q", queue={"maxMessages": 5})) as client:
        answers = [(await client.post("/rx/p/k/l", data=b"{}")).status for _ in range(5)]
        full = await client.post("/rx/p/k/l", data=b"{}")
        assert answers == [200] * 5
        assert full.status == 503
        assert full.headers["Retry-After"] == "5"
        assert "at most 5" in (await full.json())["message"]
        ndjson = await client.post("/rx/p/k/l", data=b"{}\n{}\n", headers=NDJSON)
        assert ndjson.status == 503
        assert (await (await client.get("/status")).json())["backlog"] == 5


async def test_messages_being_committed_count_toward_the_limit(tmp_path: Path) -> None:
    # Found by the fault matrix (tests/faults): a request that arrived while a group commit was being written
    # did not count that commit's messages, so a busy receiver's queue ended above maxMessages.
    queue = MessageQueue(tmp_path / "q", max_messages=2)
    await queue.open()
    writing, release = threading.Event(), threading.Event()
    write = queue._apply

    def slow_write(*args: Any) -> Any:  # the fsync of a group commit, held open by the test
        writing.set()
        release.wait(10)
        return write(*args)

    queue._apply = slow_write  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(queue.append(queue.reserve(1), [b"{}"]))
        await asyncio.to_thread(writing.wait, 10)  # the first message is being written, not yet counted
        with pytest.raises(QueueFull):
            queue.reserve(2)  # 1 being written + 2 would be over the limit of 2
        second = queue.reserve(1)  # 1 + 1 fits
    finally:
        release.set()
    await first
    await queue.append(second, [b"{}"])
    assert queue.count == 2
    await queue.close()


async def test_the_oldest_message_age_follows_the_head_as_batches_are_removed(tmp_path: Path) -> None:
    # The head is looked up after every delete, from just past the last deleted key (LevelDB keeps the
    # tombstones of forwarded messages until a compaction, and stepping over them all was quadratic).
    times = ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z"]
    queue = MessageQueue(tmp_path / "q", max_messages=10)
    await queue.open()
    first = queue.reserve(len(times))
    await queue.append(first, [orjson.dumps({"time": time}) for time in times])
    heads = []
    for size in (1, 2, 1):
        claim = await queue.claim(size, 1 << 20)
        await queue.remove([claim])
        heads.append(queue.head_time)
    await queue.close()
    # Removing 1, then 2, then the last: the head is the 2nd message, then the 4th, then there is none.
    assert heads == [datetime.fromisoformat(times[1]).timestamp(), datetime.fromisoformat(times[3]).timestamp(), None]


async def test_drop_oldest_is_opt_in_and_counted(tmp_path: Path) -> None:
    config = settings(tmp_path / "q", queue={"maxMessages": 5, "whenFull": "dropOldest"})
    async with running_receiver(config) as client:
        for n in range(8):
            assert (await client.post("/rx/p/k/l", data=orjson.dumps({"n": n}))).status == 200
        status = await (await client.get("/status")).json()
        metrics = await (await client.get("/metrics")).text()
    assert status["backlog"] == 5
    assert status["dropped"] == 3
    assert "sluice_receiver_messages_dropped_total 3.0" in metrics
    assert [m["payload"]["n"] for m in stored(tmp_path / "q")] == [3, 4, 5, 6, 7]


async def test_drop_oldest_drops_a_request_whole_and_counts_every_message(tmp_path: Path) -> None:
    config = settings(tmp_path / "q", queue={"maxMessages": 5, "whenFull": "dropOldest"})
    async with running_receiver(config) as client:
        for first in (0, 3):
            ndjson = b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(first, first + 3))
            assert (await client.post("/rx/p/k/l", data=ndjson, headers=NDJSON)).status == 200
        status = await (await client.get("/status")).json()
        metrics = await (await client.get("/metrics")).text()
    # One message too many: the three of the first request are stored together, and go together.
    assert (status["backlog"], status["dropped"]) == (3, 3)
    assert "sluice_receiver_messages_dropped_total 3.0" in metrics
    assert [m["payload"]["n"] for m in stored(tmp_path / "q")] == [3, 4, 5]


async def test_bearer_tokens_from_a_file_that_is_reloaded(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# clients\nalpha\n\n")
    async with running_receiver(settings(tmp_path / "q", auth={"tokenFile": str(tokens)})) as client:
        missing = await client.post("/rx/p/k/l", data=b"{}")
        assert missing.status == 401
        assert "bearer token" in (await missing.json())["message"]
        assert (await client.post("/rx/p/k/l", data=b"{}", headers={"Authorization": "Bearer nope"})).status == 401
        assert (await client.post("/rx/p/k/l", data=b"{}", headers={"Authorization": "Bearer alpha"})).status == 200
        # The mounted Secret changes: the new token works, the old one stops working.
        tokens.write_text("beta\n")

        async def beta_accepted() -> bool:
            answer = await client.post("/rx/p/k/l", data=b"{}", headers={"Authorization": "Bearer beta"})
            return answer.status == 200

        await eventually(beta_accepted, what="the new token to be accepted")
        assert (await client.post("/rx/p/k/l", data=b"{}", headers={"Authorization": "Bearer alpha"})).status == 401
        assert (await client.get("/healthz")).status == 200  # probes need no token


async def test_cors_is_off_unless_configured(tmp_path: Path) -> None:
    async with running_receiver(settings(tmp_path / "a")) as client:
        response = await client.post("/rx/p/k/l", data=b"{}", headers={"Origin": "https://app.example"})
        assert "Access-Control-Allow-Origin" not in response.headers
    config = settings(tmp_path / "b", cors={"allowOrigins": ["https://app.example"]})
    async with running_receiver(config) as client:
        preflight = await client.options(
            "/rx/p/k/l", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        response = await client.post("/rx/p/k/l", data=b"{}", headers={"Origin": "https://app.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        other = await client.post("/rx/p/k/l", data=b"{}", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_observability_routes(tmp_path: Path) -> None:
    async with running_receiver(settings(tmp_path / "q")) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await (await client.get("/readyz")).json())["ready"] is True
        await client.post("/rx/p/k/l", data=b"{}")
        metrics = await (await client.get("/metrics")).text()
        for name in (
            "rxtx_total_messages_received_total",
            "rxtx_messages_in_queue 1.0",
            "rxtx_tx_batches_total",
            "rxtx_tx_fails_total",
            "rxtx_db_errors_total",
            "rxtx_msg_errors_total",
            "rxtx_response_time_count",
            "sluice_receiver_oldest_message_age_seconds",
            "sluice_receiver_ack_latency_seconds_bucket",
            "sluice_receiver_group_commit_messages_bucket",
        ):
            assert name in metrics, name


async def test_a_damaged_log_does_not_keep_the_queue_from_opening(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "q"
    async with running_receiver(settings(data)) as client:
        for n in range(20):
            assert (await client.post("/rx/p/k/l", data=orjson.dumps({"n": n, "pad": "x" * 2000}))).status == 200
    log_file = max(data.glob("*.log"), key=lambda path: path.stat().st_size)
    raw = bytearray(log_file.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = b"\xde\xad" * 32  # a torn sector in the middle of the write-ahead log
    log_file.write_bytes(bytes(raw))
    async with running_receiver(settings(data)) as client:
        status = await (await client.get("/status")).json()
        assert status["ready"] is True
        assert 0 < status["backlog"] < 20
        answer = await client.post("/rx/p/k/l", data=b"{}")
        assert answer.status == 200
        assert int((await answer.json())["seq"]) > 20
    assert "queue database damaged" in caplog.text


async def test_a_stalled_body_gets_408_and_frees_the_connection(tmp_path: Path) -> None:
    config = settings(tmp_path / "q", bodyTimeout="300ms")
    async with running_receiver(config) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        # Headers promise 100 bytes; only 10 come, and then nothing.
        writer.write(
            b"POST /rx/p/k/l HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"a": 1, "'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert (await status_of(client))["backlog"] == 0


# Run in a child process that the test then kills: whatever it committed is all that survives. It stores two
# requests (4 and 6 messages) and, when told to, acknowledges the first.
_STORE_THEN_DIE = """
import asyncio, sys
from pathlib import Path
from sluice_runtime.receiver.queue import MessageQueue

async def main() -> None:
    queue = MessageQueue(Path(sys.argv[1]), max_messages=100, group_messages=250)
    await queue.open()
    for count in (4, 6):
        await queue.append(queue.reserve(count), [b'{"n":%d}' % n for n in range(count)])
    if sys.argv[2] == "acknowledge":
        await queue.remove([await queue.claim(4, 1 << 20)])
    print(queue.count, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def store_then_die(data: Path, acknowledge: bool) -> int:
    """The count the child reported just before it was killed."""
    mode = "acknowledge" if acknowledge else "store"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _STORE_THEN_DIE, str(data), mode, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    count = int(await child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    await child.wait()
    return count


async def test_acknowledged_messages_leave_the_count_at_once_and_the_disk_in_bulk(tmp_path: Path) -> None:
    queue = MessageQueue(tmp_path / "q", max_messages=100, group_messages=250)
    await queue.open()
    for count in (4, 6):
        await queue.append(queue.reserve(count), [b'{"n":%d}' % n for n in range(count)])
    await queue.remove([await queue.claim(4, 1 << 20)])
    assert queue.count == 6
    await queue.remove([await queue.claim(6, 1 << 20)])
    assert queue.count == 0
    await queue.append(queue.reserve(2), [b'{"n":0}', b'{"n":1}'])
    await queue.close()
    # Once the queue emptied, all 10 acknowledged messages were deleted in one write.
    assert len(stored_envelopes(tmp_path / "q")) == 2


async def test_a_crash_before_the_bulk_delete_sends_the_acknowledged_messages_again(tmp_path: Path) -> None:
    data = tmp_path / "q"
    assert await store_then_die(data, acknowledge=True) == 6  # 4 of the 10 acknowledged
    assert len(stored_envelopes(data)) == 10
    queue = MessageQueue(data, max_messages=100, group_messages=250)
    await queue.open()
    # Never lost: the 4 come back and go again (their _id makes the repeat harmless); the count is exact.
    assert queue.count == 10
    assert queue.next_seq == 11
    await queue.remove([await queue.claim(100, 1 << 20)])
    assert queue.count == 0
    await queue.close()
    assert stored_envelopes(data) == []


async def test_acknowledged_messages_are_deleted_once_they_hold_enough_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "DELETE_BATCH_BYTES", 20)
    queue = MessageQueue(tmp_path / "q", max_messages=100)
    await queue.open()
    await queue.append(queue.reserve(5), [b'{"n":%d}' % n for n in range(5)])
    await queue.remove([await queue.claim(2, 1 << 20)])  # 14 bytes: kept
    await queue.remove([await queue.claim(1, 1 << 20)])  # 21 bytes: deleted with the next commit
    await queue.append(queue.reserve(1), [b'{"n":5}'])
    assert queue.count == 3
    # A crash now would resend nothing: the count stored with the deletes is exact for what stays.
    await asyncio.get_running_loop().run_in_executor(queue._executor, queue._close_db)
    reopened = MessageQueue(tmp_path / "q", max_messages=100)
    await reopened.open()
    assert reopened.count == 3
    await reopened.close()
    assert [orjson.loads(envelope)["n"] for envelope in stored_envelopes(tmp_path / "q")] == [3, 4, 5]


@pytest.mark.parametrize(
    "bookkeeping",
    [
        # Earlier versions updated the exact count with every write, which this one does not with appends.
        {OLD_COUNT_KEY: (5).to_bytes(8, "big")},
        # Later ones kept the count as of a seq (2 messages before seq 3, and 3 from it), under other keys.
        {OLD_COUNTED_KEY: (2).to_bytes(8, "big") + (3).to_bytes(8, "big")},
    ],
    ids=["exact count", "count as of a seq"],
)
async def test_a_queue_counted_by_an_earlier_version_keeps_its_count_through_a_crash(
    tmp_path: Path, bookkeeping: dict[bytes, bytes]
) -> None:
    # This version re-stores the count its own way as soon as it opens such a queue.
    data = tmp_path / "q"
    db = plyvel.DB(str(data), create_if_missing=True)
    for seq in range(1, 6):
        db.put(message_key(seq), orjson.dumps(make_envelope(seq, "p", "k", "/l", {"n": seq})))
    db.put(OLD_NEXT_SEQ_KEY, (6).to_bytes(8, "big"))
    for key, value in bookkeeping.items():
        db.put(key, value)
    db.close()
    assert await store_then_die(data, acknowledge=False) == 15
    queue = MessageQueue(data, max_messages=100)
    await queue.open()
    assert queue.count == 15
    assert queue.next_seq == 16
    await queue.close()
    db = plyvel.DB(str(data))
    assert [key for key in OLD_KEYS if db.get(key) is not None] == []
    db.close()
