"""The operator against the test bed's real API server, controller-manager, scheduler and kwok."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.support import CHART, KUBE_VERSION, set_args
from tests.support.kube import KubeCluster
from tests.support.procs import ManagedProcess, free_port, wait_until

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / ".venv" / "bin" / "sluice-operator"
HASH = "sluice.dev/config-hash"


def get_json(kube: KubeCluster, *args: str) -> dict[str, Any]:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)


def maybe(kube: KubeCluster, *args: str) -> dict[str, Any] | None:
    result = kube.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def wx(namespace: str, name: str = "wx") -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "wx.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    return doc


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for entry in ((obj or {}).get("status") or {}).get("conditions") or []:
        if entry["type"] == type_:
            return entry
    return {}


class Operator:
    def __init__(self, kube: KubeCluster, namespace: str, log_dir: Path, identity: str = "op-a",
                 extra_namespaces: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 all_namespaces: bool = False) -> None:
        self.port = free_port()
        scope = [arg for ns in (namespace, *extra_namespaces) for arg in ("--namespace", ns)]
        if all_namespaces:
            scope = ["--all-namespaces"]
        self.process = ManagedProcess(
            f"sluice-operator-{identity}",
            [str(OPERATOR), *scope, "--resync-interval", "3", "--backlog-timeout", "0.3",
             "--health-listen", f"127.0.0.1:{self.port}", "--leader-election-namespace", namespace,
             "--identity", identity, "--lease-duration", "6", "--log-level", "debug"],
            log_dir / f"operator-{namespace}-{identity}.log",
            env=env or kube.env,
        )

    def start(self) -> Operator:
        self.process.start()
        self.process.wait_ready(self.healthy, 30)
        return self

    def health(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
            return response.read().decode().strip()

    def healthy(self) -> bool:
        return self.health() in ("leader", "standby")


@pytest.fixture
def start_operator(
    kube: KubeCluster, namespace: str, sluice_crd: None, testbed_log_dir: Path
) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(identity: str = "op-a", extra_namespaces: tuple[str, ...] = (),
              env: dict[str, str] | None = None, all_namespaces: bool = False) -> Operator:
        operator = Operator(kube, namespace, testbed_log_dir, identity, extra_namespaces, env, all_namespaces).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.process.stop(10)


@pytest.fixture
def operator(start_operator: Callable[..., Operator]) -> Operator:
    return start_operator()


def ready(kube: KubeCluster, namespace: str, name: str = "wx") -> bool:
    obj = maybe(kube, "ingp", name, "-n", namespace)
    return condition(obj, "Ready").get("status") == "True" and (
        obj is not None and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    )


CHILDREN = [
    ("configmap", "wx-sluice-config"),
    ("service", "wx-receiver"),
    ("service", "wx-receiver-headless"),
    ("service", "wx-publisher"),
    ("statefulset", "wx-receiver"),
    ("deployment", "wx-publisher"),
    ("poddisruptionbudget", "wx-receiver"),
    ("poddisruptionbudget", "wx-publisher"),
]


def test_explain_is_useful(kube: KubeCluster, sluice_crd: None) -> None:
    # The OpenAPI document is published a moment after the CRD is Established.
    wait_until(lambda: kube.kubectl("explain", "ingestpipeline.spec.receiver.queue", check=False).returncode == 0,
               30, "kubectl explain")
    text = kube.kubectl("explain", "ingestpipeline.spec.receiver.queue").stdout
    assert "maxMessages" in text and "whenFull" in text and "durable queue" in text
    assert "ingestpipelines" in kube.kubectl("api-resources", "--api-group=sluice.dev").stdout


def _bad(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = doc["spec"]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return mutate


def _edge(url: str = "https://central.example.com/in", keep_elasticsearch: bool = False,
          forward: dict[str, Any] | None = None, **extra: Any) -> Callable[[dict[str, Any]], None]:
    """The wx document turned into an edge pipeline (spec.forward), plus ``extra`` top-level spec fields."""
    def mutate(doc: dict[str, Any]) -> None:
        spec = doc["spec"]
        if not keep_elasticsearch:
            del spec["elasticsearch"], spec["indexTemplate"]
        spec["forward"] = {"url": url} | (forward or {})
        for key, value in extra.items():
            spec[key] = value

    return mutate


def _neither(doc: dict[str, Any]) -> None:
    del doc["spec"]["elasticsearch"], doc["spec"]["indexTemplate"]


EXACTLY_ONE = "set exactly one of spec.forward"

INVALID = {
    "forward-and-elasticsearch": (_edge(keep_elasticsearch=True), EXACTLY_ONE),
    "neither-forward-nor-elasticsearch": (_neither, EXACTLY_ONE),
    "edge-index-template": (_edge(indexTemplate={"name": "wx"}), "an edge pipeline (spec.forward) has none here"),
    "edge-publisher-tls": (_edge(publisher={"tls": {"secretRef": {"name": "t"}}}),
                           "spec.publisher.auth and spec.publisher.tls configure this pipeline's own publisher"),
    "edge-url": (_edge("central.example.com/in"), "forward.url must start with http:// or https://"),
    "edge-ca-over-http": (_edge("http://central.example.com/in", forward={"caSecretRef": {"name": "ca"}}),
                          "forward.url must then start with https://"),
    "batch-over-queue": (_bad("receiver.batch.maxMessages", 600000), "must not exceed receiver.queue.maxMessages"),
    "when-full": (_bad("receiver.queue.whenFull", "dropNewest"), 'supported values: "reject", "dropOldest"'),
    "index-uppercase": (_bad("elasticsearch.index", "WX-%{+yyyy.MM}"), "valid index name"),
    "index-space": (_bad("elasticsearch.index", "wx rtbeat"), "valid index name"),
    "index-star": (_bad("elasticsearch.index", "wx-*"), "valid index name"),
    "index-underscore": (_bad("elasticsearch.index", "_wx"), "must not start with"),
    "index-dot": (_bad("elasticsearch.index", ".."), "must not be '.' or '..'"),
    "storage-size": (_bad("receiver.storage.size", "lots"), "positive quantity"),
    "storage-zero": (_bad("receiver.storage.size", "0"), "positive quantity"),
    "replicas-zero": (_bad("receiver.replicas", 0), "should be greater than or equal to 1"),
    "replicas-huge": (_bad("publisher.replicas", 1000), "should be less than or equal to 32"),
    "url": (_bad("elasticsearch.url", "elasticsearch:9200"), "must start with http:// or https://"),
    "max-wait": (_bad("receiver.batch.maxWait", "soon"), "should match"),
    "fields-twice": (_bad("indexTemplate.fieldsConfigMapRef", {"name": "f"}), "mutually exclusive"),
    "pattern": (_bad("indexTemplate.patterns", ["WX-*"]), "index pattern holds lowercase"),
    # The API server would answer a StatefulSet with a bad quantity with a 500, so the CRD must refuse it.
    "resources": (_bad("receiver.resources", {"limits": {"memory": "lots"}}), "spec.receiver.resources.limits.memory"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_pipelines_are_refused_at_admission(
    kube: KubeCluster, sluice_crd: None, namespace: str, case: str
) -> None:
    mutate, message = INVALID[case]
    doc = wx(namespace)
    mutate(doc)
    result = kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)
    assert result.returncode != 0, f"{case} was admitted"
    assert message in result.stderr, result.stderr


def test_storage_is_immutable(kube: KubeCluster, sluice_crd: None, namespace: str) -> None:
    kube.apply(wx(namespace))
    result = kube.kubectl("patch", "ingp", "wx", "-n", namespace, "--type=merge",
                          "-p", '{"spec":{"receiver":{"storage":{"size":"2Gi"}}}}', check=False)
    assert result.returncode != 0 and "receiver.storage is immutable" in result.stderr


def test_pipeline_lifecycle(kube: KubeCluster, namespace: str, operator: Operator) -> None:
    # The API server's PodSecurity admission refuses any pod of this namespace that is not "restricted".
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")
    kube.apply(wx(namespace))
    cr = get_json(kube, "ingp", "wx", "-n", namespace)
    uid = cr["metadata"]["uid"]
    wait_until(lambda: all(maybe(kube, kind, name, "-n", namespace) for kind, name in CHILDREN), 60, "children")
    for kind, name in CHILDREN:
        refs = get_json(kube, kind, name, "-n", namespace)["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "sluice.dev/v1alpha1", "kind": "IngestPipeline", "name": "wx", "uid": uid,
                         "controller": True, "blockOwnerDeletion": True}]
    assert not get_json(kube, "ingp", "wx", "-n", namespace)["metadata"].get("finalizers")
    sts = get_json(kube, "statefulset", "wx-receiver", "-n", namespace)
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    kube.kubectl("wait", "--for=condition=Ready", "ingp/wx", "-n", namespace, "--timeout=90s")
    cr = get_json(kube, "ingp", "wx", "-n", namespace)
    status = cr["status"]
    assert status["observedGeneration"] == cr["metadata"]["generation"]
    assert status["endpoint"] == f"http://wx-receiver.{namespace}.svc:8080/rx"
    assert status["receiver"] == {"replicas": 1, "readyReplicas": 1}
    assert status["publisher"] == {"replicas": 1, "readyReplicas": 1}
    types = {c["type"]: c for c in status["conditions"]}
    assert set(types) == {"Ready", "ReceiverReady", "PublisherReady", "IndexTemplateReady"}
    assert all(c["status"] == "True" and c["lastTransitionTime"] and c["reason"] for c in types.values())
    assert "last-handled-configuration" not in json.dumps(cr["metadata"].get("annotations") or {})

    # A config change reaches the ConfigMap and rolls the receivers through the hash annotation.
    old_hash = sts["spec"]["template"]["metadata"]["annotations"][HASH]
    kube.kubectl("patch", "ingp", "wx", "-n", namespace, "--type=merge",
                 "-p", '{"spec":{"receiver":{"batch":{"maxMessages":2000}}}}')

    def config_updated() -> bool:
        data = get_json(kube, "configmap", "wx-sluice-config", "-n", namespace)["data"]
        return yaml.safe_load(data["sluice.yaml"])["receiver"]["batch"]["maxMessages"] == 2000

    wait_until(config_updated, 30, "ConfigMap with the new batch size")
    wait_until(lambda: get_json(kube, "statefulset", "wx-receiver", "-n", namespace)["spec"]["template"]["metadata"]
               ["annotations"][HASH] != old_hash, 30, "a new pod-template hash")
    wait_until(lambda: ready(kube, namespace), 90, "Ready again at the new generation")

    # Drift: a deleted Service comes back, a hand-scaled StatefulSet is scaled back.
    old_uid = get_json(kube, "service", "wx-receiver", "-n", namespace)["metadata"]["uid"]
    kube.kubectl("delete", "service", "wx-receiver", "-n", namespace)
    wait_until(lambda: (maybe(kube, "service", "wx-receiver", "-n", namespace) or {"metadata": {"uid": old_uid}})
               ["metadata"]["uid"] != old_uid, 30, "the deleted Service restored")
    kube.kubectl("scale", "statefulset", "wx-receiver", "-n", namespace, "--replicas=3")
    kube.kubectl("patch", "statefulset", "wx-receiver", "-n", namespace, "--type=merge",
                 "-p", '{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":5}}}}')

    def reverted() -> bool:
        spec = get_json(kube, "statefulset", "wx-receiver", "-n", namespace)["spec"]
        return spec["replicas"] == 1 and spec["template"]["spec"]["terminationGracePeriodSeconds"] == 30

    wait_until(reverted, 30, "the hand-edited StatefulSet reverted")

    # Deleting the pipeline garbage-collects every child; no finalizer holds it.
    kube.kubectl("delete", "ingp", "wx", "-n", namespace, "--timeout=30s")
    wait_until(lambda: not any(maybe(kube, kind, name, "-n", namespace) for kind, name in CHILDREN), 60,
               "garbage collection of the children")


def test_optional_children_are_pruned(kube: KubeCluster, namespace: str, operator: Operator) -> None:
    doc = wx(namespace)
    doc["spec"]["networkPolicy"] = {"enabled": True}
    kube.apply(doc)
    wait_until(lambda: maybe(kube, "networkpolicy", "wx-sluice", "-n", namespace) is not None, 30, "NetworkPolicy")
    kube.kubectl("patch", "ingp", "wx", "-n", namespace, "--type=merge",
                 "-p", '{"spec":{"networkPolicy":{"enabled":false}}}')
    wait_until(lambda: maybe(kube, "networkpolicy", "wx-sluice", "-n", namespace) is None, 30, "NetworkPolicy pruned")


PUBLISHER_CHILDREN = [("deployment", "wx-publisher"), ("service", "wx-publisher"),
                      ("poddisruptionbudget", "wx-publisher")]


def test_edge_pipeline_is_ready_without_a_publisher(kube: KubeCluster, namespace: str, operator: Operator) -> None:
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")
    # It starts as a full pipeline, so that turning it into an edge one must prune the publisher's children.
    kube.apply(wx(namespace))
    wait_until(lambda: ready(kube, namespace), 90, "the full pipeline Ready")
    assert all(maybe(kube, kind, name, "-n", namespace) for kind, name in PUBLISHER_CHILDREN)

    url = "https://sluice-central.example.com/in"
    forward = {"url": url, "tokenSecretRef": {"name": "central-token"}, "caSecretRef": {"name": "central-ca"}}
    kube.kubectl("patch", "ingp", "wx", "-n", namespace, "--type=merge",
                 "-p", json.dumps({"spec": {"elasticsearch": None, "indexTemplate": None, "forward": forward}}))
    # The Secrets do not exist yet: reported like any missing Secret, and the last good children stay.
    wait_until(lambda: condition(maybe(kube, "ingp", "wx", "-n", namespace), "Ready").get("reason")
               == "SecretNotFound", 30, "Ready=False with reason SecretNotFound")
    assert "central-token" in condition(get_json(kube, "ingp", "wx", "-n", namespace), "Ready")["message"]
    wait_until(lambda: any(e["reason"] == "SecretNotFound" and e["type"] == "Warning" for e in get_json(
        kube, "events", "-n", namespace, "--field-selector", "involvedObject.name=wx")["items"]), 30, "an Event")
    assert maybe(kube, "deployment", "wx-publisher", "-n", namespace)

    kube.kubectl("create", "secret", "generic", "central-token", "-n", namespace, "--from-literal=token=t0ken")
    kube.kubectl("create", "secret", "generic", "central-ca", "-n", namespace, "--from-literal=ca.crt=placeholder")
    wait_until(lambda: ready(kube, namespace), 90, "the edge pipeline Ready")
    wait_until(lambda: not any(maybe(kube, kind, name, "-n", namespace) for kind, name in PUBLISHER_CHILDREN), 30,
               "the publisher's children pruned")
    status = get_json(kube, "ingp", "wx", "-n", namespace)["status"]
    assert "publisher" not in status, "an edge pipeline reports no publisher replicas"
    assert status["receiver"] == {"replicas": 1, "readyReplicas": 1}
    for type_ in ("PublisherReady", "IndexTemplateReady"):
        entry = condition({"status": status}, type_)
        assert (entry["status"], entry["reason"]) == ("True", "External") and url in entry["message"], entry
    config = yaml.safe_load(get_json(kube, "configmap", "wx-sluice-config", "-n", namespace)["data"]["sluice.yaml"])
    assert set(config) == {"receiver"}
    assert config["receiver"]["forwardUrl"] == url
    pod = get_json(kube, "statefulset", "wx-receiver", "-n", namespace)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    for key in ("forwardTokenFile", "forwardCaFile"):
        directory = config["receiver"][key].rsplit("/", 1)[0]
        assert mounts[directory]["readOnly"] is True


def test_missing_secret_is_reported_not_crashed(kube: KubeCluster, namespace: str, operator: Operator) -> None:
    doc = wx(namespace, "sec")
    doc["spec"]["elasticsearch"]["credentialsSecretRef"] = {"name": "es-creds"}
    kube.apply(doc)
    kube.apply(wx(namespace, "ok"))

    def reported() -> bool:
        obj = maybe(kube, "ingp", "sec", "-n", namespace)
        ready_cond = condition(obj, "Ready")
        return ready_cond.get("reason") == "SecretNotFound" and ready_cond.get("status") == "False" and (
            obj is not None and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        )

    wait_until(reported, 30, "Ready=False with reason SecretNotFound")
    assert "es-creds" in condition(get_json(kube, "ingp", "sec", "-n", namespace), "Ready")["message"]

    def event_posted() -> bool:
        events = get_json(kube, "events", "-n", namespace, "--field-selector", "involvedObject.name=sec")["items"]
        return any(e["reason"] == "SecretNotFound" and e["type"] == "Warning" for e in events)

    wait_until(event_posted, 30, "a SecretNotFound Event")
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'sluice_operator_errors_total{kind="SecretNotFound"}' in metrics
    assert "sluice_operator_reconcile_duration_seconds_count" in metrics
    # The broken pipeline does not hold up the healthy one, and fixing the reference heals it.
    wait_until(lambda: ready(kube, namespace, "ok"), 90, "the healthy pipeline Ready")
    kube.kubectl("create", "secret", "generic", "es-creds", "-n", namespace,
                 "--from-literal=username=u", "--from-literal=password=p")
    wait_until(lambda: ready(kube, namespace, "sec"), 90, "the fixed pipeline Ready")
    deployment = get_json(kube, "deployment", "sec-publisher", "-n", namespace)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"] == "SLUICE_ES_USERNAME"
    assert operator.process.alive()


def test_sigkill_mid_reconcile_converges(kube: KubeCluster, namespace: str, operator: Operator,
                                         start_operator: Callable[..., Operator]) -> None:
    # Ten pipelines at once, killed as soon as the first child exists: several are then caught half-applied.
    docs = []
    for index in range(10):
        doc = wx(namespace, f"k{index}")
        doc["spec"]["receiver"]["storage"] = {"size": "1Gi"}
        docs.append(doc)
    kube.apply(docs)
    wait_until(lambda: bool(get_json(kube, "configmaps", "-n", namespace, "-l",
                                     "app.kubernetes.io/managed-by=sluice-operator")["items"]), 30, "a first child")
    operator.process.kill()
    children = {kind: len(get_json(kube, kind, "-n", namespace, "-l", "app.kubernetes.io/managed-by=sluice-operator")
                          ["items"]) for kind in ("configmaps", "statefulsets", "deployments")}
    assert children != {"configmaps": 10, "statefulsets": 10, "deployments": 10}, "the kill came too late"
    kube.kubectl("patch", "ingp", "k0", "-n", namespace, "--type=merge",
                 "-p", '{"spec":{"receiver":{"batch":{"maxMessages":1000}}}}')
    start_operator("op-a")  # the same identity reclaims its own Lease at once

    def all_ready() -> bool:
        return all(ready(kube, namespace, f"k{index}") for index in range(10))

    wait_until(all_ready, 120, "all ten Ready after the restart", interval=1)
    for index in range(10):
        for kind, name in CHILDREN:
            assert maybe(kube, kind, name.replace("wx-", f"k{index}-"), "-n", namespace), (kind, name, index)
    data = get_json(kube, "configmap", "k0-sluice-config", "-n", namespace)["data"]
    assert yaml.safe_load(data["sluice.yaml"])["receiver"]["batch"]["maxMessages"] == 1000


def test_two_replicas_one_leader_and_failover(kube: KubeCluster, namespace: str,
                                              start_operator: Callable[..., Operator]) -> None:
    first = start_operator("op-a")
    second = start_operator("op-b")
    wait_until(lambda: {first.health(), second.health()} == {"leader", "standby"}, 30, "one leader, one standby")
    leader, standby = (first, second) if first.health() == "leader" else (second, first)
    lease = get_json(kube, "lease", "sluice-operator", "-n", namespace)
    assert lease["spec"]["holderIdentity"] == ("op-a" if leader is first else "op-b")
    leader.process.kill()
    kube.apply(wx(namespace))
    wait_until(lambda: standby.health() == "leader", 30, "failover to the standby")
    wait_until(lambda: ready(kube, namespace), 90, "Ready through the new leader")


def test_fifty_pipelines_in_five_namespaces(kube: KubeCluster, namespace: str,
                                            start_operator: Callable[..., Operator]) -> None:
    others = [f"{namespace}-{n}" for n in range(4)]
    for other in others:
        kube.kubectl("create", "namespace", other)
    try:
        # The chart's default mode; pipelines left over by earlier tests in other namespaces are harmless.
        start_operator("op-a", all_namespaces=True)
        docs = []
        for ns in (namespace, *others):
            for index in range(10):
                doc = wx(ns, f"p{index}")
                doc["spec"]["receiver"]["storage"] = {"size": "1Gi"}  # the default StorageClass
                docs.append(doc)
        kube.apply(docs)

        def all_ready() -> bool:
            items = [i for ns in (namespace, *others) for i in get_json(kube, "ingp", "-n", ns)["items"]]
            return len(items) == 50 and all(condition(i, "Ready").get("status") == "True" for i in items)

        wait_until(all_ready, 150, "50 pipelines Ready", interval=2)
    finally:
        for other in others:
            kube.kubectl("delete", "namespace", other, "--wait=false", check=False)


# The namespaced rules of charts/sluice-operator/templates/rbac.yaml as of this writing (tighter than issue 6's
# list): every verb the operator uses, and nothing else.
def chart_rules(kube: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    """The rules the Helm chart grants in namespaced mode: its pipeline Role and its leader-election Role."""
    # Release "sluice-operator" makes the chart's names, the Lease's included, match the operator's defaults.
    rendered = kube.helm(
        "template", "sluice-operator", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
        *set_args({"watch.allNamespaces": "false", "watch.namespaces": f"{{{namespace}}}"}),
    ).stdout  # fmt: skip
    roles = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Role"]
    assert len(roles) == 2, [role["metadata"]["name"] for role in roles]
    return [rule for role in roles for rule in role["rules"]]


def test_runs_with_the_charts_least_privilege_rbac(kube: KubeCluster, namespace: str, tmp_path: Path,
                                                  start_operator: Callable[..., Operator]) -> None:
    kube.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sluice-operator", "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "sluice-operator", "namespace": namespace}, "rules": chart_rules(kube, namespace)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "sluice-operator", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sluice-operator"},
         "subjects": [{"kind": "ServiceAccount", "name": "sluice-operator", "namespace": namespace}]},
    ])
    token = kube.kubectl("create", "token", "sluice-operator", "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    operator = start_operator("rbac", env={**kube.env, "KUBECONFIG": str(kubeconfig)})
    doc = wx(namespace)
    doc["spec"]["networkPolicy"] = {"enabled": True}
    doc["spec"]["serviceAccount"] = {"create": True}
    kube.apply(doc)
    kube.kubectl("wait", "--for=condition=Ready", "ingp/wx", "-n", namespace, "--timeout=90s")
    kube.kubectl("patch", "ingp", "wx", "-n", namespace, "--type=merge",
                 "-p", '{"spec":{"networkPolicy":{"enabled":false},"serviceAccount":{"create":false}}}')
    wait_until(lambda: maybe(kube, "networkpolicy", "wx-sluice", "-n", namespace) is None
               and maybe(kube, "serviceaccount", "wx-sluice", "-n", namespace) is None, 30, "pruning")
    wait_until(lambda: ready(kube, namespace), 60, "Ready after pruning")
    log = operator.process.log_path.read_text()
    forbidden = [line for line in log.splitlines() if "403" in line or "orbidden" in line]
    assert not [line for line in forbidden if "sluice_operator" in line], forbidden


def test_fields_from_a_configmap(kube: KubeCluster, namespace: str, operator: Operator) -> None:
    fields = yaml.safe_load((ROOT / "examples" / "wx.yaml").read_text())["spec"]["indexTemplate"]["fields"]
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wx-fields", "namespace": namespace},
                "data": {"fields.yml": yaml.safe_dump(fields)}})
    doc = wx(namespace)
    doc["spec"]["indexTemplate"] = {"name": "wx-rtbeat", "fieldsConfigMapRef": {"name": "wx-fields"}}
    kube.apply(doc)
    kube.kubectl("wait", "--for=condition=Ready", "ingp/wx", "-n", namespace, "--timeout=90s")
    data = get_json(kube, "configmap", "wx-sluice-config", "-n", namespace)["data"]
    assert yaml.safe_load(data["fields.yml"]) == fields
    assert "13 field" in condition(get_json(kube, "ingp", "wx", "-n", namespace), "IndexTemplateReady")["message"]
    # An unparsable list is reported, and the last good configuration stays in place.
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wx-fields", "namespace": namespace},
                "data": {"fields.yml": "- {name: ["}})
    wait_until(lambda: condition(get_json(kube, "ingp", "wx", "-n", namespace), "Ready").get("reason")
               == "InvalidFields", 30, "Ready=False with reason InvalidFields")
    message = condition(get_json(kube, "ingp", "wx", "-n", namespace), "Ready")["message"]
    assert "ConfigMap wx-fields key fields.yml is not valid YAML" in message
    assert get_json(kube, "configmap", "wx-sluice-config", "-n", namespace)["data"] == data
