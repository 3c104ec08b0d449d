"""How the queue lays messages out in LevelDB: groups of envelopes, and single ones as earlier versions stored them."""

from __future__ import annotations

import orjson
import pytest

from sluice_runtime.common.envelope import encode_batch
from sluice_runtime.receiver.stored import (
    MOST_GROUP_MESSAGES,
    comma_joined,
    first_member,
    group_entries,
    group_size,
    key_seq,
    member_count,
)
from tests.receiver.support import stored_members


def envelope(seq: int, payload: bytes = b'{"t":1}') -> bytes:
    return b'{"seq":"%020d","payload":' % seq + payload + b"}"


def unpack(stored: list[tuple[bytes, bytes]]) -> list[tuple[int, list[bytes]]]:
    return [(key_seq(key), stored_members(value)) for key, value in stored]


def test_a_request_is_stored_as_groups_keyed_by_their_first_seq() -> None:
    envelopes = [envelope(seq) for seq in range(7, 17)]
    stored = group_entries(7, envelopes, 4, 1 << 20)
    assert unpack(stored) == [(7, envelopes[0:4]), (11, envelopes[4:8]), (15, envelopes[8:10])]
    assert [member_count(value) for _, value in stored] == [4, 4, 2]
    assert [first_member(value) for _, value in stored] == [envelopes[0], envelopes[4], envelopes[8]]


def test_a_single_message_is_stored_as_earlier_versions_stored_it() -> None:
    (stored,) = group_entries(3, [envelope(3)], MOST_GROUP_MESSAGES, 1 << 20)
    assert stored[1] == envelope(3)
    assert stored_members(stored[1]) == [envelope(3)]
    assert member_count(stored[1]) == 1
    assert first_member(stored[1]) == envelope(3)


def test_an_envelope_holding_a_newline_is_stored_alone_and_read_back_whole() -> None:
    pretty = envelope(2, b'{\n  "t": 1,\n  "u": 2\n}')
    envelopes = [envelope(1), pretty, envelope(3), envelope(4)]
    stored = group_entries(1, envelopes, 10, 1 << 20)
    assert unpack(stored) == [(1, [envelope(1)]), (2, [pretty]), (3, [envelope(3), envelope(4)])]
    assert orjson.loads(stored_members(stored[1][1])[0])["payload"] == {"t": 1, "u": 2}


def test_stored_values_go_into_a_batch_as_their_envelopes() -> None:
    pretty = envelope(3, b'{\n  "t": 3\n}')
    envelopes = [envelope(1), envelope(2), pretty, *(envelope(seq) for seq in range(4, 9))]
    stored = group_entries(1, envelopes, 3, 1 << 20)
    batch = orjson.loads(encode_batch([comma_joined(value) for _, value in stored], len(envelopes)))
    assert batch["size"] == len(batch["messages"]) == 8
    assert batch["messages"] == [orjson.loads(member) for member in envelopes]


def test_a_group_stays_within_the_byte_limit() -> None:
    envelopes = [envelope(seq, b'"' + b"x" * 100 + b'"') for seq in range(20)]
    limit = 3 * (len(envelopes[0]) + 1) + 1  # the tag, then three envelopes and their newlines
    stored = group_entries(0, envelopes, 100, limit)
    assert [len(stored_members(value)) for _, value in stored] == [3, 3, 3, 3, 3, 3, 2]
    assert all(len(value) <= limit for _, value in stored)
    assert [member for _, value in stored for member in stored_members(value)] == envelopes


@pytest.mark.parametrize(
    ("batch", "group"),
    [(1, 1), (100, 100), (250, 250), (251, 125), (300, 150), (1000, 250), (4000, 250), (4001, 235)],
)
def test_groups_fill_a_batch(batch: int, group: int) -> None:
    assert group_size(batch) == group
    assert group <= MOST_GROUP_MESSAGES
    # Whole groups make up a batch with less than one group's room to spare.
    assert batch - group < batch // group * group <= batch
