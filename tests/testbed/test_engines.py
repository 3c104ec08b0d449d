"""The search engines of the test bed behave as the publisher will rely on."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.engines import SearchEngine, call

pytestmark = pytest.mark.engines


def test_cluster_health_is_green_or_yellow(search_engine: SearchEngine) -> None:
    status, health = call(search_engine, "GET", "/_cluster/health")
    assert status == 200
    assert health["status"] in ("green", "yellow")
    expected = "8.19.0" if search_engine.name == "elasticsearch" else "2.19.0"
    assert search_engine.version == expected


def test_index_template_applies_to_new_index(search_engine: SearchEngine) -> None:
    prefix = f"smoke-{uuid.uuid4().hex[:8]}"
    template = {
        "index_patterns": [f"{prefix}-*"],
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"temperature": {"type": "half_float"}, "station": {"type": "keyword"}}},
        },
    }
    status, _ = call(search_engine, "PUT", f"/_index_template/{prefix}", template)
    assert status == 200
    status, _ = call(search_engine, "PUT", f"/{prefix}-2026.11")
    assert status == 200
    _, mapping = call(search_engine, "GET", f"/{prefix}-2026.11/_mapping")
    properties = mapping[f"{prefix}-2026.11"]["mappings"]["properties"]
    assert properties["temperature"]["type"] == "half_float"
    assert properties["station"]["type"] == "keyword"


def test_bulk_create_is_searchable_and_duplicate_id_conflicts(search_engine: SearchEngine) -> None:
    index = f"smoke-bulk-{uuid.uuid4().hex[:8]}"
    lines = []
    for number in range(5):
        lines.append(json.dumps({"create": {"_index": index, "_id": f"doc-{number}"}}))
        lines.append(json.dumps({"station": f"s{number}", "temperature": 20.5 + number}))
    status, result = call(search_engine, "POST", "/_bulk?refresh=true", "\n".join(lines) + "\n", ndjson=True)
    assert status == 200
    assert result["errors"] is False
    assert [item["create"]["status"] for item in result["items"]] == [201] * 5

    _, count = call(search_engine, "GET", f"/{index}/_count")
    assert count["count"] == 5
    _, found = call(search_engine, "POST", f"/{index}/_search", {"query": {"term": {"station": "s3"}}})
    assert found["hits"]["hits"][0]["_id"] == "doc-3"

    again = json.dumps({"create": {"_index": index, "_id": "doc-3"}}) + "\n" + json.dumps({"station": "dup"}) + "\n"
    status, result = call(search_engine, "POST", "/_bulk?refresh=true", again, ndjson=True)
    assert status == 200
    assert result["errors"] is True
    assert result["items"][0]["create"]["status"] == 409
    _, count = call(search_engine, "GET", f"/{index}/_count")
    assert count["count"] == 5
