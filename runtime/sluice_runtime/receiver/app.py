"""The receiver's HTTP application: intake, the queue, the forwarder, health, status and metrics.

Everything with a lifetime hangs on the application: the queue is opened and the forwarder
started in ``cleanup_ctx``; on shutdown new requests are refused, requests already waiting for a
commit get their answer, the forwarder stops (unacknowledged batches stay on disk) and the
database is flushed and closed. Running the application is all a caller has to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from sluice_runtime.common.config import ConfigError
from sluice_runtime.common.envelope import format_seq
from sluice_runtime.common.httpkit import add_observability_routes
from sluice_runtime.common.tls import client_ssl_context
from sluice_runtime.common.tokens import open_token_file, read_first_token
from sluice_runtime.receiver.forwarder import Forwarder
from sluice_runtime.receiver.intake import ROUTES, Intake
from sluice_runtime.receiver.metrics import ReceiverMetrics
from sluice_runtime.receiver.outlet import HttpOutlet, Outlet
from sluice_runtime.receiver.queue import MessageQueue
from sluice_runtime.receiver.settings import ReceiverSettings
from sluice_runtime.receiver.stored import group_size

log = logging.getLogger("sluice.receiver")


class Receiver:
    """The parts of one receiver, and its readiness and status reports."""

    def __init__(self, settings: ReceiverSettings, metrics: ReceiverMetrics, outlet: Outlet | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.queue = MessageQueue(
            settings.data_dir,
            settings.queue.max_messages,
            drop_oldest=settings.queue.when_full == "dropOldest",
            on_commit=metrics.committed,
            on_write_error=metrics.db_errors.inc,
            group_messages=group_size(settings.batch.max_messages),
            group_bytes=settings.batch.max_bytes,
        )
        self.intake = Intake(settings, self.queue, metrics, open_token_file(settings.auth, "receiver.auth"))
        if settings.forward_token_file is not None:
            try:
                read_first_token(settings.forward_token_file)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise ConfigError(f"receiver.forwardTokenFile: {exc}") from None
        if outlet is None and settings.forward_endpoint is not None:
            outlet = HttpOutlet(
                settings.forward_endpoint,
                settings.batch.request_timeout,
                token_file=settings.forward_token_file,
                ssl_context=client_ssl_context(settings.forward_ca_file, "receiver.forwardCaFile")
                if settings.forward_ca_file
                else None,
            )
        self.forwarder = Forwarder(self.queue, outlet, settings.batch, metrics)
        self.shutting_down = False
        metrics.bind_live(lambda: self.queue.count, self.oldest_age, lambda: self.forwarder.in_flight)

    def oldest_age(self) -> float:
        head = self.queue.head_time
        return max(0.0, time.time() - head) if head is not None and self.queue.count else 0.0

    def ready(self) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "shutting down"
        if not self.queue.is_open:
            return False, "queue database not open"
        if not self.queue.healthy:
            return False, f"queue database error: {self.queue.last_error}"
        return True, "ok"

    def status(self) -> Mapping[str, Any]:
        queue = self.queue
        return {
            "backlog": queue.count,
            "maxMessages": queue.max_messages,
            "whenFull": self.settings.queue.when_full,
            "oldestMessageAgeSeconds": round(self.oldest_age(), 3),
            "inFlightBatches": self.forwarder.in_flight,
            "forwardUrl": self.forwarder.endpoint,
            "batchesForwarded": self.forwarder.batches_sent,
            "batchesClaimed": dict(self.forwarder.batches_claimed),
            "lastForwardError": self.forwarder.last_error,
            "lastRetryDelaySeconds": _rounded(self.forwarder.last_retry_delay),
            "lastDatabaseError": queue.last_error,
            "dropped": queue.dropped,
            "seq": format_seq(queue.next_seq - 1) if queue.next_seq > 1 else None,
            "nextSeq": queue.next_seq,
            **self._outlet_status(),
        }

    def _outlet_status(self) -> Mapping[str, Any]:
        outlet = self.forwarder.outlet
        report = outlet.status() if outlet is not None else None
        return {"publisher": report} if report is not None else {}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


# The receiver behind an application, for callers (and tests) that need its queue or forwarder.
RECEIVER_KEY: web.AppKey[Receiver] = web.AppKey("sluice_receiver", Receiver)


def build_app(
    settings: ReceiverSettings, registry: CollectorRegistry | None = None, outlet: Outlet | None = None
) -> web.Application:
    """The receiver as an aiohttp application. Raises ConfigError for an unreadable token or CA file.

    Batches go to ``outlet`` when one is given, and otherwise to ``forwardUrl``."""
    registry = registry or CollectorRegistry()
    receiver = Receiver(settings, ReceiverMetrics(registry), outlet)
    # Bodies over the limit make request.read() raise; the handler turns that into a JSON 413.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[RECEIVER_KEY] = receiver
    for path in ROUTES:
        app.router.add_post(path, receiver.intake.handle)
    add_observability_routes(app, registry, "receiver", receiver.ready, receiver.status)
    if settings.cors.allow_origins:
        _add_cors(app, settings.cors.allow_origins)

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        await receiver.queue.open()
        receiver.forwarder.start()
        log.info(
            "receiver started",
            extra={"dataDir": str(settings.data_dir), "forwardUrl": receiver.forwarder.endpoint},
        )
        yield
        # By now the server has stopped listening and in-flight handlers have had their answers.
        await receiver.forwarder.stop()
        await receiver.queue.close()
        log.info("receiver stopped", extra={"backlog": receiver.queue.count})

    async def stop_accepting(_: web.Application) -> None:
        receiver.shutting_down = True
        receiver.intake.accepting = False

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(stop_accepting)
    return app


def _add_cors(app: web.Application, allowed: list[str]) -> None:
    any_origin = "*" in allowed

    def allow(origin: str | None) -> str | None:
        if not origin:
            return None
        return "*" if any_origin else origin if origin in allowed else None

    async def preflight(request: web.Request) -> web.Response:
        origin = allow(request.headers.get("Origin"))
        if origin is None:
            return web.Response(status=403, text="origin not allowed")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = allow(request.headers.get("Origin"))
        if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    for path in ROUTES:
        app.router.add_route("OPTIONS", path, preflight)
    app.on_response_prepare.append(add_headers)
