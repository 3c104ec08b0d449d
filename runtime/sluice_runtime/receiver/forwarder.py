"""The forwarder: sends the queue to the publisher as rxtx batches ``{uuid, size, messages}``, through an
:class:`Outlet`: the publisher's ``POST /in``, or a publisher in the same process (``sluice run``).

Batches are claimed from the head in key order and sent back-to-back while a backlog exists; a
partial batch waits at most ``batch.maxWait`` for company. Up to ``batch.maxInFlight`` batches
are outstanding at once. Each one is retried (exponential backoff with full jitter, at least
``Retry-After``) until the publisher answers 2xx.

Acknowledgements reach the queue strictly in claim order: a batch acknowledged ahead of an earlier
one waits in the window until everything before it is acknowledged too. So the database always
holds one contiguous run of keys, from the oldest message not yet deleted in bulk, and a restart
resends from there; a message may go twice, but it is the same stored envelope byte for byte, and the publisher's
``_id`` (the envelope uuid) makes the repeat harmless. A batch's uuid is made once, so a retried
batch is identical too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field

from sluice_runtime.common.envelope import encode_batch
from sluice_runtime.receiver.metrics import ReceiverMetrics
from sluice_runtime.receiver.outlet import BatchNotTaken, Outlet
from sluice_runtime.receiver.queue import Claim, MessageQueue
from sluice_runtime.receiver.settings import BatchSettings

log = logging.getLogger("sluice.receiver.forwarder")

RETRY_AFTER_CAP = 300.0  # a Retry-After longer than this is treated as this


def backoff_delay(attempt: int, initial: float, ceiling: float, retry_after: float | None = None) -> float:
    """Seconds before retry number ``attempt`` (1-based): full jitter over an exponential bound, and never
    less than the server's ``Retry-After``."""
    bound = min(ceiling, initial * 2 ** max(0, attempt - 1))
    delay = random.uniform(bound / 2, bound)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay


# Why a batch was claimed when it was: it was full, it is the rest of a backlog (sent back-to-back), or it is a
# partial batch that waited ``maxWait`` for company. Counted, so an operator (and a test) can see the choice.
BATCH_REASONS = ("full", "backlog", "maxWait")


def batch_due_reason(
    unclaimed: int, max_messages: int, waited: float, max_wait: float, full_backlog: bool
) -> str | None:
    """Why to claim now (one of :data:`BATCH_REASONS`), or None to wait: a full batch is always due, the rest of a
    backlog goes back-to-back, and a partial batch once it has waited ``max_wait``."""
    if unclaimed <= 0:
        return None
    if unclaimed >= max_messages:
        return "full"
    if full_backlog:
        return "backlog"
    return "maxWait" if waited >= max_wait else None


@dataclass
class _Slot:
    claim: Claim
    body: bytes
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Forwarder:
    def __init__(
        self, queue: MessageQueue, outlet: Outlet | None, settings: BatchSettings, metrics: ReceiverMetrics
    ) -> None:
        self.queue = queue
        self.outlet = outlet
        self.endpoint = outlet.description if outlet is not None else None
        self.settings = settings
        self.metrics = metrics
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.batches_sent = 0
        self.batches_claimed = dict.fromkeys(BATCH_REASONS, 0)
        # The delay chosen before the latest retry: at least the publisher's Retry-After, when it sent one.
        self.last_retry_delay: float | None = None
        self._window: deque[_Slot] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return sum(1 for slot in self._window if not slot.done.is_set())

    def start(self) -> None:
        if self.outlet is None:
            log.warning("no forwardUrl: messages are queued but not forwarded (sluice run --es-url indexes in one hop)")
            return
        self._task = asyncio.create_task(self._run_forever(), name="sluice-forwarder")

    async def stop(self) -> None:
        """Stop sending; unacknowledged batches stay on disk and go again after the next start."""
        tasks = [slot.task for slot in self._window if slot.task is not None]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.outlet is not None:
            await self.outlet.close()

    async def _run_forever(self) -> None:
        # A bug here must not silently end forwarding while intake carries on filling the disk.
        while True:
            try:
                await self._run()
            except Exception as exc:
                self.last_error = f"forwarder error: {type(exc).__name__}: {exc}"
                log.exception("forwarder loop failed; restarting it")
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        # True when the previous claim stopped at a limit: the rest of the backlog goes without waiting.
        full_backlog = True
        pending_since: float | None = None
        while True:
            await self._retire_acknowledged()
            if len(self._window) >= self.settings.max_in_flight:
                await self._window[0].done.wait()
                continue
            unclaimed = self.queue.unclaimed
            if unclaimed <= 0:
                pending_since = None
                await self._wait_for(self.queue.data_available)
                continue
            now = time.monotonic()
            pending_since = pending_since or now
            waited = now - pending_since
            reason = batch_due_reason(
                unclaimed, self.settings.max_messages, waited, self.settings.max_wait, full_backlog
            )
            if reason is None:
                # A batch may fill up before the partial one is due: look again every 50 ms.
                await self._wait_for(None, within=min(self.settings.max_wait - waited, 0.05))
                continue
            claim = await self.queue.claim(self.settings.max_messages, self.settings.max_bytes)
            if not claim.size:
                continue
            self.batches_claimed[reason] += 1
            self.metrics.batches_claimed.labels(reason).inc()
            full_backlog = claim.more
            pending_since = now if self.queue.unclaimed > 0 else None
            slot = _Slot(claim, encode_batch(claim.batch_items(), claim.size))
            slot.task = asyncio.create_task(self._deliver(slot), name="sluice-forward-batch")
            self._window.append(slot)

    async def _wait_for(self, event: asyncio.Event | None, within: float | None = None) -> None:
        """Until ``event`` is set, the oldest batch in flight is acknowledged, or ``within`` seconds pass."""
        sources = [event, self._window[0].done if self._window else None]
        waits = [asyncio.ensure_future(source.wait()) for source in sources if source is not None]
        if not waits:
            await asyncio.sleep(within or 0)
            return
        try:
            await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _retire_acknowledged(self) -> None:
        """Delete the acknowledged prefix of the window, oldest first."""
        done: list[_Slot] = []
        while self._window and self._window[0].done.is_set():
            done.append(self._window.popleft())
        if not done:
            return
        # No write here: the queue deletes acknowledged messages in bulk, and retries a failed delete itself.
        await self.queue.remove([slot.claim for slot in done])

    async def _deliver(self, slot: _Slot) -> None:
        assert self.outlet is not None
        attempt = 0
        started = time.perf_counter()
        while True:
            attempt += 1
            try:
                await self.outlet.send(slot.body)
                break
            except BatchNotTaken as exc:
                error, retry_after = str(exc), exc.retry_after
            except Exception as exc:  # a fault in the destination must not stall the window: it is retried too
                log.exception("sending a batch failed")
                error, retry_after = f"{type(exc).__name__}: {exc}", None
            self.last_error = error
            self.metrics.tx_failures.inc()
            delay = backoff_delay(attempt, self.settings.retry_initial, self.settings.retry_max, retry_after)
            self.last_retry_delay = delay
            self.metrics.retry_delay.set(delay)
            log.warning(
                "batch not accepted; retrying",
                extra={"error": error, "messages": slot.claim.size, "attempt": attempt, "retryIn": round(delay, 3)},
            )
            await asyncio.sleep(delay)
        self.batches_sent += 1
        self.last_success = time.time()
        self.metrics.tx_batches.inc()
        self.metrics.tx_messages.inc(slot.claim.size)
        self.metrics.forward_seconds.observe(time.perf_counter() - started)
        slot.done.set()
