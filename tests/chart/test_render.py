"""The chart lints clean, its schema is strict, and what it renders is what issue 7 asks for (no cluster needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.chart.support import (
    CHART,
    MONITORS,
    NAMESPACED,
    ROOT,
    of_kind,
    render,
    run_helm,
    set_args,
    template_args,
    wildcards,
)

VARIANTS = {"default": {}, "namespaced-monitors": {**NAMESPACED, **MONITORS}}
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_is_clean(variant: str, strict: bool, home: Path) -> None:
    proc = run_helm("lint", str(CHART), *(["--strict"] if strict else []), *set_args(VARIANTS[variant]), home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert not re.search(r"\[(WARNING|ERROR)\]", proc.stdout), proc.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"logLevel": "loud"}, "/logLevel"),
        ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy"),
        ({"replicas": "2"}, "additional properties 'replicas' not allowed"),
        ({"metrics.port": "70000"}, "/metrics/port"),
        ({"watch.allNamespaces": "false"}, "/watch/namespaces': minItems"),
        ({"watch.allNamespaces": "false", "watch.namespaces": "{Not_A_Name}"}, "/watch/namespaces/0"),
        ({"watch.allNamespaces": "false", "watch.namespaces": "{a,b,a}"}, "items at 0 and 2 are equal"),
        ({"metrics.serviceMonitor.interval": "often"}, "/metrics/serviceMonitor/interval"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_schema_rejects_bad_values(values: dict[str, str], message: str, home: Path) -> None:
    proc = run_helm(*template_args(values), home=home)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def _value_paths(values: object, prefix: str = "") -> list[str]:
    if not isinstance(values, dict) or not values:
        return [prefix]
    return [path for key, value in values.items() for path in _value_paths(value, f"{prefix}/{key}")]


def _free_form(node: dict) -> bool:
    return node.get("additionalProperties", False) is not False or "properties" not in node


def test_schema_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_paths(values):
        node = schema
        for key in path.strip("/").split("/"):
            if _free_form(node):  # e.g. resources.requests: a map whose keys are the user's
                break
            assert key in node["properties"], f"{path} is in values.yaml but not in values.schema.json"
            node = node["properties"][key]
            assert node.get("description"), f"{path}: no description in the schema"

    def walk(node: dict, where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where or '/'} accepts unknown keys"
        for key, child in node.get("properties", {}).items():
            assert child.get("description"), f"{where}/{key}: no description"
            walk(child, f"{where}/{key}")

    walk(schema, "")




def _container(docs: list[dict]) -> dict:
    (deployment,) = of_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_defaults(home: Path) -> None:
    docs = render({}, home)
    (deployment,) = of_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(docs)
    assert deployment["spec"]["replicas"] == 1
    assert container["image"] == f"ghcr.io/sluice-dev/sluice-operator:{APP_VERSION}"
    assert "--all-namespaces" in container["args"]
    assert not any(arg.startswith("--namespace") for arg in container["args"])
    assert f"--runtime-image=ghcr.io/sluice-dev/sluice-runtime:{APP_VERSION}" in container["args"]
    assert {"name": "SLUICE_LOG_LEVEL", "value": "info"} in container["env"]
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in {"/healthz", "/readyz"}
    # Pod Security "restricted", and a writable /tmp on a read-only root.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert pod["serviceAccountName"] == "sl-sluice-operator"
    assert of_kind(docs, "ServiceMonitor", "PodMonitor", "Service") == []


def test_deployment_from_values(home: Path) -> None:
    values = {
        **NAMESPACED,
        "replicaCount": "2",
        "image.repository": "registry.example/sluice-operator",
        "image.tag": "1.2.3",
        "runtimeImage.tag": "1.2.4",
        "logLevel": "debug",
        "resources.limits.cpu": "1",
    }
    docs = render(values, home)
    (deployment,) = of_kind(docs, "Deployment")
    container = _container(docs)
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "registry.example/sluice-operator:1.2.3"
    assert "--runtime-image=ghcr.io/sluice-dev/sluice-runtime:1.2.4" in container["args"]
    assert "--all-namespaces" not in container["args"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == ["--namespace=a", "--namespace=b"]
    assert {"name": "SLUICE_LOG_LEVEL", "value": "debug"} in container["env"]
    assert container["resources"]["limits"] == {"cpu": 1, "memory": "256Mi"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_operator_cli_accepts_the_chart_args(variant: str, home: Path) -> None:
    """The Deployment's args and env mean to sluice-operator what the chart intends."""
    cli = pytest.importorskip("sluice_operator.cli")
    docs = render(VARIANTS[variant], home)
    container = _container(docs)
    env = {item["name"]: item.get("value", "from-the-downward-api") for item in container["env"]}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = cli.settings_from(cli.parse_args(container["args"]))
    if variant == "default":
        assert settings.all_namespaces and settings.namespaces == ()
    else:
        assert not settings.all_namespaces and settings.namespaces == ("a", "b")
    assert settings.runtime_image == f"ghcr.io/sluice-dev/sluice-runtime:{APP_VERSION}"
    assert settings.log_level == "info"
    (port,) = container["ports"]
    assert settings.health_listen == f"0.0.0.0:{port['containerPort']}"
    assert container["livenessProbe"]["httpGet"]["port"] == port["name"]
    assert settings.leader_election
    (lease_role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert settings.lease_namespace == lease_role["metadata"]["namespace"] == "ops"
    assert [settings.lease_name] == next(r["resourceNames"] for r in lease_role["rules"] if "resourceNames" in r)


def test_rbac_cluster_wide(home: Path) -> None:
    docs = render({}, home)
    assert wildcards(docs) == []
    assert [r["metadata"]["name"] for r in of_kind(docs, "ClusterRole")] == ["sl-sluice-operator"]
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sl-sluice-operator", "namespace": "ops"}]
    # The only namespaced Role is for the leader-election lease, in the release namespace.
    assert {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(docs, "Role")} == {
        ("ops", "sl-sluice-operator-leader-election")
    }


def test_rbac_namespaced_only_in_listed_namespaces(home: Path) -> None:
    docs = render(NAMESPACED, home)
    assert wildcards(docs) == []
    assert of_kind(docs, "ClusterRole", "ClusterRoleBinding") == []
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(docs, "Role")}
    leader = ("ops", "sl-sluice-operator-leader-election")
    assert roles == {("a", "sl-sluice-operator"), ("b", "sl-sluice-operator"), leader}
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in of_kind(docs, "RoleBinding")}
    assert bindings == roles


