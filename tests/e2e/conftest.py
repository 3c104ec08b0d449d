"""Fixtures of the end-to-end tests: the harness kubelet, an operator wired to it, and the weather pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice_operator._core.probes import ADDRESS_MAP_ENV
from tests.e2e.harness import Kubelet, running_kubelet

# start_operator is a fixture (the operator as a subprocess, stopped at the end); imported here to be shared.
from tests.operator.test_operator_kube import Operator, start_operator  # noqa: F401
from tests.support.engines import SearchEngine
from tests.support.kube import KubeCluster

ROOT = Path(__file__).resolve().parents[2]
_KUBELET = pytest.StashKey[Kubelet]()


@pytest.fixture
def kubelet(
    request: pytest.FixtureRequest, kube: KubeCluster, namespace: str, testbed_log_dir: Path, tmp_path: Path
) -> Iterator[Kubelet]:
    work = tmp_path / "kubelet"
    work.mkdir()
    with running_kubelet(kube.kubeconfig, namespace, work, testbed_log_dir) as harness:
        request.node.stash[_KUBELET] = harness
        yield harness
        # A process that crashed without the test's doing (a bad rendered arg, env var or path) fails the test.
        harness.check()


@pytest.fixture
def wired_operator(request: pytest.FixtureRequest, kube: KubeCluster, kubelet: Kubelet) -> Callable[[str], Operator]:
    """Starts operators that read the receivers' /status through the harness's address map (stopped at the end)."""
    # By name: the imported fixture cannot also be a parameter name here without shadowing the import.
    launch: Callable[..., Operator] = request.getfixturevalue("start_operator")

    def start(identity: str = "op-a") -> Operator:
        return launch(identity, env={**kube.env, ADDRESS_MAP_ENV: str(kubelet.address_map)})

    return start


@pytest.fixture
def operator(wired_operator: Callable[[str], Operator]) -> Operator:
    return wired_operator("op-a")


@pytest.fixture
def index_prefix() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def wx_pipeline(namespace: str, index_prefix: str, elasticsearch: SearchEngine) -> dict[str, Any]:
    """examples/wx.yaml pointed at the test Elasticsearch, with indices and template of this test only."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "wx.yaml").read_text())
    doc["metadata"] = {"name": "wx", "namespace": namespace}
    spec = doc["spec"]
    spec["elasticsearch"]["url"] = elasticsearch.url
    spec["elasticsearch"]["index"] = f"{index_prefix}-%{{+yyyy.MM}}"
    spec["indexTemplate"]["name"] = index_prefix
    spec["indexTemplate"]["patterns"] = [f"{index_prefix}-*"]
    # A partial batch waits this long for company; the example's 10 s would only slow the tests down.
    spec["receiver"]["batch"]["maxWait"] = "1s"
    return doc


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test shows the log tails of the runtime processes the harness was running for it."""
    report = yield
    harness = item.stash.get(_KUBELET, None)
    if report.failed and harness is not None:
        for container in harness.containers():
            report.sections.append((f"{container.process.name} log tail", container.process.log_tail()))
    return report
