"""Without an engine URL the publisher writes NDJSON files: one line per document, rotated by size."""

from __future__ import annotations

from pathlib import Path

import orjson

from sluice_runtime.publisher.settings import PublisherSettings
from tests.publisher.test_indexing import batch_body, readings, running_publisher


async def test_batches_become_search_hit_lines_and_files_rotate(tmp_path: Path) -> None:
    settings = PublisherSettings.model_validate({"output": {"dir": str(tmp_path), "maxBytes": 4096, "maxFiles": 3}})
    sent = []
    async with running_publisher(settings) as client:
        for _ in range(10):
            envelopes = readings(5)
            sent += [envelope["uuid"] for envelope in envelopes]
            response = await client.post("/in", data=batch_body(envelopes))
            assert response.status == 200
            assert (await response.json())["indexed"] == 5
        last = readings(2)
        sent += [envelope["uuid"] for envelope in last]
        assert (await client.post("/in", data=batch_body(last))).status == 200
        status = await (await client.get("/status")).json()
        metrics = await (await client.get("/metrics")).text()
    assert status["output"] == "file"
    assert status["documentsWritten"] == 52
    # Batch sizes as the sender made them, for checking its batch settings from this side.
    assert (status["lastBatchSize"], status["largestBatchSize"]) == (2, 5)
    assert (status["inFlightBatches"], status["maxConcurrentBatches"]) == (0, 1)
    assert "sluice_publisher_batch_documents_count 11.0" in metrics
    assert 'sluice_publisher_batch_documents_bucket{le="1.0"} 0.0' in metrics
    assert 'sluice_publisher_batch_documents_bucket{le="10.0"} 11.0' in metrics

    check_rotated_output(tmp_path, sent)


def check_rotated_output(tmp_path: Path, sent: list[str]) -> None:
    files = sorted(tmp_path.glob("documents*.ndjson"))
    assert len(files) == 4, "the current file plus the newest three rotated ones"
    assert all(path.stat().st_size <= 4096 for path in files)
    lines = [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]
    assert all(line["_index"] == "wx-rtbeat-2026.03" for line in lines)
    assert all(line["_id"] == line["_source"]["rxtxMsg"]["uuid"] for line in lines)
    # Older rotated files were removed; what is kept is the newest documents, in order.
    kept = [line["_id"] for line in lines]
    current = [orjson.loads(line)["_id"] for line in (tmp_path / "documents.ndjson").read_bytes().splitlines()]
    assert kept[-len(current) :] == current == sent[-len(current) :]
    assert set(kept) <= set(sent)
