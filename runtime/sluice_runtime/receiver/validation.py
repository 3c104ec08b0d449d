"""Checks on what a client sends, and the envelope built from it. Pure functions: no I/O, no state.

Each check raises :class:`Rejected` with the HTTP status and a message a client can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from sluice_runtime.common.envelope import SEQ_DIGITS

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
# Every byte but the opening brackets and the line break, for counting the brackets of all lines at once.
_NOT_OPENING = bytes(range(256)).translate(None, b"{[\n")


def check_message(raw: bytes, max_depth: int, line: int | None = None) -> None:
    """Raise :class:`Rejected` unless ``raw`` is one JSON object in UTF-8 nested at most ``max_depth`` deep.

    Cheap checks accept the usual message without building it (a third of the cost of parsing it).
    Whatever they cannot vouch for goes to :func:`parse_message`, which decides and names the problem.
    """
    if not _vouched(raw, raw.count(b"{") + raw.count(b"["), max_depth):
        parse_message(raw, max_depth, line)


def _vouched(raw: bytes, openings: int, max_depth: int) -> bool:
    """Whether ``raw``, which holds ``openings`` opening brackets, is surely a good message. Nesting deeper
    than max_depth needs at least max_depth brackets, so only a message that could be too deep is parsed to
    measure it. Skipped strings are not checked for UTF-8, hence the separate check."""
    if openings >= max_depth:
        return False
    try:
        _OBJECT.decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        return False
    return _is_utf8(raw)


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
    # The opening brackets of each line, counted for all of them in one pass in C: half the cost of
    # counting line by line.
    openings = body.translate(None, _NOT_OPENING).split(b"\n")
    for number, (line, opened) in enumerate(zip(body.split(b"\n"), openings, strict=True), start=1):
        line = line.strip()  # also drops the \r of \r\n
        if line:
            if not _vouched(line, len(opened), max_depth):
                parse_message(line, max_depth, number)
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


# Byte 6 of a version 4 UUID holds the version in its high half, byte 8 the variant in its two high bits.
_VERSION_4 = bytes((byte & 0x0F) | 0x40 for byte in range(256))
_RFC_VARIANT = bytes((byte & 0x3F) | 0x80 for byte in range(256))


def random_uuid_digits(count: int) -> bytes:
    """The 32 hex digits of each of ``count`` random (version 4) UUIDs, back to back. The randomness for all
    of them is read in one system call, and the version and variant are set in C: one call per message
    cost a tenth of the receiver's CPU under NDJSON load (py-spy, end to end)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_RFC_VARIANT)
    return raw.hex().encode()


class EnvelopeEncoder:
    """Envelopes for the messages of one request, which share producer, key, label and time.

    The shared part is encoded once, into a template that each envelope fills in with its seq, a new
    uuid and its payload in one step (0.83 against 0.97 us a message for a uuid and a join each). The
    payload's checked JSON text is spliced in as sent, so it is not encoded twice; what is stored is
    exactly what is forwarded on every (re)send. Keys keep rxtx's order: seq, time, uuid, producer,
    label, key, payload.
    """

    __slots__ = ("_template",)

    def __init__(self, route: Route, time: str) -> None:
        time_field = orjson.dumps({"time": time})[1:-1]
        route_fields = orjson.dumps({"producer": route.producer, "label": route.label, "key": route.key})[1:-1]
        self._template = b",".join(
            (
                b'{"seq":"%%0%dd"' % SEQ_DIGITS,
                time_field.replace(b"%", b"%%"),  # a % that a shared value holds must come out as itself
                b'"uuid":"%s-%s-%s-%s-%s"',
                route_fields.replace(b"%", b"%%"),
                b'"payload":%s}',
            )
        )

    def encode(self, first_seq: int, payloads: list[bytes]) -> list[bytes]:
        """The envelopes of ``payloads``, numbered from ``first_seq``, each with a new random uuid."""
        digits = random_uuid_digits(len(payloads))
        template = self._template
        return [
            template
            % (
                seq,
                digits[at : at + 8],
                digits[at + 8 : at + 12],
                digits[at + 12 : at + 16],
                digits[at + 16 : at + 20],
                digits[at + 20 : at + 32],
                payload,
            )
            for seq, at, payload in zip(
                range(first_seq, first_seq + len(payloads)), range(0, 32 * len(payloads), 32), payloads, strict=True
            )
        ]


def envelope_uuid(envelope: bytes) -> str:
    """The uuid of an envelope from :class:`EnvelopeEncoder`, which writes it before anything a client chose."""
    start = envelope.index(b'"uuid":"') + 8
    return envelope[start : start + 36].decode()
