"""The durable queue: a LevelDB of encoded envelopes keyed by sequence number, written by group commit.

Keys are ``b"m" + seq`` as 8 big-endian bytes, so key order is arrival order. The next sequence
number (``b"#next"``) is stored by every write that deletes, so ``seq`` stays monotonic across
restarts even after the queue has drained empty; until then the newest message carries it.

A value holds one envelope or a group of them (see :mod:`~sluice_runtime.receiver.stored`).

Every database operation runs on one dedicated thread, in the order it was submitted. That single
writer is what makes group commit work: while one ``WriteBatch(sync=True)`` is being fsync'd,
new requests gather, and the next wake-up writes all of them (and any pending deletes) in one
batch. It also serialises the forwarder's reads with drops and deletes, so a key can never be both
claimed for sending and dropped.

The forwarder *claims* messages past a cursor (kept in memory; it starts at the head after a
restart) and later *removes* them once the publisher has acknowledged them: they leave the count
then, and the disk with the next bulk delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
import plyvel

from sluice_runtime.receiver.stored import (
    MESSAGE_PREFIX,
    MESSAGES_END,
    comma_joined,
    first_member,
    group_entries,
    key_seq,
    member_count,
    message_key,
)

log = logging.getLogger("sluice.receiver.queue")

# The bookkeeping keys sort before every message key. Written with deletes and drops, on open and on close,
# never with plain appends: a key outside the run of message keys in every write made each LevelDB file span
# the whole queue, and compactions rewrote the backlog again and again (4.8 against 1.4 us of compaction CPU a
# message, 600,000-message burst). Sorting after the messages, as they did, they still made every file they
# landed in overlap all newer ones, which kept new files from being moved down the levels without a rewrite
# (3.2 against 2.1 us, the same burst drained at 30,000 messages a second).
NEXT_SEQ_KEY = b"#next"
# The number of messages and the next seq when they were counted, so that opening a long queue counts only
# what came after.
COUNTED_KEY = b"#counted"
# Where earlier versions kept these; read when the keys above are absent, and replaced by them on open.
OLD_NEXT_SEQ_KEY = b"s:next"
OLD_COUNTED_KEY = b"s:counted"
# The exact count, which earlier versions still wrote with every change.
OLD_COUNT_KEY = b"s:count"
OLD_KEYS = (OLD_NEXT_SEQ_KEY, OLD_COUNTED_KEY, OLD_COUNT_KEY)
# Acknowledged messages are deleted together once they hold this many bytes, or when the queue empties.
# Tombstones written a few at a time, beside every append, kept LevelDB merging them into the backlog.
# Until then they stay on disk; after a crash they are sent again, and their _id makes that harmless.
DELETE_BATCH_BYTES = 16 * 1024 * 1024
# A larger memtable than LevelDB's 4 MiB means fewer level-0 files and fewer write stalls under
# sustained intake; two of them at most are in memory, which fits the 150 MB RSS budget.
WRITE_BUFFER_BYTES = 32 * 1024 * 1024
REOPEN_INTERVAL = 1.0  # seconds between attempts to reopen the database after a write error


class QueueFull(Exception):
    """The queue holds ``maxMessages`` and the policy is to reject."""


class StoreError(Exception):
    """The database could not take a write (disk full, unwritable, closed); nothing of it was stored."""


@dataclass(frozen=True, slots=True)
class Claim:
    keys: list[bytes]  # of the stored values, to remove them once acknowledged
    values: list[bytes]  # as stored, oldest first: single envelopes or groups
    size: int = 0  # messages the values hold
    more: bool = False  # stopped at a limit with more messages behind it

    def batch_items(self) -> list[bytes | memoryview]:
        """The values as items of a batch's ``messages`` array, each holding one or more envelopes."""
        return [comma_joined(value) for value in self.values]


@dataclass(frozen=True, slots=True)
class _Change:
    """One group commit, as the database thread applies it."""

    puts: list[tuple[bytes, bytes]]
    deletes: list[bytes]
    stored: int  # messages on disk after it, acknowledged ones not yet deleted included, before any drop
    drop: int  # unclaimed messages to drop first (dropOldest)
    next_seq: int
    count_now: bool  # write COUNTED_KEY and NEXT_SEQ_KEY (with deletes, drops and on close)


@dataclass(frozen=True, slots=True)
class _Applied:
    dropped: int
    head_time: float | None  # wall-clock time of the oldest message, when the head may have moved


def envelope_time(value: bytes) -> float | None:
    """The wall-clock time of the first message a stored value holds."""
    try:
        return datetime.fromisoformat(orjson.loads(first_member(value))["time"]).timestamp()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def count_entries(count: int, next_seq: int) -> tuple[tuple[bytes, bytes], ...]:
    """The bookkeeping to store: the count with the next seq it was taken at, and the next seq."""
    counted = count.to_bytes(8, "big") + next_seq.to_bytes(8, "big")
    return (COUNTED_KEY, counted), (NEXT_SEQ_KEY, next_seq.to_bytes(8, "big"))


