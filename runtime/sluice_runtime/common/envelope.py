"""The rxtx wire formats, kept byte-compatible so old clients and old rxtx instances work unchanged.

A message envelope is ``{seq, time, uuid, producer, label, key, payload}``; a batch sent to a
publisher's ``POST /in`` is ``{uuid, size, messages}``.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict

import orjson


class Envelope(TypedDict):
    seq: str
    time: str
    uuid: str
    producer: str
    label: str
    key: str
    payload: Any


class Batch(TypedDict):
    uuid: str
    size: int
    messages: list[Envelope]


# rxtx sends seq as a decimal string; padding to the width of a uint64 keeps lexical order numeric.
SEQ_DIGITS = 20


def format_seq(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}"


def utc_now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_envelope(seq: int, producer: str, key: str, label: str, payload: Any, time: str | None = None) -> Envelope:
    return Envelope(
        seq=format_seq(seq),
        time=time or utc_now_rfc3339(),
        uuid=str(uuidlib.uuid4()),
        producer=producer,
        label=label,
        key=key,
        payload=payload,
    )


def encode_batch(messages: Sequence[bytes | memoryview], size: int | None = None) -> bytes:
    """A batch body from already-encoded envelopes, without decoding them again. An item may be several
    envelopes already joined by commas; ``size`` then counts the envelopes.

    The body is written by one join: every intermediate copy of a body of megabytes, each a fresh
    allocation the kernel had to map, cost more than the rest of building it (1.39 against 0.04 us a
    message, with :meth:`Claim.batch_items`, for 4,000 messages).
    """
    head = orjson.dumps({"uuid": str(uuidlib.uuid4()), "size": len(messages) if size is None else size})
    parts: list[bytes | memoryview] = [head[:-1], b',"messages":[']
    for message in messages:
        parts += (message, b",")
    if messages:
        parts.pop()
    parts.append(b"]}")
    return b"".join(parts)
