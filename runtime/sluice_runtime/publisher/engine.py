"""The HTTP connection to Elasticsearch or OpenSearch: credentials, TLS and error classification.

Only the REST API is used, so Elasticsearch 7/8 and OpenSearch 1/2 behave alike (the official
Python client for Elasticsearch 8 refuses to talk to OpenSearch).
"""

from __future__ import annotations

import base64
import logging
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from sluice_runtime.common.config import ConfigError
from sluice_runtime.common.tls import client_ssl_context
from sluice_runtime.publisher.settings import ElasticsearchSettings

log = logging.getLogger("sluice.publisher.engine")

CONNECT_TIMEOUT = 5.0


class EngineUnreachable(Exception):
    """No connection could be made: the engine is down, or its address or certificate is wrong."""


class EngineError(Exception):
    """A request failed on its way (timeout, dropped connection) or the engine is busy; trying again may work."""


class EngineRefused(Exception):
    """The engine refuses requests for a reason that retrying will not fix soon: credentials, permissions, limits."""


@dataclass(frozen=True, slots=True)
class EngineResponse:
    status: int
    body: bytes
    retry_after: str | None

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    def error_reason(self) -> str:
        """The engine's own explanation of a failed request, for logs and status."""
        try:
            error = orjson.loads(self.body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return f"HTTP {self.status}: {self.body[:200].decode(errors='replace')}"
        if isinstance(error, dict):
            return f"HTTP {self.status}: {error.get('type')}: {error.get('reason')}"
        return f"HTTP {self.status}: {error}"


class EngineClient:
    def __init__(self, settings: ElasticsearchSettings) -> None:
        if settings.url is None:
            raise ValueError("an engine client needs elasticsearch.url")
        self.url = settings.url
        self._headers = auth_headers(settings)
        self._ssl = ssl_context(settings) if self.url.startswith("https://") else None
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout, sock_connect=CONNECT_TIMEOUT)
        self._limit = settings.max_concurrent_requests
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # A couple of connections beyond the bulk limit keep template checks from queueing behind bulks.
        connector = aiohttp.TCPConnector(limit=self._limit + 2, ssl=self._ssl or True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> EngineResponse:
        if self._session is None:
            raise RuntimeError("EngineClient.start() was not awaited")
        if body is not None and headers is None:
            headers = {"Content-Type": "application/json"}
        try:
            async with self._session.request(method, self.url + path, data=body, headers=headers) as response:
                return EngineResponse(response.status, await response.read(), response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:
            raise EngineUnreachable(f"cannot connect to {self.url}: {exc.os_error or exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"{method} {path} failed: {type(exc).__name__}: {exc}") from exc

    async def request_json(self, method: str, path: str, body: Any = None) -> EngineResponse:
        return await self.request(method, path, None if body is None else orjson.dumps(body))


def auth_headers(settings: ElasticsearchSettings) -> dict[str, str]:
    api_key = _secret(settings.api_key, settings.api_key_file, "apiKeyFile")
    if api_key:
        # ES hands out keys both as "encoded" (base64 of id:key) and as the id and key apart.
        encoded = base64.b64encode(api_key.encode()).decode() if ":" in api_key else api_key
        return {"Authorization": f"ApiKey {encoded}"}
    password = _secret(settings.password, settings.password_file, "passwordFile")
    if settings.username is not None and password is not None:
        token = base64.b64encode(f"{settings.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def _secret(inline: Any, file: Path | None, key: str) -> str | None:
    if inline is not None:
        return str(inline.get_secret_value())
    if file is None:
        return None
    try:
        # Secrets mounted from Kubernetes or written by `echo` often end with a newline.
        return file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"publisher.elasticsearch.{key}: cannot read {file}: {exc}") from exc


def ssl_context(settings: ElasticsearchSettings) -> ssl.SSLContext:
    context = client_ssl_context(settings.ca_file, "publisher.elasticsearch.caFile")
    if not settings.tls_verify:
        log.warning("TLS certificate verification is off for %s", settings.url)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def backoff_delay(attempt: int, ceiling: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (from 1): 0.1 s doubling up to ``ceiling``.

    Jitter keeps concurrent batches that were refused together from coming back together.
    """
    return min(ceiling, 0.1 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
