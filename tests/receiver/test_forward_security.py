"""A receiver at the edge forwarding to a publisher elsewhere: over HTTPS, with a bearer token."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice_runtime.common.config import ConfigError
from sluice_runtime.receiver.app import build_app
from tests.publisher.test_inbound_security import https_publisher
from tests.receiver.support import eventually, settings, status_of
from tests.support.certs import make_certificates
from tests.support.inprocess import running_receiver


async def test_forwarding_over_tls_with_a_token(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "certs")
    token = tmp_path / "forward-token"
    token.write_text("edge-token-1\n")
    async with https_publisher(tmp_path, certificates) as url:
        trust = {"forwardTokenFile": str(token), "forwardCaFile": str(certificates.ca)}
        config = settings(tmp_path / "q", forwardUrl=url, **trust)
        async with running_receiver(config) as receiver:
            assert (await receiver.post("/rx/edge-1/readings/roof", json={"t": 1})).status == 200

            async def drained() -> bool:
                return (await status_of(receiver))["backlog"] == 0

            await eventually(drained, what="the message forwarded over TLS")

            # A revoked token: the publisher refuses, and the message waits in the queue.
            token.write_text("edge-token-revoked\n")
            assert (await receiver.post("/rx/edge-1/readings/roof", json={"t": 2})).status == 200

            async def refused() -> bool:
                error = (await status_of(receiver))["lastForwardError"] or ""
                return "HTTP 401" in error

            await eventually(refused, what="the publisher to refuse the revoked token")
            assert (await status_of(receiver))["backlog"] == 1
    lines = (tmp_path / "out" / "documents.ndjson").read_text().splitlines()
    assert len(lines) == 1


def test_an_unreadable_forward_token_stops_start_up(tmp_path: Path) -> None:
    config = settings(tmp_path / "q", forwardUrl="https://publisher:8081", forwardTokenFile=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"receiver\.forwardTokenFile"):
        build_app(config)
