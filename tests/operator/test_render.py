"""render() on its own: pure, complete, restricted-PSS-clean, and hashing exactly the configuration."""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice_operator._cogs import conditions
from sluice_operator._cogs.conditions import Condition
from sluice_operator._cogs.hashing import CONFIG_HASH_ANNOTATION
from sluice_operator.model import SpecError, parse_fields, render
from sluice_operator.model.render import container_security_context, default_pattern, pod_security_context
from sluice_operator.model.spec import secret_uses

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/sluice-dev/sluice-runtime:0.1.0"


def wx_spec() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "wx.yaml").read_text())["spec"]


def by_kind(children: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [c for c in children if c["kind"] == kind and (name is None or c["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {[c['metadata']['name'] for c in matches]}"
    return matches[0]


def pod_templates(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["spec"]["template"] for c in children if c["kind"] in ("StatefulSet", "Deployment")]


def test_wx_renders_every_child_with_stable_names() -> None:
    children = render("wx", "tenant", wx_spec(), runtime_image=IMAGE)
    names = sorted((c["kind"], c["metadata"]["name"]) for c in children)
    assert names == [
        ("ConfigMap", "wx-sluice-config"),
        ("Deployment", "wx-publisher"),
        ("PodDisruptionBudget", "wx-publisher"),
        ("PodDisruptionBudget", "wx-receiver"),
        ("Service", "wx-publisher"),
        ("Service", "wx-receiver"),
        ("Service", "wx-receiver-headless"),
        ("StatefulSet", "wx-receiver"),
    ]
    assert all(c["metadata"]["namespace"] == "tenant" for c in children)
    for child in children:
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "wx"
        assert labels["app.kubernetes.io/managed-by"] == "sluice-operator"
        assert labels["app.kubernetes.io/part-of"] == "sluice"


def test_output_is_ownership_free_and_deterministic() -> None:
    spec = wx_spec()
    before = copy.deepcopy(spec)
    first = render("wx", "tenant", spec, runtime_image=IMAGE)
    second = render("wx", "tenant", spec, runtime_image=IMAGE)
    assert first == second
    assert spec == before, "render must not mutate its input"
    assert all("ownerReferences" not in c["metadata"] for c in first)


def test_model_imports_no_kubernetes_client() -> None:
    for path in (ROOT / "operator" / "sluice_operator" / "model").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] in {"kubernetes", "kopf", "pykube"} for m in imported), path
        assert not any(m.startswith("sluice_operator._core") for m in imported), path


def test_runtime_config_matches_the_wx_seed() -> None:
    children = render("wx", "tenant", wx_spec(), runtime_image=IMAGE)
    data = by_kind(children, "ConfigMap")["data"]
    config = yaml.safe_load(data["sluice.yaml"])
    rx, pub = config["receiver"], config["publisher"]
    assert rx["queue"] == {"maxMessages": 500000, "whenFull": "reject"}
    assert rx["batch"] == {"maxMessages": 4000, "maxWait": 10.0}
    assert rx["listen"] == "0.0.0.0:8080"
    assert rx["dataDir"] == "/var/lib/sluice/queue"
    assert rx["forwardUrl"] == "http://wx-publisher.tenant.svc:8081/in"
    assert pub["listen"] == "0.0.0.0:8081"
    assert pub["elasticsearch"] == {"url": "http://elasticsearch:9200", "index": "wx-rtbeat-%{+yyyy.MM}"}
    assert pub["indexTemplate"] == {
        "name": "wx-rtbeat",
        "patterns": ["wx-rtbeat-*"],
        "fieldsFile": "/etc/sluice/config/fields.yml",
    }
    # The example carries the weather pipeline's fields file one for one.
    expected = yaml.safe_load((ROOT / "examples" / "wx-fields.yml").read_text())
    assert wx_spec()["indexTemplate"]["fields"] == expected
    assert yaml.safe_load(data["fields.yml"]) == expected


def test_receiver_statefulset_storage_probes_and_service() -> None:
    children = render("wx", "tenant", wx_spec(), runtime_image=IMAGE)
    sts = by_kind(children, "StatefulSet")
    assert sts["spec"]["serviceName"] == "wx-receiver-headless"
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == "rook-block"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["args"] == ["receiver", "--config", "/etc/sluice/config/sluice.yaml"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/sluice", "/etc/sluice/config", "/tmp"} <= mounts
    assert by_kind(children, "Service", "wx-receiver-headless")["spec"]["clusterIP"] == "None"
    assert by_kind(children, "Service", "wx-receiver")["spec"]["type"] == "ClusterIP"
    selector = sts["spec"]["selector"]["matchLabels"]
    assert by_kind(children, "Service", "wx-receiver")["spec"]["selector"] == selector
    assert by_kind(children, "PodDisruptionBudget", "wx-receiver")["spec"]["selector"]["matchLabels"] == selector


def test_every_pod_passes_restricted_pod_security() -> None:
    spec = wx_spec() | {"serviceAccount": {"create": True}, "networkPolicy": {"enabled": True}}
    spec["elasticsearch"]["credentialsSecretRef"] = {"name": "es"}
    spec["receiver"]["auth"] = {"tokenSecretRef": {"name": "tokens"}}
    for template in pod_templates(render("wx", "tenant", spec, runtime_image=IMAGE)):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))
        for volume in pod["volumes"]:
            # Restricted allows only these volume types.
            assert set(volume) - {"name"} <= {"configMap", "emptyDir", "secret", "persistentVolumeClaim",
                                              "projected", "downwardAPI", "csi", "ephemeral"}
        for container in pod["containers"] + pod.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["runAsNonRoot"] is True
            assert ctx["runAsUser"] == 10001
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            assert ctx.get("privileged", False) is False
            assert all("hostPort" not in p for p in container.get("ports", []))


def hashes(spec: dict[str, Any]) -> tuple[str, str]:
    children = render("wx", "tenant", spec, runtime_image=IMAGE)
    sts, deployment = by_kind(children, "StatefulSet"), by_kind(children, "Deployment")
    return (
        sts["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
        deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
    )


def test_hash_changes_with_the_config_and_only_then() -> None:
    base = hashes(wx_spec())
    assert hashes(wx_spec()) == base
    # Not config: replica counts, resources and the network policy do not roll pods.
    unrelated = wx_spec()
    unrelated["receiver"]["replicas"] = 3
    unrelated["publisher"]["resources"] = {"limits": {"memory": "1Gi"}}
    unrelated["networkPolicy"] = {"enabled": True}
    assert hashes(unrelated) == base
    # Receiver config rolls the receivers only.
    batch = wx_spec()
    batch["receiver"]["batch"]["maxMessages"] = 2000
    rx_hash, pub_hash = hashes(batch)
    assert rx_hash != base[0] and pub_hash == base[1]
    # The index template rolls the publishers only.
    fields = wx_spec()
    fields["indexTemplate"]["fields"][0]["fields"][0]["type"] = "long"
    rx_hash, pub_hash = hashes(fields)
    assert rx_hash == base[0] and pub_hash != base[1]


def test_optional_children_and_secret_wiring() -> None:
    spec = wx_spec() | {"serviceAccount": {"create": True}, "networkPolicy": {"enabled": True}}
    spec["elasticsearch"]["credentialsSecretRef"] = {"name": "es"}
    spec["receiver"]["auth"] = {"tokenSecretRef": {"name": "tokens", "key": "tokens"}}
    children = render("wx", "tenant", spec, runtime_image=IMAGE)
    assert by_kind(children, "ServiceAccount")["metadata"]["name"] == "wx-sluice"
    policy = by_kind(children, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    config = yaml.safe_load(by_kind(children, "ConfigMap")["data"]["sluice.yaml"])
    assert config["receiver"]["auth"] == {"tokenFile": "/etc/sluice/auth/tokens"}
    assert config["publisher"]["elasticsearch"]["passwordFile"] == "/etc/sluice/es/password"
    pub = by_kind(children, "Deployment")["spec"]["template"]["spec"]
    assert pub["serviceAccountName"] == "wx-sluice"
    assert pub["containers"][0]["env"][0]["name"] == "SLUICE_ES_USERNAME"
    api_key = render("wx", "tenant", spec, runtime_image=IMAGE, credentials="apiKey")
    config = yaml.safe_load(by_kind(api_key, "ConfigMap")["data"]["sluice.yaml"])
    assert config["publisher"]["elasticsearch"]["apiKeyFile"] == "/etc/sluice/es/apiKey"
    assert "env" not in by_kind(api_key, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_defaults_fill_a_minimal_spec() -> None:
    spec = {"elasticsearch": {"url": "http://es:9200", "index": "logs-%{+yyyy.MM.dd}"}}
    children = render("min", "ns", spec, runtime_image=IMAGE)
    config = yaml.safe_load(by_kind(children, "ConfigMap")["data"]["sluice.yaml"])
    assert config["receiver"]["queue"] == {"maxMessages": 500000, "whenFull": "reject"}
    assert config["publisher"]["indexTemplate"] == {"name": "min", "patterns": ["logs-*"]}
    assert "fields.yml" not in by_kind(children, "ConfigMap")["data"]
    claim = by_kind(children, "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert "storageClassName" not in claim  # the cluster default


def test_fields_from_a_configmap_are_passed_in_resolved() -> None:
    spec = wx_spec()
    spec["indexTemplate"] = {"fieldsConfigMapRef": {"name": "wx-fields"}}
    with pytest.raises(SpecError):
        render("wx", "ns", spec, runtime_image=IMAGE)
    fields = [{"name": "a", "type": "long"}]
    children = render("wx", "ns", spec, runtime_image=IMAGE, fields=fields)
    assert yaml.safe_load(by_kind(children, "ConfigMap")["data"]["fields.yml"]) == fields


@pytest.mark.parametrize(
    "source",
    ["a: [", "just a string", "- 3", "- {type: long}", "- {name: x, fields: 4}", "- {name: x, type: [1]}"],
)
def test_bad_field_lists_are_spec_errors(source: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_fields(source, "fields.yml")
    assert info.value.reason == "InvalidFields"


@pytest.mark.parametrize(
    ("index", "pattern"),
    [("wx-rtbeat-%{+yyyy.MM}", "wx-rtbeat-*"), ("plain", "plain"), ("a-%{+yyyy}-b", "a-*")],
)
def test_default_template_pattern(index: str, pattern: str) -> None:
    assert default_pattern(index) == pattern


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = conditions.merge([], [Condition("Ready", False, "Waiting", "a")], 1, timestamp="t1")
    same = conditions.merge(first, [Condition("Ready", False, "Other", "b")], 2, timestamp="t2")
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["observedGeneration"] == 2
    flipped = conditions.merge(same, [Condition("Ready", True, "Ok", "c")], 2, timestamp="t3")
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["status"] == "True"


def test_backlog_sums_the_receivers_that_answer() -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sluice_operator._core import probes

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"role": "receiver", "backlog": 7}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        answers = probes.fetch_many(["127.0.0.1", "127.0.0.1"], port, 2.0)
        assert probes.backlog(answers) == (14, 0)
        # A receiver that does not answer is counted as missing, not as zero.
        assert probes.backlog([*answers, None]) == (14, 1)
        assert probes.backlog([None]) == (None, 1)
        assert probes.fetch_status("127.0.0.1", 1, 0.5) is None
    finally:
        server.shutdown()


def edge_spec() -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "examples" / "edge.yaml").read_text())
    return next(d for d in docs if d["kind"] == "IngestPipeline" and d["metadata"]["namespace"] == "edge-site")["spec"]


def central_spec() -> dict[str, Any]:
    spec = wx_spec()
    spec["publisher"] |= {"auth": {"tokenSecretRef": {"name": "publisher-tokens"}},
                          "tls": {"secretRef": {"name": "publisher-tls"}}}
    return spec


def runtime_config(children: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(by_kind(children, "ConfigMap")["data"]["sluice.yaml"])


def mounted_files(template: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Every file path the pod's Secret mounts put in the container -> (Secret, key), checked mount by mount."""
    pod = template["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files: dict[str, tuple[str, str | None]] = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")  # "data" is a volume claim template
        if not secret:
            continue
        assert mount["readOnly"] is True, mount
        items = secret.get("items")
        if items:
            files |= {f"{mount['mountPath']}/{i['path']}": (secret["secretName"], i["key"]) for i in items}
        else:  # the whole Secret: any key is a file under the mount path
            files[f"{mount['mountPath']}/*"] = (secret["secretName"], None)
    return files


def resolves(files: dict[str, tuple[str, str | None]], path: str) -> tuple[str, str | None]:
    if path in files:
        return files[path]
    directory, _, key = path.rpartition("/")
    secret, _ = files[f"{directory}/*"]
    return secret, key


def test_edge_renders_receivers_only_forwarding_with_mounted_token_and_ca() -> None:
    children = render("weather", "edge-site", edge_spec(), runtime_image=IMAGE)
    kinds = sorted((c["kind"], c["metadata"]["name"]) for c in children)
    assert kinds == [
        ("ConfigMap", "weather-sluice-config"),
        ("PodDisruptionBudget", "weather-receiver"),
        ("Service", "weather-receiver"),
        ("Service", "weather-receiver-headless"),
        ("StatefulSet", "weather-receiver"),
    ]
    config = runtime_config(children)
    assert set(config) == {"receiver"}, "an edge pipeline configures no publisher"
    rx = config["receiver"]
    assert rx["forwardUrl"] == "https://sluice-central.example.com/in"
    files = mounted_files(by_kind(children, "StatefulSet")["spec"]["template"])
    assert files[rx["forwardTokenFile"]] == ("central-token", "token")
    assert files[rx["forwardCaFile"]] == ("central-ca", "ca.crt")
    # A network policy of an edge pipeline has no publisher rule to open.
    with_policy = render("weather", "edge-site", edge_spec() | {"networkPolicy": {"enabled": True}},
                         runtime_image=IMAGE)
    assert len(by_kind(with_policy, "NetworkPolicy")["spec"]["ingress"]) == 1


def test_edge_without_token_or_ca_forwards_plainly() -> None:
    spec = edge_spec()
    spec["forward"] = {"url": "http://central.sluice.svc:8081"}
    children = render("weather", "edge-site", spec, runtime_image=IMAGE)
    rx = runtime_config(children)["receiver"]
    assert rx["forwardUrl"] == "http://central.sluice.svc:8081"
    assert "forwardTokenFile" not in rx and "forwardCaFile" not in rx
    assert mounted_files(by_kind(children, "StatefulSet")["spec"]["template"]) == {}


@pytest.mark.parametrize(("ca_key", "expected"), [("ca.crt", "ca.crt"), ("tls.crt", "tls.crt")])
def test_central_publisher_demands_tokens_over_tls_and_its_receivers_follow(ca_key: str, expected: str) -> None:
    children = render("wx", "central", central_spec(), runtime_image=IMAGE, tls_ca_key=ca_key)
    config = runtime_config(children)
    pub_template = by_kind(children, "Deployment")["spec"]["template"]
    pub_files = mounted_files(pub_template)
    assert resolves(pub_files, config["publisher"]["auth"]["tokenFile"]) == ("publisher-tokens", "tokens")
    assert resolves(pub_files, config["publisher"]["tls"]["certFile"]) == ("publisher-tls", "tls.crt")
    assert resolves(pub_files, config["publisher"]["tls"]["keyFile"]) == ("publisher-tls", "tls.key")
    container = pub_template["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"

    rx = config["receiver"]
    assert rx["forwardUrl"] == "https://wx-publisher.central.svc:8081/in"
    rx_files = mounted_files(by_kind(children, "StatefulSet")["spec"]["template"])
    assert rx_files[rx["forwardTokenFile"]] == ("publisher-tokens", "tokens")
    assert rx_files[rx["forwardCaFile"]] == ("publisher-tls", expected)
    # The receivers get the CA (or certificate) only, never the publisher's private key.
    assert set(rx_files.values()) == {("publisher-tokens", "tokens"), ("publisher-tls", expected)}
    rx_probe = by_kind(children, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert "scheme" not in rx_probe["httpGet"]


def test_plain_pipelines_probe_without_a_scheme_and_forward_over_http() -> None:
    children = render("wx", "tenant", wx_spec(), runtime_image=IMAGE)
    assert "scheme" not in by_kind(children, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "readinessProbe"]["httpGet"]
    config = runtime_config(children)
    assert "auth" not in config["publisher"] and "tls" not in config["publisher"]
    assert "forwardTokenFile" not in config["receiver"] and "forwardCaFile" not in config["receiver"]


@pytest.mark.parametrize("spec_of", [edge_spec, central_spec], ids=["edge", "central"])
def test_edge_and_central_pods_stay_restricted(spec_of: Any) -> None:
    spec = spec_of() | {"serviceAccount": {"create": True}}
    for template in pod_templates(render("x", "ns", spec, runtime_image=IMAGE)):
        pod = template["spec"]
        assert pod["securityContext"] == pod_security_context()
        assert pod["automountServiceAccountToken"] is False
        for volume in pod["volumes"]:
            assert set(volume) - {"name"} <= {"configMap", "emptyDir", "secret", "persistentVolumeClaim"}
        for container in pod["containers"]:
            assert container["securityContext"] == container_security_context()


def test_hashes_follow_the_auth_and_tls_settings() -> None:
    base = hashes(wx_spec())
    tokens = wx_spec()
    tokens["publisher"]["auth"] = {"tokenSecretRef": {"name": "publisher-tokens"}}
    with_tokens = hashes(tokens)
    # Both roles change: the publisher checks tokens, the receivers send one.
    assert with_tokens[0] != base[0] and with_tokens[1] != base[1]
    tls = hashes(central_spec())
    assert tls[0] != with_tokens[0] and tls[1] != with_tokens[1]
    other_key = central_spec()
    other_key["publisher"]["auth"]["tokenSecretRef"]["key"] = "list"
    assert hashes(other_key) != tls
    edge_a = render("weather", "edge-site", edge_spec(), runtime_image=IMAGE)
    moved = edge_spec()
    moved["forward"]["url"] = "https://elsewhere.example.com/in"
    edge_b = render("weather", "edge-site", moved, runtime_image=IMAGE)
    annotation = [by_kind(c, "StatefulSet")["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
                  for c in (edge_a, edge_b)]
    assert annotation[0] != annotation[1]


def test_secret_uses_name_every_mounted_secret_and_its_keys() -> None:
    uses = {(u.where, u.name, u.keys) for u in secret_uses(central_spec()) + secret_uses(edge_spec())}
    assert uses == {
        ("publisher.auth.tokenSecretRef", "publisher-tokens", ("tokens",)),
        ("publisher.tls.secretRef", "publisher-tls", ("tls.crt", "tls.key")),
        ("forward.tokenSecretRef", "central-token", ("token",)),
        ("forward.caSecretRef", "central-ca", ("ca.crt",)),
    }
