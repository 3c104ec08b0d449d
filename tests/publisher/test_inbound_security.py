"""A publisher reached across networks: HTTPS with its own certificate, and a bearer token on POST /in."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sluice_runtime.common.config import ConfigError
from sluice_runtime.common.httpkit import start_site
from sluice_runtime.common.tls import ServerTlsSettings, server_ssl_context
from sluice_runtime.publisher.app import build_app
from sluice_runtime.publisher.settings import PublisherSettings
from tests.publisher.test_indexing import batch_body, readings
from tests.support.certs import Certificates, make_certificates
from tests.support.procs import free_port


@contextlib.asynccontextmanager
async def https_publisher(tmp_path: Path, certificates: Certificates) -> AsyncIterator[str]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# receivers at the edge\nedge-token-1\n\nedge-token-2\n")
    settings = PublisherSettings.model_validate(
        {
            "output": {"dir": str(tmp_path / "out")},
            "auth": {"tokenFile": str(tokens)},
            "tls": {"certFile": str(certificates.cert), "keyFile": str(certificates.key)},
        }
    )
    listen = f"127.0.0.1:{free_port()}"
    runner = await start_site(build_app(settings), listen, server_ssl_context(settings.tls, "publisher.tls"))
    try:
        yield f"https://{listen}/in"
    finally:
        await runner.cleanup()


async def post(url: str, token: str | None, ca: Path | None) -> int:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=batch_body(readings(2)), headers=headers, ssl=context) as response,
    ):
        return response.status


async def test_only_callers_with_a_token_and_the_ca_get_through(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "certs")
    async with https_publisher(tmp_path, certificates) as url:
        assert await post(url, "edge-token-2", certificates.ca) == 200
        assert await post(url, None, certificates.ca) == 401
        assert await post(url, "edge-token-3", certificates.ca) == 401
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(url, "edge-token-1", None)
    written = (tmp_path / "out" / "documents.ndjson").read_text().splitlines()
    assert len(written) == 2, "only the authorised batch was written"


def test_half_a_tls_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="certFile and keyFile go together"):
        server_ssl_context(ServerTlsSettings.model_validate({"certFile": "/x.crt"}), "publisher.tls")
