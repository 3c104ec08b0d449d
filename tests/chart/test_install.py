"""The chart against the test bed's real API server: server-side dry run, helm install, and the RBAC it grants."""

from __future__ import annotations

import json
import re
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.chart.support import CHART, KUBE_VERSION, MONITORS, ROOT, of_kind, set_args, wildcards
from tests.support.kube import KubeCluster
from tests.support.procs import ManagedProcess, free_port, wait_until

pytestmark = pytest.mark.kube

FIXTURES = Path(__file__).parent / "fixtures"
CRD = "ingestpipelines.sluice.dev"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}


def restrict(kube: KubeCluster, namespace: str) -> None:
    """Pod Security "restricted" on the namespace: a non-compliant operator pod is refused (and warned about)."""
    kube.kubectl("label", "namespace", namespace, "--overwrite", *(f"{k}={v}" for k, v in RESTRICTED.items()))


@pytest.fixture(scope="module", autouse=True)
def crd_left_as_found(kube: KubeCluster) -> Iterator[None]:
    """helm installs the chart's CRD and never removes it; remove it again if it was not there before,
    so that later tests apply the top-level CRD onto a clean slate."""
    existed = kube.kubectl("get", "crd", CRD, check=False).returncode == 0
    yield
    if not existed:
        kube.kubectl("delete", "crd", CRD, "--timeout=60s", check=False)


@pytest.fixture
def extra_namespaces(kube: KubeCluster) -> Iterator[list[str]]:
    names = [f"w-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        kube.kubectl("create", "namespace", name)
    yield names
    for name in names:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def monitoring_crds(kube: KubeCluster) -> None:
    kube.kubectl("apply", "--server-side", "--field-manager=sluice-tests", "-f", str(FIXTURES / "monitoring-crds.yaml"))
    for name in ("servicemonitors", "podmonitors"):
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com", "--timeout=60s")


def helm_template(kube: KubeCluster, release: str, namespace: str, values: dict[str, str]) -> str:
    return kube.helm(
        "template", release, str(CHART), "-n", namespace, "--include-crds", "--kube-version", KUBE_VERSION,
        *set_args(values),
    ).stdout  # fmt: skip


def server_dry_run(kube: KubeCluster, manifests: str) -> str:
    proc = kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=helm-template-check",
        "--warnings-as-errors", "-f", "-", input=manifests,
    )  # fmt: skip
    return proc.stdout


def test_template_default_passes_server_side_dry_run(kube: KubeCluster, namespace: str) -> None:
    restrict(kube, namespace)
    manifests = helm_template(kube, f"dry-{namespace}", namespace, {})
    out = server_dry_run(kube, manifests)
    assert f"customresourcedefinition.apiextensions.k8s.io/{CRD} serverside-applied (server dry run)" in out
    assert f"deployment.apps/dry-{namespace}-sluice-operator serverside-applied (server dry run)" in out
    assert "clusterrole.rbac.authorization.k8s.io" in out


def test_template_namespaced_with_monitors_passes_server_side_dry_run(
    kube: KubeCluster, namespace: str, extra_namespaces: list[str], monitoring_crds: None
) -> None:
    restrict(kube, namespace)
    values = {"watch.allNamespaces": "false", "watch.namespaces": "{" + ",".join(extra_namespaces) + "}", **MONITORS}
    manifests = helm_template(kube, "dry", namespace, values)
    out = server_dry_run(kube, manifests)
    for kind in ("servicemonitor.monitoring.coreos.com", "podmonitor.monitoring.coreos.com", "service"):
        assert f"{kind}/dry-sluice-operator" in out, out
    assert out.count("role.rbac.authorization.k8s.io/dry-sluice-operator ") == len(extra_namespaces)
    assert "clusterrole" not in out


def get_json(kube: KubeCluster, *args: str) -> dict:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)


def deployment_available(kube: KubeCluster, name: str, namespace: str) -> bool:
    status = get_json(kube, "deployment", name, "-n", namespace).get("status", {})
    available = any(c["type"] == "Available" and c["status"] == "True" for c in status.get("conditions", []))
    return available and status.get("readyReplicas") == status.get("replicas") == 1


def can_i(kube: KubeCluster, service_account: str, *args: str) -> bool:
    proc = kube.kubectl("auth", "can-i", *args, f"--as={service_account}", check=False)
    answer = proc.stdout.strip()
    assert answer in {"yes", "no"}, proc.stderr
    return answer == "yes"


