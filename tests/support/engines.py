"""Elasticsearch and OpenSearch single nodes on loopback, run as an unprivileged user."""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import provision
from tests.support.certs import make_certificates
from tests.support.procs import ManagedProcess, free_port

READY_TIMEOUT = 180.0


@dataclass(frozen=True)
class EngineKind:
    name: str
    home: Path
    launcher: str
    java_home_env: str
    conf_env: str
    java_opts_env: str


ELASTICSEARCH = EngineKind(
    "elasticsearch", provision.elasticsearch_home(), "elasticsearch", "ES_JAVA_HOME", "ES_PATH_CONF", "ES_JAVA_OPTS"
)
OPENSEARCH = EngineKind(
    "opensearch",
    provision.opensearch_home(),
    "opensearch",
    "OPENSEARCH_JAVA_HOME",
    "OPENSEARCH_PATH_CONF",
    "OPENSEARCH_JAVA_OPTS",
)


def java_home() -> str:
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("no java on PATH and JAVA_HOME unset; the engines need JDK 17")
    return str(Path(java).resolve().parent.parent)


@dataclass(frozen=True)
class Security:
    """How to reach a node that has TLS and authentication on: a basic-auth superuser and the CA to trust."""

    username: str
    password: str
    ca_file: Path

    def headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def get_json(url: str, timeout: float = 5.0, security: Security | None = None) -> Any:
    request = urllib.request.Request(url, headers=security.headers() if security else {})
    context = security.ssl_context() if security else None
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read())


