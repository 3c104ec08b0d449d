"""Where the forwarder's batches go: an :class:`Outlet`. Over the network that is a publisher's ``POST /in``
(:class:`HttpOutlet`); ``sluice run`` supplies one that calls a publisher in the same process."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from sluice_runtime.common.tokens import read_first_token


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from a publisher; the exponential backoff applies


class BatchNotTaken(Exception):
    """The destination did not take a batch; it is sent again after a backoff of at least ``retry_after``."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Outlet(Protocol):
    """Where batches go: a publisher's ``POST /in`` across the network, or a publisher in the same process."""

    @property
    def description(self) -> str:
        """What ``/status`` shows as ``forwardUrl``."""
        ...

    async def send(self, body: bytes) -> None:
        """Return once every message of the batch is stored or dead-lettered; raise :class:`BatchNotTaken`
        to have it sent again."""
        ...

    async def close(self) -> None: ...

    def status(self) -> Mapping[str, Any] | None:
        """What the destination reports about itself in the receiver's ``/status``, if anything."""
        ...


class HttpOutlet:
    """A publisher's ``POST /in``: a 2xx takes the batch; anything else, or no answer, means a retry."""

    def __init__(
        self, endpoint: str, timeout: float, token_file: Path | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.description = endpoint
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._token_file = token_file
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _auth_header(self) -> dict[str, str] | None:
        # Read per batch, not per process: a rotated Secret applies without a restart.
        return {"Authorization": f"Bearer {read_first_token(self._token_file)}"} if self._token_file else None

    async def send(self, body: bytes) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers={"Content-Type": "application/json"}
            )
        try:
            async with self._session.post(self.description, data=body, headers=self._auth_header()) as response:
                text = await response.read()
                if 200 <= response.status < 300:
                    return
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                reason = f"HTTP {response.status} from {self.description}: {text[:300].decode(errors='replace')}"
        except Exception as exc:  # connection refused, reset, timeout, DNS...: all worth a retry
            raise BatchNotTaken(f"{type(exc).__name__} posting to {self.description}: {exc}") from None
        raise BatchNotTaken(reason, retry_after)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def status(self) -> None:
        return None  # the publisher answers for itself on its own /status
