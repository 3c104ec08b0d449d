"""``POST /rx/{producer}/{key}/{label...}`` (and ``/rxs/...``): one JSON object, or NDJSON lines, onto the queue.

A request is answered 200 only after its messages are fsync'd (group commit). Everything a client
can get wrong is answered with a 4xx naming the problem, before anything is stored; NDJSON is all
or nothing. The hot path is kept short: one ``await`` to read the body, one for the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from sluice_runtime.common.envelope import format_seq, utc_now_rfc3339
from sluice_runtime.common.httpkit import error_response, json_response
from sluice_runtime.common.tokens import TokenFile
from sluice_runtime.receiver.metrics import ReceiverMetrics
from sluice_runtime.receiver.queue import MessageQueue, QueueFull, StoreError
from sluice_runtime.receiver.settings import ReceiverSettings
from sluice_runtime.receiver.validation import (
    EnvelopeEncoder,
    Rejected,
    body_kind,
    check_message,
    check_route,
    envelope_uuid,
    parse_ndjson,
)

log = logging.getLogger("sluice.receiver.intake")

# The label-less forms exist only to answer "label must not be empty" rather than a bare 404.
ROUTES = (
    "/rx/{producer}/{key}/{label:.*}",
    "/rxs/{producer}/{key}/{label:.*}",
    "/rx/{producer}/{key}",
    "/rxs/{producer}/{key}",
)


class Intake:
    def __init__(
        self, settings: ReceiverSettings, queue: MessageQueue, metrics: ReceiverMetrics, tokens: TokenFile | None
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self.tokens = tokens
        self.accepting = True
        self._retry_after = str(settings.queue.retry_after)

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            response = await self._handle(request)
        except Rejected as exc:
            # Logged at debug only: a misbehaving client must not flood the logs; the metrics count it.
            log.debug("request refused", extra={"status": exc.status, "reason": exc.message, "path": request.path})
            self.metrics.rejected.labels(str(exc.status)).inc()
            if exc.status < 500:
                self.metrics.message_errors.inc()
            headers = {"Retry-After": self._retry_after} if exc.status in (503, 507) else None
            if exc.status == 401:
                headers = {"WWW-Authenticate": 'Bearer realm="sluice"'}
            response = error_response(exc.status, exc.message, headers=headers)
        else:
            self.metrics.ack_seconds.observe(time.perf_counter() - started)
        self.metrics.response_time.observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        if not self.accepting:
            raise Rejected(503, "the receiver is shutting down; retry")
        if self.tokens is not None and not self.tokens.allows(request.headers.get("Authorization")):
            raise Rejected(401, "a valid bearer token is required (Authorization: Bearer <token>)")
        kind = body_kind(request.headers.get("Content-Type", ""))
        info = request.match_info
        route = check_route(info["producer"], info["key"], info.get("label", ""))
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Rejected(413, f"the body is {request.content_length} bytes; the limit is {limit}")
        try:
            # A client that sends headers and then stalls must not hold a connection and a handler forever.
            async with asyncio.timeout(self.settings.body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Rejected(413, f"the body is larger than the limit of {limit} bytes") from None
        except TimeoutError:
            raise Rejected(408, f"the body did not arrive within {self.settings.body_timeout:g}s") from None
        except ConnectionError:
            # The client hung up mid-body: nothing to answer, nothing stored, and no traceback in the log.
            raise Rejected(400, "the connection closed before the body was complete") from None
        if kind == "json":
            if not body.strip():
                raise Rejected(400, "the body is empty; send one JSON object")
            check_message(body, self.settings.max_depth)
            payloads = [body]
        else:
            payloads = parse_ndjson(body, self.settings.max_depth)
        try:
            first = self.queue.reserve(len(payloads))
        except QueueFull as exc:
            raise Rejected(503, f"{exc}; retry later") from None
        except StoreError as exc:
            raise Rejected(503, str(exc)) from None
        envelopes = EnvelopeEncoder(route, utc_now_rfc3339()).encode(first, payloads)
        try:
            await self.queue.append(first, envelopes)
        except StoreError as exc:
            raise Rejected(507, f"the message could not be stored, nothing was kept: {exc}") from None
        self.metrics.received.inc(len(envelopes))
        if kind == "json":
            return json_response({"status": "OK", "seq": format_seq(first), "uuid": envelope_uuid(envelopes[0])})
        return json_response(
            {
                "status": "OK",
                "count": len(envelopes),
                "firstSeq": format_seq(first),
                "lastSeq": format_seq(first + len(envelopes) - 1),
            }
        )
