"""The runtime's roles served in the test's own event loop, as their commands serve them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sluice_runtime.publisher.app import build_app as build_publisher_app
from sluice_runtime.publisher.settings import PublisherSettings
from sluice_runtime.receiver.app import build_app as build_receiver_app
from sluice_runtime.receiver.settings import ReceiverSettings


class ServedAsInProduction(TestServer):
    """aiohttp's test server cancels a handler when its client goes away; ``sluice receiver`` and ``sluice
    publisher`` (common.httpkit.start_site) let it finish, and a crashed sender must meet that behaviour."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[TestClient]:
    """``app`` on loopback in this event loop; a fixed ``port`` lets a stopped server come back at the same URL."""
    client = TestClient(ServedAsInProduction(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def running_receiver(config: ReceiverSettings) -> contextlib.AbstractAsyncContextManager[TestClient]:
    return serving(build_receiver_app(config))


def running_publisher(config: PublisherSettings, port: int = 0) -> contextlib.AbstractAsyncContextManager[TestClient]:
    """The real publisher (``sluice publisher``'s application) in this event loop."""
    return serving(build_publisher_app(config), port)


