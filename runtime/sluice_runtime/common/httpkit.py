"""HTTP plumbing both roles share: health, readiness, status and metrics routes, and serving.

Liveness (``/healthz``) answers as long as the event loop turns. Readiness (``/readyz``) and
``/status`` are supplied by the role, which knows whether its storage or engine is usable.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import AfterValidator

ReadinessCheck = Callable[[], tuple[bool, str]]
StatusReport = Callable[[], Mapping[str, Any]]


def json_response(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"status": "FAIL", "message": message}, status=status, headers=headers)


def add_observability_routes(
    app: web.Application, registry: CollectorRegistry, role: str, ready: ReadinessCheck, status: StatusReport
) -> None:
    """``/status`` opens with what every role reports the same way: role, readiness and uptime."""
    started = time.monotonic()

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        is_ready, reason = ready()
        return json_response({"ready": is_ready, "reason": reason}, status=200 if is_ready else 503)

    async def status_handler(_: web.Request) -> web.Response:
        is_ready, reason = ready()
        uptime = round(time.monotonic() - started, 3)
        return json_response({"role": role, "ready": is_ready, "reason": reason, "uptimeSeconds": uptime, **status()})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_handler)
    app.router.add_get("/metrics", metrics)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {listen!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _valid_listen(value: str) -> str:
    parse_listen(value)
    return value


# A settings field holding HOST:PORT, refused at load time rather than when the server binds.
ListenAddress = Annotated[str, AfterValidator(_valid_listen)]


async def start_site(app: web.Application, listen: str, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Start serving ``app``; the caller owns the returned runner and must clean it up."""
    host, port = parse_listen(listen)
    # The default access logger formats a line per request even when the log level drops it.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context).start()
    return runner


async def wait_for_shutdown_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# A batch of 4,000 messages is about 20,000 short-lived dicts and lists, none of them in a cycle. At
# CPython's default of a collection every 700 new containers, the collector ran dozens of times per
# batch and re-scanned the batches still in flight: a quarter of the publisher's CPU (py-spy, end to
# end). Collect young objects every 50,000 instead; cycles are rare here and still get collected.
YOUNG_COLLECTION_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Fewer collections of young objects, and none over what start-up made (modules, settings)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
    gc.freeze()


def run_async(main: Callable[[], Awaitable[int]]) -> int:
    tune_garbage_collector()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        return asyncio.run(main())
    return uvloop.run(main())
