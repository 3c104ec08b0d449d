"""rxtx batches become rtBeat-shaped documents with stable ids, in the index their time names."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from sluice_runtime.common.envelope import encode_batch, make_envelope
from sluice_runtime.publisher.documents import BatchError, parse_batch
from sluice_runtime.publisher.indexname import IndexPattern

MONTHLY = IndexPattern("wx-rtbeat-%{+yyyy.MM}")


@pytest.mark.parametrize(
    ("pattern", "when", "name"),
    [
        ("wx-rtbeat-%{+yyyy.MM}", datetime(2026, 1, 31, 23, 59, tzinfo=UTC), "wx-rtbeat-2026.01"),
        ("logs-%{+yyyy.MM.dd}", datetime(2026, 11, 5, tzinfo=UTC), "logs-2026.11.05"),
        ("w-%{+xxxx.ww}", datetime(2027, 1, 1, tzinfo=UTC), "w-2026.53"),
        ("static", datetime(2026, 1, 1, tzinfo=UTC), "static"),
        ("a-%{+yyyy}-b-%{+MM}", datetime(2026, 7, 1, tzinfo=UTC), "a-2026-b-07"),
    ],
)
def test_index_pattern_date_math(pattern: str, when: datetime, name: str) -> None:
    assert IndexPattern(pattern).render(when) == name


def test_index_pattern_wildcard_for_templates() -> None:
    assert MONTHLY.wildcard() == "wx-rtbeat-*"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("Wx-%{+yyyy}", "lowercase"),
        ("wx rtbeat", "cannot contain"),
        ("_wx", "cannot start"),
        ("wx-%{beat.name}", "only date math"),
        ("wx-%{+yyyy.QQ}", "unknown date token 'QQ'"),
    ],
)
def test_invalid_index_patterns_are_refused(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        IndexPattern(pattern)


def test_batch_becomes_rtbeat_documents_with_uuid_ids() -> None:
    time = "2026-03-04T05:06:07.123Z"
    envelope = make_envelope(7, "station-1", "readings", "roof/north", {"temperature": 21.5}, time)
    body = encode_batch([orjson.dumps(envelope)])
    batch = parse_batch(body, MONTHLY)
    (document,) = batch.documents
    assert document.id == envelope["uuid"]
    assert document.index == "wx-rtbeat-2026.03"
    assert orjson.loads(document.source) == {
        "@timestamp": "2026-03-04T05:06:07.123Z",
        "rxtxMsg": {
            "seq": envelope["seq"],
            "time": "2026-03-04T05:06:07.123Z",
            "uuid": envelope["uuid"],
            "producer": "station-1",
            "label": "roof/north",
            "key": "readings",
            "payload": {"temperature": 21.5},
        },
    }
    # In rxtx's key order, as rtBeat wrote it.
    assert list(orjson.loads(document.source)["rxtxMsg"]) == list(envelope)
    # The same message always yields the same document: a resend overwrites nothing and adds nothing.
    assert parse_batch(body, MONTHLY).documents == batch.documents


def test_go_rxtx_batches_are_accepted() -> None:
    # rxtx (Go) writes nanosecond times with a zone offset, seq as a string (the day, then a counter of 11
    # digits), and null for no messages.
    message = {
        "seq": "2018060100000000042",
        "time": "2018-06-01T10:00:00.123456789+02:00",
        "uuid": "b0d1f7a2-6a53-4c5e-9d1b-1f7f0e0c9a11",
        "producer": "me",
        "label": "x",
        "key": "k",
        "payload": {"a": 1},
    }
    batch = parse_batch(orjson.dumps({"uuid": "u", "size": 1, "messages": [message]}), MONTHLY)
    assert batch.documents[0].index == "wx-rtbeat-2018.06"
    source = orjson.loads(batch.documents[0].source)
    assert source["@timestamp"] == "2018-06-01T08:00:00.123Z"
    assert source["rxtxMsg"] == message
    assert parse_batch(b'{"uuid":"u","size":0,"messages":null}', MONTHLY).documents == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"uuid":"u","size":2,"messages":[]}', "size is 2 but messages holds 0"),
        (b'{"uuid":"u","messages":{}}', "Expected `array | null`, got `object` - at `messages`"),
        (
            b'{"uuid":"u","messages":[{"time":"2026-01-01T00:00:00Z"}]}',
            r"missing required field `uuid` - at `messages\[0\]`",
        ),
        (
            b'{"uuid":"u","messages":[{"uuid":"","time":"2026-01-01T00:00:00Z"}]}',
            r"messages\[0\]\.uuid must be a non-empty",
        ),
        (b'{"uuid":"u","messages":[{"uuid":"a","time":"yesterday"}]}', r"messages\[0\]\.time must be an RFC 3339"),
        (
            b'{"uuid":"u","messages":[{"uuid":"a","time":"2026-01-01T00:00:00Z","label":5}]}',
            r"`str`, got `int` - at `messages\[0\]\.label`",
        ),
        (
            b'{"messages":[{"uuid":"a","time":"2026-01-01T00:00:00Z","seq":true}]}',
            r"got `bool` - at `messages\[0\]\.seq`",
        ),
        (b'{"messages":[{"uuid":"a","time":"2026-01-01T00:00:00Z","payload":{"a":}}]}', "not valid JSON"),
    ],
)
def test_malformed_batches_are_refused_naming_the_problem(body: bytes, problem: str) -> None:
    with pytest.raises(BatchError, match=problem):
        parse_batch(body, MONTHLY)


@pytest.mark.parametrize(
    ("time", "timestamp"),
    [
        ("2026-11-25T20:17:33.123Z", "2026-11-25T20:17:33.123Z"),
        ("2026-11-25T20:17:33.123456789Z", "2026-11-25T20:17:33.123Z"),  # Go's nanoseconds, cut to milliseconds
        ("2026-11-25T20:17:33.1Z", "2026-11-25T20:17:33.100Z"),  # Go trims trailing zeros
        ("2026-11-25T20:17:33Z", "2026-11-25T20:17:33.000Z"),
        ("2026-11-25 20:17:33.123Z", "2026-11-25T20:17:33.123Z"),
        ("2026-W48-3T20:17:33.123Z", "2026-11-25T20:17:33.123Z"),  # an ISO week date is still the same instant
        ("2026-11-25T21:17:33.123+01:00", "2026-11-25T20:17:33.123Z"),
        ("2026-11-25T20:17:33.123", "2026-11-25T20:17:33.123Z"),  # no zone counts as UTC
    ],
)
def test_timestamp_is_the_message_time_in_utc_milliseconds(time: str, timestamp: str) -> None:
    body = encode_batch([orjson.dumps(make_envelope(1, "p", "k", "l", {}, time))])
    (document,) = parse_batch(body, MONTHLY).documents
    assert orjson.loads(document.source)["@timestamp"] == timestamp


def test_each_message_is_named_by_its_own_time_within_a_batch() -> None:
    times = ["2026-11-25T23:59:59.999Z", "2026-11-26T00:00:00.000Z", "2026-11-25T23:59:59.999Z", "2026-11-26T01:00:00Z"]
    body = encode_batch([orjson.dumps(make_envelope(n, "p", "k", "l", {}, time)) for n, time in enumerate(times)])
    daily = [document.index for document in parse_batch(body, IndexPattern("d-%{+yyyy.MM.dd}")).documents]
    hourly = [document.index for document in parse_batch(body, IndexPattern("h-%{+yyyy.MM.dd.HH}")).documents]
    assert daily == ["d-2026.11.25", "d-2026.11.26", "d-2026.11.25", "d-2026.11.26"]
    assert hourly == ["h-2026.11.25.23", "h-2026.11.26.00", "h-2026.11.25.23", "h-2026.11.26.01"]


def test_only_the_envelope_fields_reach_the_document() -> None:
    message = {"seq": 9, "time": "2026-01-01T00:00:00Z", "uuid": "u-1", "payload": {"a": 1}, "extra": "dropped"}
    (document,) = parse_batch(orjson.dumps({"uuid": "b", "messages": [message]}), MONTHLY).documents
    assert orjson.loads(document.source)["rxtxMsg"] == {
        "seq": "9",
        "time": "2026-01-01T00:00:00Z",
        "uuid": "u-1",
        "producer": "",
        "label": "",
        "key": "",
        "payload": {"a": 1},
    }