def test_rbac_is_least_privilege(home: Path) -> None:
    # The children the operator prunes: the optional ones, and the publisher's when a pipeline turns edge.
    prunable = {"serviceaccounts", "networkpolicies", "services", "deployments", "poddisruptionbudgets"}
    for docs in (render({}, home), render(NAMESPACED, home)):
        for role in of_kind(docs, "Role", "ClusterRole"):
            for rule in role["rules"]:
                verbs, resources = set(rule["verbs"]), set(rule["resources"])
                assert not {"deletecollection", "escalate", "bind", "impersonate", "approve", "sign"} & verbs
                if "delete" in verbs:
                    assert resources <= prunable, rule
                if "secrets" in resources:
                    assert verbs == {"get"}, rule
                assert not {"pods/exec", "pods/attach", "pods/portforward", "nodes", "namespaces"} & resources
                assert "update" not in verbs or resources <= {"leases", "ingestpipelines/finalizers"}, rule


def test_monitors(home: Path) -> None:
    docs = render(MONITORS, home)
    (service,) = of_kind(docs, "Service")
    (service_monitor,) = of_kind(docs, "ServiceMonitor")
    (pod_monitor,) = of_kind(docs, "PodMonitor")
    (deployment,) = of_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in _container(docs)["ports"]}
    assert service_monitor["apiVersion"] == pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service_monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in container_ports
    assert service["spec"]["ports"][0]["targetPort"] in container_ports


def test_chart_crds_are_identical_to_top_level_crds() -> None:
    top = {path.name: path.read_bytes() for path in sorted((ROOT / "crds").glob("*.yaml"))}
    chart = {path.name: path.read_bytes() for path in sorted((CHART / "crds").glob("*.yaml"))}
    assert top, "no CRDs in crds/"
    assert sorted(chart) == sorted(top), "run `make sync-crds`"
    for name, content in top.items():
        assert chart[name] == content, f"the chart's crds/{name} differs from crds/{name}: run `make sync-crds`"
