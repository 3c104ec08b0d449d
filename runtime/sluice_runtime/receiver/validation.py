"""Checks on what a client sends, and the envelope built from it. Pure functions: no I/O, no state.

Each check raises :class:`Rejected` with the HTTP status and a message a client can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from sluice_runtime.common.envelope import encode_seq

MAX_NAME_BYTES = 256  # producer and key
MAX_LABEL_BYTES = 1024

# Bodies that rxtx clients send as JSON. rxtx never looked at the type; curl -d sends form-urlencoded
# and many HTTP libraries send raw bytes as octet-stream, so these are read as JSON too, which keeps
# old clients and the documented curl line working. Types that clearly mean something else get 415.
JSON_TYPES = frozenset(
    {"", "application/json", "text/plain", "text/json", "application/x-www-form-urlencoded", "application/octet-stream"}
)
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonlines"})


class Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Route:
    producer: str
    key: str
    label: str


def body_kind(content_type: str) -> str:
    """``json`` or ``ndjson`` for a Content-Type (parameters ignored); 415 for anything else."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return "ndjson"
    if media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    raise Rejected(415, f"Content-Type {media!r} is not accepted; send application/json or application/x-ndjson")


def _has_control(text: str) -> bool:
    return any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in text)


def check_name(what: str, value: str, limit: int) -> None:
    if not value or value == "/":
        raise Rejected(400, f"{what} must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise Rejected(400, f"{what} is longer than {limit} bytes")
    if _has_control(value):
        raise Rejected(400, f"{what} must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(400, f"{what} is not valid UTF-8") from None


def check_route(producer: str, key: str, label: str) -> Route:
    """The route parts, checked. The label keeps rxtx's leading slash (gin's ``*label``), so documents match."""
    check_name("producer", producer, MAX_NAME_BYTES)
    check_name("key", key, MAX_NAME_BYTES)
    label = "/" + label.lstrip("/")
    check_name("label", label, MAX_LABEL_BYTES)
    return Route(producer, key, label)


def nesting_depth(value: Any) -> int:
    """Depth of nested objects/arrays (a scalar is 0, ``{}`` is 1); iterative, so no recursion limit."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


class _AnyObject(msgspec.Struct):
    """Any JSON object: decoding into it checks the syntax in C and skips the contents without building them."""


_OBJECT = msgspec.json.Decoder(_AnyObject)


def check_message(raw: bytes, max_depth: int, line: int | None = None) -> None:
    """Raise :class:`Rejected` unless ``raw`` is one JSON object in UTF-8 nested at most ``max_depth`` deep.

    Cheap checks accept the usual message without building it (a third of the cost of parsing it).
    Whatever they cannot vouch for goes to :func:`parse_message`, which decides and names the problem.
    """
    try:
        _OBJECT.decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        parse_message(raw, max_depth, line)
        return
    # Skipped strings are not checked for UTF-8. Nesting deeper than max_depth needs at least max_depth
    # brackets; counting them runs in C, so only a body that could be too deep is parsed to measure it.
    if not _is_utf8(raw) or raw.count(b"{") + raw.count(b"[") >= max_depth:
        parse_message(raw, max_depth, line)


def _is_utf8(raw: bytes) -> bool:
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parse_message(raw: bytes, max_depth: int, line: int | None = None) -> dict[str, Any]:
    """One JSON object, parsed and checked for UTF-8, syntax, type and nesting; ``line`` names it in an
    NDJSON body."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf:
            raise Rejected(400, f"{_where(line)} is not valid UTF-8 (byte {utf.start})") from None
        raise Rejected(400, f"{_where(line)} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Rejected(400, f"{_where(line)} must be a JSON object, not {type_name(value)}")
    if nesting_depth(value) > max_depth:
        raise Rejected(400, f"{_where(line)} is nested deeper than {max_depth} levels")
    return value


def _where(line: int | None) -> str:
    # Only built for a refusal: naming every line of a good body cost more than parsing it.
    return "the body" if line is None else f"line {line}"


def parse_ndjson(body: bytes, max_depth: int) -> list[bytes]:
    """The non-blank lines of an all-or-nothing NDJSON body; the first bad line fails it, by number."""
    lines: list[bytes] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        line = line.strip()  # also drops the \r of \r\n
        if line:
            check_message(line, max_depth, number)
            lines.append(line)
    if not lines:
        raise Rejected(400, "the NDJSON body holds no messages")
    return lines


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def new_uuids(count: int) -> list[str]:
    """Random (version 4) UUID strings. The randomness for all of them is read in one system call: one
    per message cost a tenth of the receiver's CPU under NDJSON load (py-spy, end to end)."""
    hexed = os.urandom(16 * count).hex()
    uuids = []
    for start in range(0, 32 * count, 32):
        digits = hexed[start : start + 32]
        variant = "89ab"[int(digits[16], 16) & 3]
        uuids.append(f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}")
    return uuids


class EnvelopeEncoder:
    """Envelopes for the messages of one request, which share producer, key, label and time.

    The shared part is encoded once. The payload's checked JSON text is spliced in as sent, so it is
    not encoded twice; what is stored is exactly what is forwarded on every (re)send. Keys keep
    rxtx's order: seq, time, uuid, producer, label, key, payload.
    """

    __slots__ = ("_middle",)

    def __init__(self, route: Route, time: str) -> None:
        shared = orjson.dumps({"producer": route.producer, "label": route.label, "key": route.key})
        self._middle = b'","time":' + orjson.dumps(time) + b',"uuid":"', b'",' + shared[1:-1] + b',"payload":'

    def encode(self, seq: int, message_uuid: str, payload: bytes) -> bytes:
        before_uuid, after_uuid = self._middle
        return b"".join((b'{"seq":"', encode_seq(seq), before_uuid, message_uuid.encode(), after_uuid, payload, b"}"))


def encode_envelope(seq: int, time: str, route: Route, payload: bytes) -> tuple[str, bytes]:
    """``(uuid, envelope bytes)`` for one message."""
    (message_uuid,) = new_uuids(1)
    return message_uuid, EnvelopeEncoder(route, time).encode(seq, message_uuid, payload)