def cluster_is_healthy(url: str, security: Security | None = None) -> bool:
    health = get_json(f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s", security=security)
    return health.get("status") in ("green", "yellow")


class SearchEngine:
    """A search engine the tests can query, stop and start again with its data intact."""

    def __init__(
        self, name: str, url: str, process: ManagedProcess | None = None, security: Security | None = None
    ) -> None:
        self.name = name
        self.url = url
        self.process = process
        self.security = security

    @property
    def managed(self) -> bool:
        return self.process is not None

    @property
    def version(self) -> str:
        nodes = get_json(f"{self.url}/_nodes/_local/http", security=self.security)["nodes"]
        return str(next(iter(nodes.values()))["version"])

    def start(self) -> None:
        if self.process is None:
            raise RuntimeError(f"{self.name} at {self.url} is external; it cannot be started by the tests")
        if not self.process.alive():
            self.process.start()
        self.process.wait_ready(lambda: cluster_is_healthy(self.url, self.security), READY_TIMEOUT)

    def stop(self) -> None:
        if self.process is None:
            raise RuntimeError(f"{self.name} at {self.url} is external; it cannot be stopped by the tests")
        self.process.stop()

    def log_tail(self) -> str:
        return self.process.log_tail() if self.process else "(external engine: no log)"


def launch_engine(kind: EngineKind, run_dir: Path, log_dir: Path, secured: bool = False) -> SearchEngine:
    """Prepare a private config and data directory under ``run_dir`` and start the node.

    ``secured`` (Elasticsearch only) turns on HTTPS with a CA made for the run and a file-realm
    superuser, as a production cluster would have them.
    """
    launcher = kind.home / "bin" / kind.launcher
    if not launcher.exists():
        raise RuntimeError(f"{launcher} is missing: run `make testbed` first")
    conf_dir, data_dir, engine_logs = run_dir / "config", run_dir / "data", run_dir / "logs"
    # The engines write a keystore into their config directory, so each node gets its own copy.
    shutil.copytree(kind.home / "config", conf_dir)
    data_dir.mkdir()
    engine_logs.mkdir()
    _point_jvm_files_at(conf_dir / "jvm.options", data_dir, engine_logs)
    env = {
        kind.java_home_env: java_home(),
        kind.conf_env: str(conf_dir),
        kind.java_opts_env: "-Xms512m -Xmx512m",
        "HOME": str(run_dir),
    }
    security = _secure(kind, conf_dir, env) if secured else None
    user = _engine_user()
    if user is not None:
        for path in [run_dir, *run_dir.rglob("*")]:
            os.chown(path, *user)
    http_port, transport_port = free_port(), free_port()
    argv = [
        str(launcher),
        "-E", "discovery.type=single-node",
        "-E", f"http.port={http_port}",
        "-E", f"transport.port={transport_port}",
        "-E", "network.host=127.0.0.1",
        "-E", f"path.data={data_dir}",
        "-E", f"path.logs={engine_logs}",
        "-E", "cluster.routing.allocation.disk.threshold_enabled=false",
    ]  # fmt: skip
    if security is not None:
        argv += [
            "-E", "xpack.security.enabled=true",
            "-E", "xpack.security.http.ssl.enabled=true",
            "-E", "xpack.security.http.ssl.certificate=certs/node.crt",
            "-E", "xpack.security.http.ssl.key=certs/node.key",
        ]  # fmt: skip
    elif kind is ELASTICSEARCH:
        argv += ["-E", "xpack.security.enabled=false"]
    name = f"{kind.name}-secured" if security else kind.name
    process = ManagedProcess(name, argv, log_dir / f"{name}.log", env=env, cwd=run_dir, preexec_user=user)
    scheme = "https" if security else "http"
    engine = SearchEngine(name, f"{scheme}://127.0.0.1:{http_port}", process, security)
    engine.start()
    return engine


SUPERUSER = "sluice-admin"


def _secure(kind: EngineKind, conf_dir: Path, env: dict[str, str]) -> Security:
    if kind is not ELASTICSEARCH:
        raise ValueError(f"a secured {kind.name} is not available in the test bed")
    certificates = make_certificates(conf_dir / "certs")
    password = secrets.token_urlsafe(16)
    subprocess.run(
        [str(kind.home / "bin" / "elasticsearch-users"), "useradd", SUPERUSER, "-p", password, "-r", "superuser"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    return Security(SUPERUSER, password, certificates.ca)


def _point_jvm_files_at(jvm_options: Path, data_dir: Path, log_dir: Path) -> None:
    # The stock options write GC logs and crash files relative to the read-only install directory.
    text = jvm_options.read_text()
    text = text.replace("=logs/", f"={log_dir}/")
    jvm_options.write_text(text.replace("HeapDumpPath=data", f"HeapDumpPath={data_dir}"))


def _engine_user() -> tuple[int, int] | None:
    """Both engines refuse to run as root; as root we drop to the test bed's system user."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(provision.ENGINE_USER)
    return entry.pw_uid, entry.pw_gid


def call(engine: SearchEngine, method: str, path: str, body: Any = None, ndjson: bool = False) -> tuple[int, Any]:
    """One REST call as the test's superuser; returns the status and the decoded body, errors included."""
    data = None
    headers = engine.security.headers() if engine.security else {}
    if body is not None:
        data = body.encode() if ndjson else json.dumps(body).encode()
        headers["Content-Type"] = "application/x-ndjson" if ndjson else "application/json"
    request = urllib.request.Request(f"{engine.url}{path}", data=data, method=method, headers=headers)
    try:
        context = engine.security.ssl_context() if engine.security else None
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def indexed_ids(engine: SearchEngine, index_pattern: str) -> list[str]:
    """Every document ``_id`` in the indices matching ``index_pattern``, repeats included (one per copy: the same
    ``_id`` in two indices counts twice), after a refresh. Scrolls, so it is not capped at 10,000 hits."""
    status, refreshed = call(engine, "POST", f"/{index_pattern}/_refresh")
    assert status == 200, refreshed
    query = {"size": 5000, "_source": False, "sort": ["_doc"]}
    status, page = call(engine, "POST", f"/{index_pattern}/_search?scroll=1m", query)
    assert status == 200, page
    ids: list[str] = []
    while page["hits"]["hits"]:
        ids += [hit["_id"] for hit in page["hits"]["hits"]]
        status, page = call(engine, "POST", "/_search/scroll", {"scroll": "1m", "scroll_id": page["_scroll_id"]})
        assert status == 200, page
    call(engine, "DELETE", "/_search/scroll", {"scroll_id": page["_scroll_id"]})
    return ids
