"""The publisher against real Elasticsearch 8.19 and OpenSearch 2.19: every document once, refusals dead-lettered."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from sluice_runtime.common.config import ConfigError
from sluice_runtime.common.envelope import Envelope, encode_batch, make_envelope
from sluice_runtime.publisher.app import build_app
from sluice_runtime.publisher.settings import PublisherSettings
from tests.support.engines import SearchEngine, call
from tests.support.inprocess import running_publisher, serving
from tests.support.observe import metric_sum
from tests.support.procs import free_port, wait_until

pytestmark = pytest.mark.engines

WX_FIELDS = Path(__file__).resolve().parents[2] / "examples" / "wx-fields.yml"
MARCH = "2026-03-04T05:06:07.000Z"


def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def settings_for(
    engine_url: str, name: str, fields: Path | None = WX_FIELDS, **elasticsearch: Any
) -> PublisherSettings:
    config: dict[str, Any] = {
        "elasticsearch": {
            "url": engine_url,
            "index": f"{name}-%{{+yyyy.MM}}",
            "deadLetterIndex": f"dl{name}-%{{+yyyy.MM}}",
            "retryTimeout": "3s",
            **elasticsearch,
        }
    }
    if fields is not None:
        config["indexTemplate"] = {"name": name, "fieldsFile": str(fields), "checkInterval": "300ms"}
    return PublisherSettings.model_validate(config)


def readings(count: int, time: str = MARCH, **payload: Any) -> list[Envelope]:
    return [
        make_envelope(seq, "station-1", "readings", "roof", {"currently": {"temperature": 20.5, **payload}}, time)
        for seq in range(1, count + 1)
    ]


def batch_body(envelopes: list[Envelope]) -> bytes:
    return encode_batch([orjson.dumps(envelope) for envelope in envelopes])


def stored_ids(engine: SearchEngine, pattern: str) -> list[str]:
    call(engine, "POST", f"/{pattern}/_refresh")
    status, found = call(engine, "POST", f"/{pattern}/_search?size=10000", {"_source": False})
    assert status == 200, found
    return [hit["_id"] for hit in found["hits"]["hits"]]


async def post_batch(client: TestClient, body: bytes) -> tuple[int, dict[str, Any]]:
    response = await client.post("/in", data=body, headers={"Content-Type": "application/json"})
    return response.status, await response.json()


async def test_batch_is_indexed_once_with_the_template_mapping(search_engine: SearchEngine) -> None:
    name = unique_name()
    envelopes = readings(25)
    async with running_publisher(settings_for(search_engine.url, name)) as client:
        status, answer = await post_batch(client, batch_body(envelopes))
        assert (status, answer["indexed"], answer["duplicates"], answer["deadLettered"]) == (200, 25, 0, 0)

        # The same batch again (a receiver that crashed before deleting it) adds nothing.
        status, answer = await post_batch(client, batch_body(envelopes))
        assert (status, answer["indexed"], answer["duplicates"]) == (200, 0, 25)

        health = await (await client.get("/status")).json()
        assert health["indexTemplate"]["state"] == "installed"
        assert health["documents"] == {"indexed": 25, "duplicates": 25, "deadLettered": 0}

    assert sorted(stored_ids(search_engine, f"{name}-2026.03")) == sorted(e["uuid"] for e in envelopes)
    status, mapping = call(search_engine, "GET", f"/{name}-2026.03/_mapping")
    properties = mapping[f"{name}-2026.03"]["mappings"]["properties"]
    assert properties["@timestamp"]["type"] == "date"
    payload = properties["rxtxMsg"]["properties"]["payload"]["properties"]
    assert payload["currently"]["properties"]["temperature"]["type"] == "half_float"
    assert properties["rxtxMsg"]["properties"]["producer"]["type"] == "keyword"
    # The rest of the sample's types, in the fresh index the template applied to.
    assert payload["latitude"]["type"] == "half_float"
    assert payload["offset"]["type"] == "byte"
    assert payload["currently"]["properties"]["time"]["type"] == "long"
    assert payload["currently"]["properties"]["nearestStormDistance"]["type"] == "integer"
    assert properties["rxtxMsg"]["properties"]["time"]["type"] == "date"
    assert properties["error"]["properties"]["message"]["type"] == "text"  # a field in a group
    assert properties["error"]["properties"]["code"]["type"] == "long"


async def test_documents_land_in_the_index_named_by_their_own_time(search_engine: SearchEngine) -> None:
    name = unique_name()
    january, february = readings(3, "2026-01-31T23:59:59.999Z"), readings(2, "2026-02-01T00:00:00Z")
    async with running_publisher(settings_for(search_engine.url, name, fields=None)) as client:
        status, _ = await post_batch(client, batch_body(january + february))
        assert status == 200
    assert len(stored_ids(search_engine, f"{name}-2026.01")) == 3
    assert len(stored_ids(search_engine, f"{name}-2026.02")) == 2


async def test_a_mapping_error_is_dead_lettered_and_does_not_block_the_rest(search_engine: SearchEngine) -> None:
    name = unique_name()
    good = readings(10)
    bad = readings(2, temperature="very hot")
    async with running_publisher(settings_for(search_engine.url, name)) as client:
        status, answer = await post_batch(client, batch_body(good[:5] + bad + good[5:]))
        assert (status, answer["indexed"], answer["deadLettered"]) == (200, 10, 2)
        # Sent again, nothing is written twice: not the documents, not the dead letters.
        status, answer = await post_batch(client, batch_body(good[:5] + bad + good[5:]))
        assert (status, answer["indexed"], answer["duplicates"], answer["deadLettered"]) == (200, 0, 10, 2)

    assert sorted(stored_ids(search_engine, f"{name}-*")) == sorted(e["uuid"] for e in good)
    call(search_engine, "POST", f"/dl{name}-*/_refresh")
    status, found = call(search_engine, "POST", f"/dl{name}-*/_search", {"size": 10})
    letters = {hit["_id"]: hit["_source"] for hit in found["hits"]["hits"]}
    assert sorted(letters) == sorted(e["uuid"] for e in bad)
    letter = letters[bad[0]["uuid"]]
    assert letter["error"]["status"] == 400
    assert "temperature" in letter["error"]["reason"]
    assert letter["index"] == f"{name}-2026.03"
    assert orjson.loads(letter["document"])["rxtxMsg"]["payload"]["currently"]["temperature"] == "very hot"


async def test_large_batches_are_split_by_size_and_gzipped(search_engine: SearchEngine) -> None:
    name = unique_name()
    envelopes = readings(600)
    settings = settings_for(search_engine.url, name, fields=None, maxBulkBytes=16384, gzip=True)
    async with running_publisher(settings) as client:
        status, answer = await post_batch(client, batch_body(envelopes))
        assert (status, answer["indexed"]) == (200, 600)
        metrics = await (await client.get("/metrics")).text()
    requests = metric_sum(metrics, "sluice_publisher_bulk_requests_total", status="200")
    assert requests > 10, "600 documents at 16 KiB per request need many requests"
    assert len(set(stored_ids(search_engine, f"{name}-*"))) == 600


async def test_a_stopped_engine_gets_503_and_the_retry_succeeds_once_it_is_back(search_engine: SearchEngine) -> None:
    name = unique_name()
    envelopes = readings(10)
    async with running_publisher(settings_for(search_engine.url, name, fields=None)) as client:
        # Stopped and started from a thread: the publisher under test runs on this event loop.
        await asyncio.to_thread(search_engine.stop)
        try:
            response = await client.post("/in", data=batch_body(envelopes))
            assert response.status == 503
            assert int(response.headers["Retry-After"]) > 0
        finally:
            await asyncio.to_thread(search_engine.start)
        status, answer = await post_batch(client, batch_body(envelopes))
        assert (status, answer["indexed"]) == (200, 10)
    assert sorted(stored_ids(search_engine, f"{name}-*")) == sorted(e["uuid"] for e in envelopes)


async def test_an_unreachable_engine_gets_503_with_retry_after() -> None:
    settings = settings_for(f"http://127.0.0.1:{free_port()}", unique_name(), fields=None, retryAfter=2)
    async with running_publisher(settings) as client:
        response = await client.post("/in", data=batch_body(readings(3)))
        assert response.status == 503
        assert response.headers["Retry-After"] == "2"  # elasticsearch.retryAfter
        assert "cannot connect" in (await response.json())["message"]


async def test_malformed_batch_gets_400_naming_the_problem(elasticsearch: SearchEngine) -> None:
    async with running_publisher(settings_for(elasticsearch.url, unique_name(), fields=None)) as client:
        response = await client.post("/in", data=b'{"uuid":"u","size":3,"messages":[]}')
        assert response.status == 400
        assert "size is 3 but messages holds 0" in (await response.json())["message"]


async def test_template_is_reinstalled_when_deleted_by_hand(search_engine: SearchEngine) -> None:
    name = unique_name()
    async with running_publisher(settings_for(search_engine.url, name)) as client:
        assert (await client.get("/readyz")).status == 200
        status, _ = call(search_engine, "DELETE", f"/_index_template/{name}")
        assert status == 200

        def reinstalled() -> bool:
            return call(search_engine, "GET", f"/_index_template/{name}")[0] == 200

        # Polled from a thread: the publisher under test runs on this event loop.
        await asyncio.to_thread(wait_until, reinstalled, 20, f"index template {name} to come back")


async def test_template_follows_a_changed_fields_file(elasticsearch: SearchEngine, tmp_path: Path) -> None:
    name = unique_name()
    fields = tmp_path / "fields.yml"
    fields.write_text("- key: k\n  fields:\n  - name: rxtxMsg.payload.level\n    type: long\n")
    async with running_publisher(settings_for(elasticsearch.url, name, fields=fields)):
        fields.write_text("- key: k\n  fields:\n  - name: rxtxMsg.payload.level\n    type: float\n")

        def level_type() -> str:
            _, body = call(elasticsearch, "GET", f"/_index_template/{name}")
            mappings = body["index_templates"][0]["index_template"]["template"]["mappings"]
            return str(mappings["properties"]["rxtxMsg"]["properties"]["payload"]["properties"]["level"]["type"])

        await asyncio.to_thread(wait_until, lambda: level_type() == "float", 20, "the template to follow the fields")


@pytest.mark.parametrize(
    ("fields_yaml", "problem"),
    [
        # Valid as a fields file, but the engine refuses the template: the analyzer does not exist there.
        ("- name: note\n    type: text\n    analyzer: no_such_analyzer", r"indexTemplate: the engine refused"),
        ("- name: station.id\n    type: uuid", r"fieldsFile: .*field 'station\.id': unknown type 'uuid'"),
    ],
    ids=["refused-by-engine", "unknown-type"],
)
async def test_an_unusable_template_stops_start_up_naming_the_cause(
    elasticsearch: SearchEngine, tmp_path: Path, fields_yaml: str, problem: str
) -> None:
    fields = tmp_path / "fields.yml"
    fields.write_text(f"- key: k\n  fields:\n  {fields_yaml}\n")
    app = build_app(settings_for(elasticsearch.url, unique_name(), fields=fields))
    with pytest.raises(ConfigError, match=problem):
        async with serving(app):
            pass


async def test_data_stream_gets_its_template_and_every_document_once(opensearch: SearchEngine) -> None:
    # The test bed's minimal Elasticsearch lacks the data-streams module; OpenSearch has data streams in core.
    name = unique_name()
    settings = PublisherSettings.model_validate(
        {"elasticsearch": {"url": opensearch.url, "index": name, "dataStream": True, "retryTimeout": "3s"}}
    )
    envelopes = readings(20)
    async with running_publisher(settings) as client:
        for _ in range(2):
            status, answer = await post_batch(client, batch_body(envelopes))
            assert status == 200
        assert (answer["indexed"], answer["duplicates"]) == (0, 20)
    status, streams = call(opensearch, "GET", f"/_data_stream/{name}")
    assert status == 200, streams
    assert streams["data_streams"][0]["name"] == name
    assert sorted(stored_ids(opensearch, name)) == sorted(e["uuid"] for e in envelopes)


def test_a_data_stream_name_has_no_date_math() -> None:
    with pytest.raises(ValueError, match="drop the date math"):
        PublisherSettings.model_validate({"elasticsearch": {"index": "wx-%{+yyyy.MM}", "dataStream": True}})
