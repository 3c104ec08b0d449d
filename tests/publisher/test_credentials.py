"""The publisher against an Elasticsearch with HTTPS and authentication, as production clusters run.

API keys are covered by unit tests of the header only: the test bed's minimal Elasticsearch lacks the
analysis module its ``.security`` index needs, so it cannot issue keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice_runtime.publisher.settings import PublisherSettings
from tests.publisher.test_indexing import batch_body, readings, running_publisher, stored_ids, unique_name
from tests.support.engines import SearchEngine

pytestmark = pytest.mark.engines


def secured_settings(engine: SearchEngine, name: str, **elasticsearch: object) -> PublisherSettings:
    return PublisherSettings.model_validate(
        {"elasticsearch": {"url": engine.url, "index": f"{name}-%{{+yyyy.MM}}", "retryTimeout": "2s", **elasticsearch}}
    )


def secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    # As a Kubernetes Secret mounts it, or as `echo` writes it: the trailing newline must not matter.
    path.write_text(value + "\n")
    return str(path)


async def test_basic_auth_from_a_file_over_tls_with_a_custom_ca(
    secured_elasticsearch: SearchEngine, tmp_path: Path
) -> None:
    security = secured_elasticsearch.security
    assert security is not None
    name = unique_name()
    settings = secured_settings(
        secured_elasticsearch,
        name,
        username=security.username,
        passwordFile=secret_file(tmp_path, "password", security.password),
        caFile=str(security.ca_file),
    )
    async with running_publisher(settings) as client:
        response = await client.post("/in", data=batch_body(readings(5)))
        assert response.status == 200, await response.text()
    assert len(stored_ids(secured_elasticsearch, f"{name}-*")) == 5


@pytest.mark.parametrize(
    ("wrong_password", "trust_ca", "problem"),
    [(True, True, "401"), (False, False, "certificate verify failed")],
    ids=["wrong-password", "verification-on-by-default"],
)
async def test_refused_connections_are_503_naming_the_cause(
    secured_elasticsearch: SearchEngine, tmp_path: Path, wrong_password: bool, trust_ca: bool, problem: str
) -> None:
    security = secured_elasticsearch.security
    assert security is not None
    password = "not-the-password" if wrong_password else security.password
    settings = secured_settings(
        secured_elasticsearch,
        unique_name(),
        username=security.username,
        passwordFile=secret_file(tmp_path, "password", password),
        **({"caFile": str(security.ca_file)} if trust_ca else {}),
    )
    async with running_publisher(settings) as client:
        response = await client.post("/in", data=batch_body(readings(1)))
        assert response.status == 503
        assert problem in (await response.json())["message"]