def install(kube: KubeCluster, release: str, namespace: str, values: dict[str, str]) -> str:
    restrict(kube, namespace)
    proc = kube.helm("install", release, str(CHART), "-n", namespace, *set_args(values))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    wait_until(
        lambda: deployment_available(kube, f"{release}-sluice-operator", namespace), 90, "the operator Deployment"
    )
    return proc.stdout


def rendered_roles(kube: KubeCluster, release: str, namespace: str) -> list[dict]:
    manifest = kube.helm("get", "manifest", release, "-n", namespace).stdout
    return of_kind([doc for doc in yaml.safe_load_all(manifest) if doc], "Role", "ClusterRole")


def test_install_cluster_wide(kube: KubeCluster, namespace: str) -> None:
    release = f"cw-{namespace}"
    try:
        notes = install(kube, release, namespace, {})
        assert "kubectl get ingp" in notes and "kubectl wait" in notes
        # The smallest pipeline NOTES.txt offers is one the API server accepts.
        example = textwrap.dedent(notes.split("<<'YAML'", 1)[1].split("\n", 1)[1].split("YAML\n", 1)[0])
        assert yaml.safe_load(example)["kind"] == "IngestPipeline"
        kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=example)
        assert wildcards(rendered_roles(kube, release, namespace)) == []
        sa = f"system:serviceaccount:{namespace}:{release}-sluice-operator"
        elsewhere = "default"
        needed = [
            ("list", "ingestpipelines.sluice.dev", "-A"),
            ("watch", "ingestpipelines.sluice.dev", "-n", elsewhere),
            ("patch", "ingestpipelines.sluice.dev", "-n", elsewhere),
            ("patch", "ingestpipelines.sluice.dev", "--subresource=status", "-n", elsewhere),
            ("patch", "statefulsets.apps", "-n", elsewhere),
            ("create", "deployments.apps", "-n", elsewhere),
            ("patch", "services", "-n", elsewhere),
            ("create", "configmaps", "-n", elsewhere),
            ("patch", "poddisruptionbudgets.policy", "-n", elsewhere),
            ("list", "pods", "-n", elsewhere),
            ("get", "secrets", "-n", elsewhere),
            ("create", "events", "-n", elsewhere),
            ("delete", "networkpolicies.networking.k8s.io", "-n", elsewhere),
            ("update", "ingestpipelines.sluice.dev", "--subresource=finalizers", "-n", elsewhere),
            ("create", "leases.coordination.k8s.io", "-n", namespace),
            ("update", f"leases.coordination.k8s.io/{release}-sluice-operator", "-n", namespace),
        ]
        refused = [
            ("delete", "secrets", "-n", elsewhere),
            ("create", "secrets", "-n", elsewhere),
            ("list", "secrets", "-n", elsewhere),
            ("delete", "configmaps", "-n", elsewhere),
            ("list", "namespaces"),
            ("create", "pods", "-n", elsewhere),
            ("create", "pods/exec", "-n", elsewhere),
            ("delete", "statefulsets.apps", "-n", elsewhere),
            ("delete", "ingestpipelines.sluice.dev", "-n", elsewhere),
            ("update", "leases.coordination.k8s.io", "-n", elsewhere),
            ("update", "leases.coordination.k8s.io/kube-controller-manager", "-n", namespace),
            ("get", "pods", "-n", elsewhere),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
            ("create", "rolebindings.rbac.authorization.k8s.io", "-n", elsewhere),
            ("delete", "namespaces"),
            ("*", "*", "-A"),
        ]
        assert [args for args in needed if not can_i(kube, sa, *args)] == []
        assert [args for args in refused if can_i(kube, sa, *args)] == []
    finally:
        kube.helm("uninstall", release, "-n", namespace, check=False)


def test_install_namespaced(kube: KubeCluster, namespace: str, extra_namespaces: list[str]) -> None:
    release = f"ns-{namespace}"
    values = {"watch.allNamespaces": "false", "watch.namespaces": "{" + ",".join(extra_namespaces) + "}"}
    try:
        notes = install(kube, release, namespace, values)
        assert ", ".join(extra_namespaces) in notes
        assert wildcards(rendered_roles(kube, release, namespace)) == []
        selector = f"app.kubernetes.io/instance={release}"
        roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in get_json(
            kube, "roles", "-A", "-l", selector)["items"]}
        expected = {(ns, f"{release}-sluice-operator") for ns in extra_namespaces}
        assert roles == expected | {(namespace, f"{release}-sluice-operator-leader-election")}
        assert get_json(kube, "clusterroles", "-l", selector)["items"] == []
        sa = f"system:serviceaccount:{namespace}:{release}-sluice-operator"
        for watched in extra_namespaces:
            assert can_i(kube, sa, "watch", "ingestpipelines.sluice.dev", "-n", watched)
            assert can_i(kube, sa, "patch", "statefulsets.apps", "-n", watched)
            assert not can_i(kube, sa, "delete", "secrets", "-n", watched)
            assert not can_i(kube, sa, "create", "pods", "-n", watched)
        assert not can_i(kube, sa, "list", "ingestpipelines.sluice.dev", "-A")
        assert not can_i(kube, sa, "watch", "ingestpipelines.sluice.dev", "-n", "default")
        assert not can_i(kube, sa, "get", "secrets", "-n", "default")
        assert not can_i(kube, sa, "patch", "statefulsets.apps", "-n", namespace)
    finally:
        kube.helm("uninstall", release, "-n", namespace, check=False)


