"""Issue 8's runtime fault rows, against the real Elasticsearch: kill -9 of a receiver (20 cycles) and of the
publisher under load, Elasticsearch stopped under load, and a receiver volume that runs full.

Each row reports sent / acknowledged / indexed / duplicates (print and ``record_property``). The envelope uuid is
the document ``_id``, so "exactly once" is checked by ``_id`` across the pipeline's indices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.support import Figures, Pipeline, SmallVolume, es_pipeline, polled
from tests.receiver.support import LoadResult, crash_under_load, post_load
from tests.support.engines import SearchEngine

pytestmark = pytest.mark.engines

RecordProperty = Callable[[str, object], None]
CONNECTIONS = 20


async def test_kill_9_a_receiver_under_load_20_cycles(
    tmp_path: Path, elasticsearch: SearchEngine, record_property: RecordProperty
) -> None:
    load = LoadResult()
    cycles = 20
    with es_pipeline(tmp_path, elasticsearch) as pipeline:
        # Short bursts (150 acknowledgements each) keep 20 cycles well inside the module's time budget.
        seqs = await crash_under_load(pipeline.receiver, load, cycles, acks_per_cycle=150)
        await polled(pipeline.drained, 90, "the receiver's queue drained into Elasticsearch")
        publisher_documents = pipeline.publisher.status()["documents"]
        indexed = pipeline.indexed()

    figures = Figures.of(load, indexed)
    figures.report(
        "kill -9 receiver x20", record_property, cycles=cycles, resent_and_absorbed=publisher_documents["duplicates"]
    )
    assert figures.acknowledged >= cycles * 150
    # Only a request in flight at the kill can be stored without its answer: at most one per connection per kill.
    figures.assert_each_acknowledged_message_indexed_once(unacknowledged_allowed=cycles * CONNECTIONS)
    assert seqs == sorted(seqs)  # seq never goes back across restarts


async def test_kill_9_the_publisher_under_load(
    tmp_path: Path, elasticsearch: SearchEngine, record_property: RecordProperty
) -> None:
    load = LoadResult()
    cycles = 5
    with es_pipeline(tmp_path, elasticsearch) as pipeline:
        publisher = pipeline.publisher
        stop = asyncio.Event()
        traffic = asyncio.create_task(post_load(pipeline.receiver.base, stop, load, connections=CONNECTIONS))
        try:
            for _ in range(cycles):
                # Killed while it holds a batch: Elasticsearch may have stored some of it, the receiver never
                # hears so, and sends the batch again to the next publisher.
                await polled(lambda: publisher.status()["inFlightBatches"] > 0, 30, "a batch at the publisher")
                await asyncio.to_thread(publisher.process.kill)
                # The receiver keeps acknowledging into its queue while nothing can be forwarded.
                await load.until_acked(len(load.acked) + 300)
                await asyncio.to_thread(publisher.start, 60)
                await polled(lambda: publisher.status()["batches"]["ok"] > 0, 30, "forwarding resumed")
        finally:
            stop.set()
            await traffic
        await polled(pipeline.drained, 90, "the receiver's queue drained into Elasticsearch")
        indexed = pipeline.indexed()

    figures = Figures.of(load, indexed)
    figures.report("kill -9 publisher x5", record_property, cycles=cycles, client_errors=load.errors)
    # The receiver never died, so every message it stored got its 200: the index holds exactly those.
    figures.assert_each_acknowledged_message_indexed_once()
    assert load.errors == 0  # the receiver answered every request throughout


async def test_elasticsearch_stopped_under_load_fills_the_queue_then_drains(
    tmp_path: Path, elasticsearch: SearchEngine, record_property: RecordProperty
) -> None:
    max_queue = 2000
    load = LoadResult()
    with es_pipeline(tmp_path, elasticsearch, "--max-queue", str(max_queue), "--batch-max-messages", "500") as pipeline:
        await load_until(pipeline.receiver.base, load, lambda result: len(result.acked) >= 500)
        await polled(pipeline.drained, 30, "the first messages indexed")
        try:
            await asyncio.to_thread(elasticsearch.stop)
            # Under load the queue fills to maxMessages, then every further message is refused, not dropped.
            await load_until(pipeline.receiver.base, load, lambda result: result.refusals[503] >= 200)
            full = pipeline.receiver.status()
        finally:
            await asyncio.to_thread(elasticsearch.start)  # the engine is shared by the whole session
        await polled(pipeline.drained, 120, "the full queue drained after Elasticsearch came back")
        indexed = await accepting_again(pipeline, load, 800)

    figures = Figures.of(load, indexed)
    figures.report(
        "Elasticsearch stopped",
        record_property,
        refused_503=load.refusals[503],
        backlog_when_full=full["backlog"],
        last_forward_error=full["lastForwardError"],
    )
    assert full["backlog"] == max_queue
    assert full["lastForwardError"]
    assert set(load.refusals) == {503}
    assert load.refusals_without_retry_after == 0
    figures.assert_each_acknowledged_message_indexed_once()
    assert load.errors == 0


async def test_a_full_disk_is_refused_then_heals_with_nothing_lost(
    tmp_path: Path, elasticsearch: SearchEngine, record_property: RecordProperty
) -> None:
    load = LoadResult()
    body = b'{"pad": "' + b"x" * 2000 + b'"}'  # larger messages fill the volume in fewer requests
    with (
        SmallVolume(tmp_path / "volume") as volume,
        es_pipeline(tmp_path, elasticsearch, data_dir=volume.data, wrapper=volume.wrapper) as pipeline,
    ):
        receiver = pipeline.receiver
        volume.fill(leave=512 * 1024)

        def full_for_a_while(result: LoadResult) -> bool:
            # A good many requests refused: the full volume is a state the receiver lives in, not a blip.
            return result.refusals[507] > 0 and result.refused >= 200

        await load_until(receiver.base, load, full_for_a_while, body=body)
        at_full = receiver.status()
        assert at_full["lastDatabaseError"]
        assert receiver.process.alive()
        refused_while_full = dict(load.refusals)

        volume.free(receiver.process.pid)
        await polled(lambda: receiver.status()["ready"], 30, "readiness once space is back")
        indexed = await accepting_again(pipeline, load, 500, body)

    figures = Figures.of(load, indexed)
    figures.report(
        "disk full",
        record_property,
        volume=volume.kind,
        refused=refused_while_full,
        database_error=at_full["lastDatabaseError"],
        ready_when_full=at_full["ready"],
    )
    assert refused_while_full.get(507, 0) >= 1
    assert set(load.refusals) <= {503, 507}  # a write that failed (507) or a database still reopening (503)
    figures.assert_each_acknowledged_message_indexed_once()  # "nothing was kept" of a refused message holds
    assert load.errors == 0


async def accepting_again(pipeline: Pipeline, load: LoadResult, more: int, body: bytes = b'{"v": 1}') -> list[str]:
    """After a fault has healed: ``more`` further messages acknowledged and everything drained; the indexed ids."""
    goal = len(load.acked) + more
    await load_until(pipeline.receiver.base, load, lambda result: len(result.acked) >= goal, body)
    await polled(pipeline.drained, 60, "the queue drained into Elasticsearch")
    return pipeline.indexed()


async def load_until(
    base: str, load: LoadResult, done: Callable[[LoadResult], bool], body: bytes = b'{"v": 1}', within: float = 60
) -> None:
    """Run the load generator until ``done(load)``."""
    stop = asyncio.Event()
    traffic = asyncio.create_task(post_load(base, stop, load, connections=CONNECTIONS, body=body))
    try:
        await load.until(done, within, "the load's goal")
    finally:
        stop.set()
        await traffic
