"""The Kubernetes control plane of the test bed behaves as the operator will rely on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.support.kube import KubeCluster
from tests.support.procs import wait_until

pytestmark = pytest.mark.kube

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.sluice.dev}
spec:
  group: smoke.sluice.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, properties: {phase: {type: string}}}
"""


def get_json(kube: KubeCluster, *args: str) -> dict:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)


def test_api_server_is_ready(kube: KubeCluster) -> None:
    assert kube.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"


def test_crd_established_and_status_subresource_patch(kube: KubeCluster, namespace: str) -> None:
    kube.apply(WIDGET_CRD)
    kube.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.sluice.dev", "--timeout=60s")
    kube.apply(
        {
            "apiVersion": "smoke.sluice.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": namespace},
            "spec": {"size": 3},
        }
    )
    widget = get_json(kube, "widget", "w1", "-n", namespace)
    assert widget["spec"]["size"] == 3
    kube.kubectl(
        "patch",
        "widget",
        "w1",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Ready"}}',
    )
    assert get_json(kube, "widget", "w1", "-n", namespace)["status"]["phase"] == "Ready"
    # A status written through the main resource is dropped: the subresource is really separate.
    kube.kubectl("patch", "widget", "w1", "-n", namespace, "--type=merge", "-p", '{"status":{"phase":"Other"}}')
    assert get_json(kube, "widget", "w1", "-n", namespace)["status"]["phase"] == "Ready"


def statefulset(namespace: str, storage_class: str) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "queue", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "serviceName": "queue",
            "selector": {"matchLabels": {"app": "queue"}},
            "template": {
                "metadata": {"labels": {"app": "queue"}},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/queue:1"}]},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": storage_class,
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }


def ready_pods(kube: KubeCluster, namespace: str) -> list[str]:
    pods = get_json(kube, "pods", "-n", namespace, "-l", "app=queue")["items"]
    return [
        pod["metadata"]["name"]
        for pod in pods
        if any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
    ]


def test_statefulset_pods_ready_with_bound_claims_and_stay_ready(kube: KubeCluster, namespace: str) -> None:
    kube.apply(statefulset(namespace, "rook-block"))
    wait_until(lambda: len(ready_pods(kube, namespace)) == 2, 120, "two Ready pods of the StatefulSet")
    claims = get_json(kube, "pvc", "-n", namespace)["items"]
    assert sorted(c["metadata"]["name"] for c in claims) == ["data-queue-0", "data-queue-1"]
    assert all(c["status"]["phase"] == "Bound" for c in claims)
    assert all(c["spec"]["storageClassName"] == "rook-block" for c in claims)
    # Without node leases the node-lifecycle controller marks pods NotReady after about 50 s.
    stay_until = time.monotonic() + 65
    while time.monotonic() < stay_until:
        assert len(ready_pods(kube, namespace)) == 2, "pods lost readiness"
        time.sleep(5)
    status = get_json(kube, "statefulset", "queue", "-n", namespace)["status"]
    assert status.get("readyReplicas") == 2


def test_deleting_owner_garbage_collects_dependents(kube: KubeCluster, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner", "namespace": namespace},
            "data": {"role": "owner"},
        }
    )
    owner_uid = get_json(kube, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    owner_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
    for index in range(3):
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"child-{index}", "namespace": namespace, "ownerReferences": [owner_ref]},
            }
        )
    kube.kubectl("delete", "configmap", "owner", "-n", namespace)

    def children_gone() -> bool:
        names = [cm["metadata"]["name"] for cm in get_json(kube, "configmaps", "-n", namespace)["items"]]
        return not any(name.startswith("child-") for name in names)

    wait_until(children_gone, 60, "garbage collection of the owner's dependents")


def test_kubectl_and_helm_reach_the_api_server(kube: KubeCluster, namespace: str, tmp_path: Path) -> None:
    nodes = get_json(kube, "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["kwok-node-0"]
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "smoke", "version": "0.1.0"}))
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-helm}\n"
        "data: {greeting: {{ .Values.greeting | quote }}}\n"
    )
    kube.helm("install", "smoke", str(chart), "-n", namespace, "--set", "greeting=hello", "--wait", "--timeout", "60s")
    assert get_json(kube, "configmap", "from-helm", "-n", namespace)["data"]["greeting"] == "hello"
    releases = json.loads(kube.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [r["name"] for r in releases] == ["smoke"]