def service_account_kubeconfig(kube: KubeCluster, namespace: str, service_account: str, path: Path) -> Path:
    """The test bed's kubeconfig, but authenticated as the chart's ServiceAccount (a bound token)."""
    token = kube.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("scope", ["namespaced", "cluster-wide"])
def test_operator_reconciles_with_only_the_chart_rbac(
    scope: str, kube: KubeCluster, namespace: str, extra_namespaces: list[str], tmp_path: Path, testbed_log_dir: Path
) -> None:
    """The real operator, run with the chart's args and its ServiceAccount's token, takes a pipeline to Ready."""
    operator_bin = ROOT / ".venv" / "bin" / "sluice-operator"
    if not operator_bin.exists():
        pytest.skip("sluice-operator is not installed in .venv")
    release = f"op-{namespace}"
    watched = extra_namespaces[0]
    values = {"watch.allNamespaces": "false", "watch.namespaces": "{" + ",".join(extra_namespaces) + "}"}
    if scope == "cluster-wide":
        values = {}
    operator: ManagedProcess | None = None
    try:
        install(kube, release, namespace, values)
        (deployment,) = of_kind(
            [d for d in yaml.safe_load_all(kube.helm("get", "manifest", release, "-n", namespace).stdout) if d],
            "Deployment",
        )
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = service_account_kubeconfig(kube, namespace, sa, tmp_path / "kubeconfig")
        port = free_port()
        env = {
            **{item["name"]: item["value"] for item in container["env"] if "value" in item},
            "KUBECONFIG": str(kubeconfig),
            "POD_NAME": "operator-0",
            "POD_NAMESPACE": namespace,
            "HOME": str(tmp_path),
        }
        # The chart's own args; only the listen address moves to loopback, and the resync is made short.
        argv = [str(operator_bin), *container["args"], f"--health-listen=127.0.0.1:{port}", "--resync-interval=3"]
        log_path = testbed_log_dir / f"operator-chart-rbac-{namespace}.log"
        operator = ManagedProcess(f"sluice-operator-{namespace}", argv, log_path, env=env).start()

        def leader() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return response.read().decode().strip() == "leader"

        operator.wait_ready(leader, 30)
        pipeline = yaml.safe_load((ROOT / "examples" / "wx.yaml").read_text())
        pipeline["metadata"] = {"name": "wx", "namespace": watched}
        kube.apply(pipeline)

        def pipeline_ready() -> bool:
            obj = get_json(kube, "ingp", "wx", "-n", watched)
            status = obj.get("status") or {}
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
            return ready and status.get("observedGeneration") == obj["metadata"]["generation"]

        try:
            wait_until(pipeline_ready, 60, "IngestPipeline wx Ready under the chart's RBAC")
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log_tail(60)}") from None
        for kind, name in (("statefulset", "wx-receiver"), ("deployment", "wx-publisher"), ("service", "wx-receiver")):
            get_json(kube, kind, name, "-n", watched)
        lease = get_json(kube, "lease", f"{release}-sluice-operator", "-n", namespace)
        assert lease["spec"]["holderIdentity"] == "operator-0"
        # An RBAC denial names the user: 'User "system:serviceaccount:..." cannot patch resource ...'. There must
        # be none: kopf's namespace and CRD scanning is off, so the operator needs nothing cluster-scoped.
        denied = re.compile(r"system:serviceaccount:\S+ cannot \w+ resource")
        forbidden = [line for line in log_path.read_text(errors="replace").splitlines() if denied.search(line)]
        assert forbidden == [], "\n".join(forbidden[:20])
    finally:
        if operator is not None:
            operator.stop(10)
        kube.helm("uninstall", release, "-n", namespace, check=False)
