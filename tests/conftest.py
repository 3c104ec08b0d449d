"""Session fixtures for the real test bed: a Kubernetes control plane and two search engines.

``SLUICE_TEST_KUBECONFIG`` points the Kubernetes fixtures at a user's cluster instead, and
``SLUICE_TEST_ES_URL`` / ``SLUICE_TEST_OPENSEARCH_URL`` the engine fixtures at running engines.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import engines, provision
from tests.support.kube import KubeCluster, running_cluster
from tests.support.procs import ManagedProcess, wait_until

ROOT = Path(__file__).resolve().parents[1]

# Processes whose log tails are attached to the report of any failing test that used them.
_LOGGED: dict[str, list[ManagedProcess]] = {}


@pytest.fixture(scope="session")
def testbed_run_dir() -> Iterator[Path]:
    """A per-session directory readable by the engines' unprivileged user; logs are kept, data removed."""
    root = provision.engines_dir() / "runs" / uuid.uuid4().hex[:12]
    root.mkdir(parents=True)
    root.chmod(0o755)
    yield root
    for child in root.iterdir():
        if child.name != "logs":
            shutil.rmtree(child, ignore_errors=True)


@pytest.fixture(scope="session")
def testbed_log_dir(testbed_run_dir: Path) -> Path:
    logs = testbed_run_dir / "logs"
    logs.mkdir(exist_ok=True)
    return logs


@pytest.fixture(scope="session")
def kube(testbed_run_dir: Path, testbed_log_dir: Path) -> Iterator[KubeCluster]:
    external = os.environ.get("SLUICE_TEST_KUBECONFIG")
    if external:
        yield KubeCluster(Path(external), testbed_run_dir / "kube", [])
        return
    with running_cluster(testbed_run_dir / "kube", testbed_log_dir) as cluster:
        _LOGGED["kube"] = cluster.processes
        yield cluster


@pytest.fixture(scope="session")
def sluice_crd(kube: KubeCluster) -> None:
    """The IngestPipeline CRD from crds/, installed and Established."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))

    def established() -> bool:
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
        found = kube.kubectl("get", "crd", "ingestpipelines.sluice.dev", "-o", f"jsonpath={jsonpath}", check=False)
        return found.stdout.strip() == "True"

    # Polled rather than `kubectl wait`, which errors out while a new CRD has no conditions at all.
    wait_until(established, 60, "the IngestPipeline CRD Established")


@pytest.fixture
def namespace(kube: KubeCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _engine(
    kind: engines.EngineKind, env_var: str | None, run_dir: Path, log_dir: Path, secured: bool = False
) -> Iterator[engines.SearchEngine]:
    external = os.environ.get(env_var) if env_var else None
    if external:
        yield engines.SearchEngine(kind.name, external.rstrip("/"))
        return
    engine_dir = run_dir / (f"{kind.name}-secured" if secured else kind.name)
    engine = engines.launch_engine(kind, engine_dir, log_dir, secured=secured)
    assert engine.process is not None
    _LOGGED[engine.name] = [engine.process]
    try:
        yield engine
    finally:
        engine.process.stop()
        shutil.rmtree(engine_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def elasticsearch(testbed_run_dir: Path, testbed_log_dir: Path) -> Iterator[engines.SearchEngine]:
    yield from _engine(engines.ELASTICSEARCH, "SLUICE_TEST_ES_URL", testbed_run_dir, testbed_log_dir)


@pytest.fixture(scope="session")
def opensearch(testbed_run_dir: Path, testbed_log_dir: Path) -> Iterator[engines.SearchEngine]:
    yield from _engine(engines.OPENSEARCH, "SLUICE_TEST_OPENSEARCH_URL", testbed_run_dir, testbed_log_dir)


@pytest.fixture(scope="session")
def secured_elasticsearch(testbed_run_dir: Path, testbed_log_dir: Path) -> Iterator[engines.SearchEngine]:
    """Elasticsearch with HTTPS (a CA made for the session) and a file-realm superuser."""
    yield from _engine(engines.ELASTICSEARCH, None, testbed_run_dir, testbed_log_dir, secured=True)


@pytest.fixture(params=["elasticsearch", "opensearch"])
def search_engine(request: pytest.FixtureRequest) -> engines.SearchEngine:
    engine: engines.SearchEngine = request.getfixturevalue(request.param)
    return engine


_FIXTURE_LOGS = {
    "kube": "kube",
    "namespace": "kube",
    "elasticsearch": "elasticsearch",
    "opensearch": "opensearch",
    "secured_elasticsearch": "elasticsearch-secured",
}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        used = {_FIXTURE_LOGS[name] for name in getattr(item, "fixturenames", ()) if name in _FIXTURE_LOGS}
        if "search_engine" in getattr(item, "fixturenames", ()):
            used |= {"elasticsearch", "opensearch"}
        for group in sorted(used):
            for process in _LOGGED.get(group, []):
                report.sections.append((f"{process.name} log tail", process.log_tail()))
    return report
