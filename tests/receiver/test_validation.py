"""The pure checks on client input, the envelope encoding, and the forwarder's timing arithmetic."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from sluice_runtime.receiver.forwarder import backoff_delay, batch_due_reason
from sluice_runtime.receiver.outlet import parse_retry_after
from sluice_runtime.receiver.settings import forward_endpoint
from sluice_runtime.receiver.validation import (
    EnvelopeEncoder,
    Rejected,
    Route,
    body_kind,
    check_message,
    check_route,
    envelope_uuid,
    nesting_depth,
    parse_message,
    parse_ndjson,
)


def rejected(status: int, call, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Rejected) as info:
        call(*args)
    assert info.value.status == status
    return info.value.message


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("", "json"),
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("application/x-www-form-urlencoded", "json"),  # curl -d, as rxtx clients sent it
        ("application/vnd.api+json", "json"),
        ("application/x-ndjson", "ndjson"),
        ("application/ndjson", "ndjson"),
    ],
)
def test_accepted_content_types(content_type: str, kind: str) -> None:
    assert body_kind(content_type) == kind


@pytest.mark.parametrize("content_type", ["text/html", "application/xml", "multipart/form-data; boundary=x"])
def test_other_content_types_are_415(content_type: str) -> None:
    assert "not accepted" in rejected(415, body_kind, content_type)


def test_route_keeps_rxtx_label_shape() -> None:
    assert check_route("dev", "k", "a/b") == Route("dev", "k", "/a/b")


@pytest.mark.parametrize(
    ("producer", "key", "label", "needle"),
    [
        ("", "k", "l", "producer must not be empty"),
        ("p", "", "l", "key must not be empty"),
        ("p", "k", "", "label must not be empty"),
        ("p" * 257, "k", "l", "producer is longer than 256 bytes"),
        ("p", "k" * 300, "l", "key is longer"),
        ("p", "k", "l" * 1100, "label is longer"),
        ("p", "k", "a\x00b", "label must not contain control characters"),
        ("p\n", "k", "l", "producer must not contain control"),
        ("p", "k\x7f", "l", "key must not contain control"),
    ],
)
def test_bad_routes_are_400(producer: str, key: str, label: str, needle: str) -> None:
    assert needle in rejected(400, check_route, producer, key, label)


def test_unicode_names_are_fine() -> None:
    assert check_route("Gerät", "clé", "温度/x").label == "/温度/x"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b'"text"', "not a string"),
        (b"null", "not null"),
        (b"42", "not a number"),
        (b'{"a": "\xff\xfe"}', "not valid UTF-8"),
        (b'{"\xc3\x28": 1}', "not valid UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "not valid UTF-8"),  # an encoded surrogate
        (b'{"a": 1}{"b": 2}', "not valid JSON"),
        (b'{"a": 1,}', "not valid JSON"),
    ],
)
@pytest.mark.parametrize("check", [check_message, parse_message])
def test_bad_bodies_are_400(check: Callable[..., object], body: bytes, needle: str) -> None:
    message = rejected(400, check, body, 64)
    assert needle in message


def test_depth_limit() -> None:
    assert nesting_depth({}) == 1
    assert nesting_depth({"a": [1, {"b": []}]}) == 4
    ok = b'{"a":' * 10 + b"1" + b"}" * 10
    assert parse_message(ok, 10)
    check_message(ok, 10)
    # Many brackets, little depth: accepted after the full parse measures it.
    check_message(b'{"a":[' + b",".join([b"{}"] * 100) + b"]}", 10)
    too_deep = b'{"a":' * 11 + b"1" + b"}" * 11
    assert "nested deeper than 10" in rejected(400, check_message, too_deep, 10)
    # Far past any recursion limit: refused with a 400, not a crash.
    very_deep = b"[" * 100_000 + b"]" * 100_000
    rejected(400, check_message, b'{"a":' + very_deep + b"}", 64)


def test_ndjson_depth_is_checked_line_by_line() -> None:
    ok = b'{"a":' * 10 + b"1" + b"}" * 10
    many = b'{"a":[' + b",".join([b"{}"] * 100) + b"]}"
    too_deep = b'{"a":' * 11 + b"1" + b"}" * 11
    assert parse_ndjson(ok + b"\n" + many + b"\r\n\n" + ok, 10) == [ok, many, ok]
    assert "line 4 is nested deeper than 10" in rejected(400, parse_ndjson, ok + b"\n" + many + b"\n\n" + too_deep, 10)
    very_deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "line 2" in rejected(400, parse_ndjson, ok + b"\n" + very_deep + b"\n", 64)


def test_ndjson_is_all_or_nothing_and_names_the_line() -> None:
    assert parse_ndjson(b'{"a":1}\r\n\n{"b":2}\n', 64) == [b'{"a":1}', b'{"b":2}']
    assert "line 3" in rejected(400, parse_ndjson, b'{"a":1}\n{"b":2}\n[3]\n', 64)
    assert "line 2 is not valid JSON" in rejected(400, parse_ndjson, b'{"a":1}\n{oops\n', 64)
    assert "no messages" in rejected(400, parse_ndjson, b"\n \n", 64)
    # One object split over two lines, the second also holding another: each line is checked alone.
    assert "line 1 is not valid JSON" in rejected(400, parse_ndjson, b'{"a":\n1}{"b":2}\n', 64)
    assert "line 2 is not valid UTF-8" in rejected(400, parse_ndjson, b'{"a":1}\n{"b":"\xff"}\n', 64)


def test_envelope_is_rxtx_shaped_and_keeps_the_payload_text() -> None:
    encoder = EnvelopeEncoder(Route("p", "k", "/l"), "2026-11-25T10:00:00.000000Z")
    first, second = encoder.encode(7, [b'{"x": 1.50}', b"{}"])
    envelope = orjson.loads(first)
    assert list(envelope) == ["seq", "time", "uuid", "producer", "label", "key", "payload"]
    assert envelope["seq"] == "00000000000000000007"
    assert envelope["time"] == "2026-11-25T10:00:00.000000Z"
    assert (envelope["producer"], envelope["key"], envelope["label"]) == ("p", "k", "/l")
    assert envelope["uuid"] == envelope_uuid(first)
    assert envelope["payload"] == {"x": 1.5}
    assert first.endswith(b'"payload":{"x": 1.50}}')
    assert orjson.loads(second)["seq"] == "00000000000000000008"


def test_envelope_keeps_route_values_that_look_like_formatting() -> None:
    route = Route("p%s", "k%d", '/l%%"\\%')
    (raw,) = EnvelopeEncoder(route, "2026-11-25T10:00:00.000000Z").encode(1, [b'{"%s": "%d"}'])
    envelope = orjson.loads(raw)
    assert (envelope["producer"], envelope["key"], envelope["label"]) == ("p%s", "k%d", '/l%%"\\%')
    assert envelope["payload"] == {"%s": "%d"}


def test_forward_endpoint_accepts_base_or_in_url() -> None:
    assert forward_endpoint("http://x:8081") == "http://x:8081/in"
    assert forward_endpoint("http://x:8081/") == "http://x:8081/in"
    assert forward_endpoint("http://x:8081/in") == "http://x:8081/in"
    assert forward_endpoint("https://x/prefix") == "https://x/prefix/in"


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    for attempt in range(1, 12):
        bound = min(30.0, 0.5 * 2 ** (attempt - 1))
        delay = backoff_delay(attempt, 0.5, 30.0)
        assert bound / 2 <= delay <= bound
    assert backoff_delay(1, 0.5, 30.0, retry_after=7) >= 7
    assert backoff_delay(1, 0.5, 30.0, retry_after=10_000) == 300.0
    assert len({backoff_delay(5, 0.5, 30.0) for _ in range(20)}) > 1  # jittered
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None


def test_when_a_batch_is_due_and_why() -> None:
    assert batch_due_reason(0, 100, 99.0, 10.0, True) is None
    assert batch_due_reason(100, 100, 0.0, 10.0, False) == "full"  # a full batch goes at once
    assert batch_due_reason(5, 100, 1.0, 10.0, False) is None  # a partial one waits...
    assert batch_due_reason(5, 100, 10.0, 10.0, False) == "maxWait"  # ...at most max_wait
    assert batch_due_reason(5, 100, 0.0, 10.0, True) == "backlog"  # the tail of a backlog goes back-to-back


def test_envelopes_get_valid_random_uuids() -> None:
    import uuid

    encoder = EnvelopeEncoder(Route("p", "k", "/l"), "2026-11-25T10:00:00.000000Z")
    values = {envelope_uuid(envelope) for _ in range(20) for envelope in encoder.encode(1, [b"{}"] * 100)}
    assert len(values) == 2000
    for value in list(values)[:200]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