class MessageQueue:
    def __init__(
        self,
        path: Path,
        max_messages: int,
        drop_oldest: bool = False,
        on_commit: Callable[[int, float, int], None] | None = None,
        on_write_error: Callable[[], None] | None = None,
        group_messages: int = 1,
        group_bytes: int = 1 << 20,
    ) -> None:
        """``group_messages`` and ``group_bytes`` bound a stored group; keep them within a forwarded batch, which
        takes whole groups."""
        self.path = path
        self.max_messages = max_messages
        self.drop_oldest = drop_oldest
        self._group_limits = (group_messages, group_bytes)
        self._on_commit = on_commit
        # Every failed write, appends and bulk deletes alike: a delete has no request to report it.
        self._on_write_error = on_write_error
        self._db: plyvel.DB | None = None
        self._broken = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-leveldb")
        self._next_seq = 1
        self._cursor = 0  # highest seq claimed by the forwarder (touched on the database thread only)
        # Every message key below this one is acknowledged, deleted or about to be (database thread only).
        # Looking for the head from here, not from the first possible key, skips what was already forwarded:
        # LevelDB keeps tombstones until a compaction, and stepping over them cost more than the writes.
        self._floor = message_key(0)
        # Bookkeeping below is only changed on the event loop, from results the database thread returns.
        self.count = 0  # messages on disk and not yet acknowledged
        self._committing = 0  # messages of the group commit being written: in neither _puts nor count
        self._lenient = False  # opened past damaged records: the stored count cannot be trusted
        self.unclaimed = 0  # messages on disk past the cursor
        self.dropped = 0
        self.head_time: float | None = None
        self.last_error: str | None = None
        self._puts: list[tuple[bytes, bytes]] = []
        self._put_messages = 0  # in _puts
        self._put_waiters: list[asyncio.Future[None]] = []
        # Acknowledged and still on disk: deleted in bulk by the next commit once ``_deletes`` holds them.
        self._acknowledged: list[bytes] = []
        self._acknowledged_messages = 0
        self._acknowledged_bytes = 0
        self._deletes: list[bytes] = []
        self._delete_messages = 0  # held by the values of _deletes
        self._count_due = False  # a commit is to store the count even without deletes (on close)
        self._wake = asyncio.Event()
        self._data = asyncio.Event()  # set whenever new messages become claimable
        self._closing = False
        self._committer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        count, head_time, next_seq = await loop.run_in_executor(self._executor, self._open)
        self.count = self.unclaimed = count
        self.head_time = head_time
        self._next_seq = next_seq
        if count:
            self._data.set()
        self._committer = asyncio.create_task(self._commit_loop(), name="sluice-group-commit")
        log.info("queue opened", extra={"path": str(self.path), "backlog": count, "nextSeq": next_seq})

    def _open(self) -> tuple[int, float | None, int]:
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = self._open_db()
        first = next(self._db.iterator(start=MESSAGE_PREFIX, stop=MESSAGES_END), None)
        if first is not None:
            self._floor = first[0]
        last = next(self._db.iterator(start=MESSAGE_PREFIX, stop=MESSAGES_END, reverse=True), None)
        old = {key: value for key in OLD_KEYS if (value := self._db.get(key)) is not None}
        counted = self._db.get(COUNTED_KEY, old.get(OLD_COUNTED_KEY))
        if counted is not None and not self._lenient:
            count = int.from_bytes(counted[:8], "big") + self._members_from(
                message_key(int.from_bytes(counted[8:], "big"))
            )
        elif OLD_COUNT_KEY in old and not self._lenient:
            count = int.from_bytes(old[OLD_COUNT_KEY], "big")
        else:
            # A queue written before the count was kept, or one opened past damaged records: count the messages.
            count = self._members_from(MESSAGE_PREFIX)
        stored = self._db.get(NEXT_SEQ_KEY, old.get(OLD_NEXT_SEQ_KEY))
        next_seq = max(
            int.from_bytes(stored, "big") if stored else 1,
            key_seq(last[0]) + member_count(last[1]) if last else 1,
        )
        # Stored at once as this version keeps it: a queue from an earlier version may hold only a count that
        # every write updated, which appends no longer do, and keys this version does not look at.
        with self._db.write_batch(sync=True) as batch:
            for key, value in count_entries(count, next_seq):
                batch.put(key, value)
            for key in old:
                batch.delete(key)
        return count, envelope_time(first[1]) if first else None, next_seq

    def _members_from(self, start: bytes) -> int:
        assert self._db is not None
        return sum(member_count(value) for _, value in self._db.iterator(start=start, stop=MESSAGES_END))

    async def close(self) -> None:
        """Finish every pending write, delete what was acknowledged and store the count, then close the database."""
        self._closing = True
        self._delete_acknowledged()
        self._count_due = True
        self._wake.set()
        if self._committer is not None:
            await self._committer
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_db)
        self._executor.shutdown(wait=True)

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None and not self._closing

    @property
    def healthy(self) -> bool:
        return self.is_open and not self._broken

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def data_available(self) -> asyncio.Event:
        return self._data

    # -- intake ------------------------------------------------------------------------------

    def reserve(self, count: int) -> int:
        """The first of ``count`` new sequence numbers, or :class:`QueueFull` under the reject policy."""
        if self._closing:
            raise StoreError("the receiver is shutting down")
        if not self.drop_oldest and self.count + self._committing + self._put_messages + count > self.max_messages:
            raise QueueFull(f"the queue holds {self.count} of at most {self.max_messages} messages")
        first = self._next_seq
        self._next_seq += count
        return first

    async def append(self, first_seq: int, envelopes: list[bytes]) -> None:
        """Store envelopes numbered from ``first_seq`` (reserved); returns once they are fsync'd, all or none."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._puts.extend(group_entries(first_seq, envelopes, *self._group_limits))
        self._put_messages += len(envelopes)
        self._put_waiters.append(future)
        self._wake.set()
        await future

    # -- forwarding --------------------------------------------------------------------------

    async def claim(self, max_messages: int, max_bytes: int) -> Claim:
        """The next messages past the cursor, in key order, within both limits. Stored values go whole, and at
        least one goes if any is there: a group stored under larger limits than today's still goes in one batch."""
        loop = asyncio.get_running_loop()
        claim = await loop.run_in_executor(self._executor, self._claim, max_messages, max_bytes)
        self.unclaimed -= claim.size
        # An empty claim means nothing is past the cursor: never let the count say otherwise (that
        # would have the forwarder claim in a loop).
        if self.unclaimed <= 0 or (not claim.size and self.healthy):
            self.unclaimed = 0
            self._data.clear()
        return claim

    def _claim(self, max_messages: int, max_bytes: int) -> Claim:
        if self._db is None:
            return Claim([], [])
        keys: list[bytes] = []
        values: list[bytes] = []
        nbytes = 0
        more = False
        size = 0
        for key, value in self._db.iterator(start=message_key(self._cursor + 1), stop=MESSAGES_END):
            members = member_count(value)
            if keys and (size + members > max_messages or nbytes + len(value) > max_bytes):
                more = True
                break
            keys.append(key)
            values.append(value)
            size += members
            nbytes += len(value)
            self._cursor = key_seq(key) + members - 1
        return Claim(keys, values, size, more)

    async def remove(self, claims: list[Claim]) -> None:
        """Forget acknowledged claims, oldest first. They leave the count at once and the disk in bulk: with the
        next commit once they hold :data:`DELETE_BATCH_BYTES`, when the queue empties, or on close."""
        claims = [claim for claim in claims if claim.keys]
        if not claims:
            return
        for claim in claims:
            self._acknowledged.extend(claim.keys)
            self._acknowledged_messages += claim.size
            self._acknowledged_bytes += sum(len(value) for value in claim.values)
            self.count -= claim.size
        last = claims[-1]
        past = key_seq(last.keys[-1]) + member_count(last.values[-1])
        loop = asyncio.get_running_loop()
        self.head_time = await loop.run_in_executor(self._executor, self._advance_floor, message_key(past))
        if self.count <= 0:
            self.head_time = None
        if self._acknowledged_bytes >= DELETE_BATCH_BYTES or self.count <= 0:
            self._delete_acknowledged()

    def _advance_floor(self, floor: bytes) -> float | None:
        """Move the floor past acknowledged keys (database thread) and return the time of the new head."""
        self._floor = max(self._floor, floor)
        try:
            return self._head_time()
        except plyvel.Error as exc:  # the head's age is for metrics; the acknowledgement stands
            log.warning("looking up the oldest message failed", extra={"error": str(exc)})
            return None

    def _head_time(self) -> float | None:
        """The time of the oldest message not acknowledged (database thread)."""
        for _, value in self._db.iterator(start=self._floor, stop=MESSAGES_END) if self._db else ():
            return envelope_time(value)
        return None

    def _delete_acknowledged(self) -> None:
        if self._acknowledged:
            self._deletes.extend(self._acknowledged)
            self._delete_messages += self._acknowledged_messages
            self._acknowledged, self._acknowledged_messages, self._acknowledged_bytes = [], 0, 0
            self._wake.set()

    # -- the single writer -------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A broken database is reopened before anything but an append waits on it.
            if not self._puts and not self._deletes and not (self._count_due and not self._broken):
                if self._closing:
                    return
                self._wake.clear()
                if not self._broken:
                    await self._wake.wait()
                    continue
                # After a failed write, heal without waiting for traffic: an unready receiver gets none.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), REOPEN_INTERVAL)
                if self._broken and not self._puts and not self._deletes and not self._closing:
                    await self._try_reopen()
                continue
            puts, put_waiters, added = self._puts, self._put_waiters, self._put_messages
            deletes, deleted = self._deletes, self._delete_messages
            self._puts, self._put_waiters, self._deletes = [], [], []
            self._put_messages = self._delete_messages = 0
            self._committing = added
            overflow = self.count + added - self.max_messages
            drop = min(max(0, overflow), self.unclaimed) if self.drop_oldest and puts else 0
            # What stays on disk: the unacknowledged messages and those acknowledged since these deletes were taken.
            stored = self.count + self._acknowledged_messages + added
            count_now = bool(deletes) or drop > 0 or self._count_due
            self._count_due = False
            change = _Change(puts, deletes, stored, drop, self._next_seq, count_now)
            started = time.perf_counter()
            try:
                applied = await loop.run_in_executor(self._executor, self._apply, change)
            except Exception as exc:  # plyvel.Error, OSError: nothing of this batch is stored
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("queue write failed", extra={"error": self.last_error, "messages": added})
                if self._on_write_error is not None:
                    self._on_write_error()
                error = StoreError(self.last_error)
                self._committing = 0
                # The deletes go with a later bulk delete: acknowledged messages are never lost, at most sent again.
                self._acknowledged = deletes + self._acknowledged
                self._acknowledged_messages += deleted
                self._count_due = self._count_due or change.count_now
                for future in put_waiters:
                    if not future.done():
                        future.set_exception(error)
                continue
            self._committing = 0  # no await until _account: nothing can reserve in between
            self._account(added, applied, puts)
            if self._on_commit is not None:
                self._on_commit(added, time.perf_counter() - started, applied.dropped)
            for future in put_waiters:
                if not future.done():
                    future.set_result(None)

    def _account(self, added: int, applied: _Applied, puts: list[tuple[bytes, bytes]]) -> None:
        was_empty = self.count == 0
        self.count += added - applied.dropped
        self.unclaimed += added - applied.dropped
        self.dropped += applied.dropped
        if applied.dropped:
            self.head_time = applied.head_time
        elif was_empty and puts:
            self.head_time = envelope_time(puts[0][1])
        if self.count == 0:
            self.head_time = None
        if added:
            self._data.set()

    def _apply(self, change: _Change) -> _Applied:
        if self._broken or self._db is None:
            self._reopen()
        db = self._db
        assert db is not None
        dropped = 0
        try:
            with db.write_batch(sync=True) as batch:
                for key in change.deletes:
                    batch.delete(key)
                if change.drop:
                    # The oldest messages the forwarder has not claimed: claimed ones are being sent. Whole
                    # groups go, so a few more than needed may.
                    for key, value in db.iterator(start=message_key(self._cursor + 1), stop=MESSAGES_END):
                        batch.delete(key)
                        dropped += member_count(value)
                        if dropped >= change.drop:
                            break
                for key, value in change.puts:
                    batch.put(key, value)
                if change.count_now:
                    # Claimed keys (deletes) and unclaimed ones (drops) never overlap, and every delete exists.
                    for key, value in count_entries(change.stored - dropped, change.next_seq):
                        batch.put(key, value)
        except Exception:
            # LevelDB keeps a failed write's error and refuses all later writes; reopen before the next one.
            self._broken = True
            raise
        return _Applied(dropped, self._head_time() if dropped else None)

    async def _try_reopen(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._reopen)
        except Exception as exc:  # still failing (disk still full?): try again later
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("queue database still unusable", extra={"error": self.last_error})

    def _open_db(self) -> plyvel.DB:
        try:
            return plyvel.DB(
                str(self.path), create_if_missing=True, paranoid_checks=True, write_buffer_size=WRITE_BUFFER_BYTES
            )
        except plyvel.CorruptionError as exc:
            self._lenient = True
            # A damaged record (a torn write after a power cut) must not keep the whole queue from
            # opening: open leniently, which skips what cannot be read, and say so loudly.
            log.error("queue database damaged; opening it without paranoid checks", extra={"error": str(exc)})
            return plyvel.DB(str(self.path), create_if_missing=True, write_buffer_size=WRITE_BUFFER_BYTES)

    def _reopen(self) -> None:
        self._close_db()
        self._db = self._open_db()
        self._broken = False
        log.warning("queue database reopened after an error", extra={"path": str(self.path)})
