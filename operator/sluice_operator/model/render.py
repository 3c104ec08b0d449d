"""``render(name, namespace, spec)``: the full list of child manifests of one IngestPipeline.

Pure by design (DESIGN section 9): no Kubernetes client, no I/O, no owner references (the handlers add those,
because they need the live object's uid). Whatever must be looked up in the cluster (a fields list kept in a
ConfigMap, which keys a credentials Secret has) is resolved by the caller and passed in as keyword arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from sluice_operator._cogs import naming
from sluice_operator._cogs.durations import seconds
from sluice_operator._cogs.hashing import CONFIG_HASH_ANNOTATION, stable_hash
from sluice_operator.model.spec import (
    CA_KEY,
    FORWARD_TOKEN_KEY,
    TLS_CERT_KEY,
    TLS_KEY_KEY,
    TOKENS_KEY,
    SpecError,
    is_edge,
    parse_fields,
    ref_key,
    with_defaults,
)

CONFIG_DIR = "/etc/sluice/config"
CONFIG_FILE = f"{CONFIG_DIR}/sluice.yaml"
FIELDS_FILE = f"{CONFIG_DIR}/fields.yml"
DATA_MOUNT = "/var/lib/sluice"
ES_SECRET_DIR = "/etc/sluice/es"
ES_CA_DIR = "/etc/sluice/es-ca"
AUTH_DIR = "/etc/sluice/auth"
FORWARD_TOKEN_DIR = "/etc/sluice/forward-token"
FORWARD_CA_DIR = "/etc/sluice/forward-ca"
PUBLISHER_AUTH_DIR = "/etc/sluice/publisher-auth"
PUBLISHER_TLS_DIR = "/etc/sluice/tls"
RUN_AS = 10001
SECRET_MODE = 0o440  # private material: owner and the fsGroup only
PUBLIC_MODE = 0o444  # CA bundles

Credentials = Literal["basic", "apiKey"]


def render(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    *,
    runtime_image: str,
    fields: list[Any] | None = None,
    credentials: Credentials | None = None,
    tls_ca_key: str = TLS_CERT_KEY,
) -> list[dict[str, Any]]:
    """Every child of the pipeline, in apply order (config before the pods that mount it).

    ``fields`` is the resolved list when the spec points at a ConfigMap; ``credentials`` says whether the
    credentials Secret holds username/password (``basic``, the default) or ``apiKey``; ``tls_ca_key`` is the key
    of the publisher's TLS Secret that the receivers trust (``ca.crt`` when the Secret has one, else the
    certificate itself).

    An edge pipeline (``spec.forward``) renders no publisher: no Deployment, Service or PDB, and no publisher
    section in the config.
    """
    s = with_defaults(spec)
    edge = is_edge(s)
    image = s.get("image") or runtime_image
    version = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    template = s.get("indexTemplate") or {}
    if "fieldsConfigMapRef" in template and fields is None:
        raise SpecError("InvalidSpec", "indexTemplate.fieldsConfigMapRef is set but its fields were not resolved")
    field_list = fields if fields is not None else parse_fields(template.get("fields"), "spec.indexTemplate.fields")

    target = _forward_target(name, namespace, s, tls_ca_key)
    receiver_cfg = _receiver_config(s, target)
    runtime_config = {"receiver": receiver_cfg}
    if not edge:
        runtime_config["publisher"] = _publisher_config(name, s, bool(field_list), credentials)
    config_data = {"sluice.yaml": yaml.safe_dump(runtime_config, sort_keys=True)}
    if field_list:
        config_data["fields.yml"] = yaml.safe_dump(field_list, sort_keys=False, allow_unicode=True)
    # Per-role hashes: a batch-size change rolls the receivers only, a template change the publishers only.
    receiver_hash = stable_hash({"receiver": receiver_cfg})

    sa_name = naming.service_account(name) if s["serviceAccount"].get("create") else None
    pipeline = _Pipeline(name, namespace, s, image, version, sa_name)
    children: list[dict[str, Any]] = []
    if sa_name:
        children.append(_service_account(pipeline, sa_name))
    children.append(pipeline.meta("v1", "ConfigMap", naming.config(name), "config") | {"data": config_data})
    children += _receiver(pipeline, receiver_hash, target)
    if not edge:
        publisher_hash = stable_hash({"publisher": runtime_config["publisher"],
                                      "fields": config_data.get("fields.yml", "")})
        children += _publisher(pipeline, publisher_hash, credentials)
    if s["networkPolicy"].get("enabled"):
        children.append(_network_policy(pipeline))
    return children


@dataclass(frozen=True)
class _Pipeline:
    """What every child of one pipeline shares: whose it is, its spec, and the image and service account it runs."""

    name: str
    namespace: str
    spec: Mapping[str, Any]
    image: str
    version: str
    service_account: str | None

    def labels(self, component: str) -> dict[str, str]:
        return naming.labels(self.name, component, self.version)

    def meta(self, api_version: str, kind: str, child: str, component: str) -> dict[str, Any]:
        return {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": child, "namespace": self.namespace, "labels": self.labels(component)},
        }


@dataclass(frozen=True)
class _SecretFiles:
    """A Secret mounted read-only as files: one ``key`` only (the others stay out of the pod), or all when None."""

    volume: str
    secret: str
    directory: str
    key: str | None = None
    mode: int = SECRET_MODE

    def path(self, key: str | None = None) -> str:
        return f"{self.directory}/{key or self.key}"

    def mount(self, container: dict[str, Any], volumes: list[dict[str, Any]]) -> None:
        source: dict[str, Any] = {"secretName": self.secret, "defaultMode": self.mode}
        if self.key:
            source["items"] = [{"key": self.key, "path": self.key}]
        volumes.append({"name": self.volume, "secret": source})
        container["volumeMounts"].append({"name": self.volume, "mountPath": self.directory, "readOnly": True})


def _ref_files(
    ref: Mapping[str, Any] | None, volume: str, directory: str, default_key: str | None, mode: int = SECRET_MODE
) -> _SecretFiles | None:
    """The mount of a ``{name, key}`` reference, or of a whole Secret when ``default_key`` is None."""
    if not ref:
        return None
    key = ref_key(ref, default_key) if default_key else None
    return _SecretFiles(volume, ref["name"], directory, key, mode)


@dataclass(frozen=True)
class _ForwardTarget:
    """Where the receivers send their batches, and the Secret files that go with it."""

    url: str
    token: _SecretFiles | None
    ca: _SecretFiles | None


def _forward_target(name: str, namespace: str, s: Mapping[str, Any], tls_ca_key: str) -> _ForwardTarget:
    forward = s.get("forward")
    if forward:
        return _ForwardTarget(
            forward["url"],
            _ref_files(forward.get("tokenSecretRef"), "forward-token", FORWARD_TOKEN_DIR, FORWARD_TOKEN_KEY),
            _ref_files(forward.get("caSecretRef"), "forward-ca", FORWARD_CA_DIR, CA_KEY, PUBLIC_MODE),
        )
    # Our own publisher: if it demands tokens or serves TLS, its receivers must follow suit. They mount only the
    # key they need (never the TLS private key) and send the first token of the publisher's own list.
    pub = s["publisher"]
    tls_ref = (pub.get("tls") or {}).get("secretRef")
    scheme = "https" if tls_ref else "http"
    return _ForwardTarget(
        f"{scheme}://{naming.publisher(name)}.{namespace}.svc:{naming.PUBLISHER_PORT}/in",
        _ref_files((pub.get("auth") or {}).get("tokenSecretRef"), "forward-token", FORWARD_TOKEN_DIR, TOKENS_KEY),
        _SecretFiles("forward-ca", tls_ref["name"], FORWARD_CA_DIR, tls_ca_key, PUBLIC_MODE) if tls_ref else None,
    )


def _publisher_files(s: Mapping[str, Any]) -> tuple[_SecretFiles | None, _SecretFiles | None]:
    """The publisher's accepted-tokens file and its TLS key pair (the whole kubernetes.io/tls Secret)."""
    pub = s["publisher"]
    return (
        _ref_files((pub.get("auth") or {}).get("tokenSecretRef"), "publisher-auth", PUBLISHER_AUTH_DIR, TOKENS_KEY),
        _ref_files((pub.get("tls") or {}).get("secretRef"), "tls", PUBLISHER_TLS_DIR, None),
    )


def _receiver_config(s: Mapping[str, Any], target: _ForwardTarget) -> dict[str, Any]:
    rx = s["receiver"]
    batch = rx["batch"]
    try:
        max_wait = seconds(batch.get("maxWait", "10s"))
    except ValueError as exc:
        raise SpecError("InvalidSpec", f"receiver.batch.maxWait: {exc}") from None
    receiver: dict[str, Any] = {
        "listen": f"0.0.0.0:{naming.RECEIVER_PORT}",
        "dataDir": f"{DATA_MOUNT}/queue",
        "forwardUrl": target.url,
        "queue": {"maxMessages": rx["queue"]["maxMessages"], "whenFull": rx["queue"]["whenFull"]},
        "batch": {"maxMessages": batch["maxMessages"], "maxWait": max_wait}
        | {k: batch[k] for k in ("maxBytes", "maxInFlight") if k in batch},
    }
    if "maxBodyBytes" in rx:
        receiver["maxBodyBytes"] = rx["maxBodyBytes"]
    token_ref = (rx.get("auth") or {}).get("tokenSecretRef")
    if token_ref:
        receiver["auth"] = {"tokenFile": f"{AUTH_DIR}/{token_ref.get('key', 'tokens')}"}
    if target.token:
        receiver["forwardTokenFile"] = target.token.path()
    if target.ca:
        receiver["forwardCaFile"] = target.ca.path()
    return receiver


def _publisher_config(
    name: str, s: Mapping[str, Any], has_fields: bool, credentials: Credentials | None
) -> dict[str, Any]:
    es = s["elasticsearch"]
    es_cfg: dict[str, Any] = {"url": es["url"], "index": es["index"]}
    if "deadLetterIndex" in es:
        es_cfg["deadLetterIndex"] = es["deadLetterIndex"]
    if "gzip" in es:
        es_cfg["gzip"] = bool(es["gzip"])
    if es.get("credentialsSecretRef"):
        if credentials == "apiKey":
            es_cfg["apiKeyFile"] = f"{ES_SECRET_DIR}/apiKey"
        else:
            # The username travels as SLUICE_ES_USERNAME from the Secret (see _publisher), the password as a file.
            es_cfg["passwordFile"] = f"{ES_SECRET_DIR}/password"
    if es.get("caSecretRef"):
        es_cfg["caFile"] = f"{ES_CA_DIR}/{es['caSecretRef'].get('key', 'ca.crt')}"
    template = s.get("indexTemplate") or {}
    publisher: dict[str, Any] = {"listen": f"0.0.0.0:{naming.PUBLISHER_PORT}", "elasticsearch": es_cfg}
    publisher["indexTemplate"] = {
        "name": template.get("name") or name,
        "patterns": list(template.get("patterns") or [default_pattern(es["index"])]),
    } | ({"fieldsFile": FIELDS_FILE} if has_fields else {})
    tokens, tls = _publisher_files(s)
    if tokens:
        publisher["auth"] = {"tokenFile": tokens.path()}
    if tls:
        publisher["tls"] = {"certFile": tls.path(TLS_CERT_KEY), "keyFile": tls.path(TLS_KEY_KEY)}
    return publisher


def default_pattern(index: str) -> str:
    """``wx-rtbeat-%{+yyyy.MM}`` -> ``wx-rtbeat-*``: the template must cover every index the date math makes."""
    if "%{" not in index:
        return index
    return re.sub(r"%\{[^}]*\}.*$", "", index) + "*"


def _service_account(pipeline: _Pipeline, sa_name: str) -> dict[str, Any]:
    sa = pipeline.meta("v1", "ServiceAccount", sa_name, "serviceaccount")
    # The runtime never talks to the API server, so no token is mounted anywhere.
    sa["automountServiceAccountToken"] = False
    return sa


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,  # the queue volume must be writable by the non-root user
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(
    role: str, image: str, port: int, resources: Mapping[str, Any] | None, https: bool = False
) -> dict[str, Any]:
    # The scheme is set only for HTTPS: an explicit HTTP default would change (and roll) every existing pod.
    scheme = {"scheme": "HTTPS"} if https else {}
    probe_common = {"httpGet": {"path": "/healthz", "port": "http"} | scheme, "periodSeconds": 10,
                    "timeoutSeconds": 3}
    return {
        "name": role,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sluice"],
        "args": [role, "--config", CONFIG_FILE],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": probe_common | {"failureThreshold": 6},
        "readinessProbe": probe_common | {"httpGet": {"path": "/readyz", "port": "http"} | scheme,
                                          "failureThreshold": 3},
        "resources": dict(resources or {}),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _pod_spec(pipeline: _Pipeline, container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": naming.config(pipeline.name)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            *volumes,
        ],
    }
    if pipeline.service_account:
        spec["serviceAccountName"] = pipeline.service_account
    return spec


def _service(pipeline: _Pipeline, svc_name: str, component: str, port: int, headless: bool = False) -> dict[str, Any]:
    svc = pipeline.meta("v1", "Service", svc_name, component)
    svc["spec"] = {
        "selector": naming.selector_labels(pipeline.name, component),
        "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
    }
    if headless:
        # Stable per-pod DNS for the StatefulSet; not-ready pods too, so a receiver draining its queue is reachable.
        svc["spec"] |= {"clusterIP": "None", "publishNotReadyAddresses": True}
    else:
        svc["spec"]["type"] = "ClusterIP"
    return svc


def _pdb(pipeline: _Pipeline, component: str) -> dict[str, Any]:
    pdb = pipeline.meta("policy/v1", "PodDisruptionBudget", naming.pdb(pipeline.name, component), component)
    pdb["spec"] = {"maxUnavailable": 1, "selector": {"matchLabels": naming.selector_labels(pipeline.name, component)}}
    return pdb


def _receiver(pipeline: _Pipeline, config_hash: str, target: _ForwardTarget) -> list[dict[str, Any]]:
    name = pipeline.name
    rx = pipeline.spec["receiver"]
    container = _container("receiver", pipeline.image, naming.RECEIVER_PORT, rx.get("resources"))
    container["volumeMounts"].append({"name": "data", "mountPath": DATA_MOUNT})
    volumes: list[dict[str, Any]] = []
    for files in (_ref_files((rx.get("auth") or {}).get("tokenSecretRef"), "auth", AUTH_DIR, None),
                  target.token, target.ca):
        if files:
            files.mount(container, volumes)
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": rx["storage"]["size"]}},
    }
    if rx["storage"].get("storageClassName"):
        claim_spec["storageClassName"] = rx["storage"]["storageClassName"]
    sts = pipeline.meta("apps/v1", "StatefulSet", naming.receiver(name), "receiver")
    sts["spec"] = {
        "replicas": rx["replicas"],
        "serviceName": naming.receiver_headless(name),
        # Receivers are independent queues: no reason to start them one by one.
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": naming.selector_labels(name, "receiver")},
        "template": {
            "metadata": {"labels": pipeline.labels("receiver"), "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
            "spec": _pod_spec(pipeline, container, volumes),
        },
        "volumeClaimTemplates": [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "labels": naming.selector_labels(name, "receiver")},
                "spec": claim_spec,
            }
        ],
    }
    return [
        _service(pipeline, naming.receiver_headless(name), "receiver", naming.RECEIVER_PORT, headless=True),
        _service(pipeline, naming.receiver(name), "receiver", naming.RECEIVER_PORT),
        sts,
        _pdb(pipeline, "receiver"),
    ]


def _publisher(pipeline: _Pipeline, config_hash: str, credentials: Credentials | None) -> list[dict[str, Any]]:
    name = pipeline.name
    pub = pipeline.spec["publisher"]
    es = pipeline.spec["elasticsearch"]
    tokens, tls = _publisher_files(pipeline.spec)
    container = _container(
        "publisher", pipeline.image, naming.PUBLISHER_PORT, pub.get("resources"), https=tls is not None
    )
    volumes: list[dict[str, Any]] = []
    secret_ref = es.get("credentialsSecretRef")
    if secret_ref and credentials != "apiKey":
        key_ref = {"name": secret_ref["name"], "key": "username"}
        container["env"] = [{"name": "SLUICE_ES_USERNAME", "valueFrom": {"secretKeyRef": key_ref}}]
    for files in (_ref_files(secret_ref, "es-credentials", ES_SECRET_DIR, None),
                  _ref_files(es.get("caSecretRef"), "es-ca", ES_CA_DIR, None, PUBLIC_MODE), tokens, tls):
        if files:
            files.mount(container, volumes)
    deployment = pipeline.meta("apps/v1", "Deployment", naming.publisher(name), "publisher")
    deployment["spec"] = {
        "replicas": pub["replicas"],
        "selector": {"matchLabels": naming.selector_labels(name, "publisher")},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pipeline.labels("publisher"), "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
            "spec": _pod_spec(pipeline, container, volumes),
        },
    }
    return [
        deployment,
        _service(pipeline, naming.publisher(name), "publisher", naming.PUBLISHER_PORT),
        _pdb(pipeline, "publisher"),
    ]


def _network_policy(pipeline: _Pipeline) -> dict[str, Any]:
    name, s = pipeline.name, pipeline.spec
    peers = list(s["networkPolicy"].get("ingressFrom") or [])
    receiver_rule: dict[str, Any] = {"ports": [{"port": naming.RECEIVER_PORT, "protocol": "TCP"}]}
    if peers:
        receiver_rule["from"] = peers
    own_receivers = {"podSelector": {"matchLabels": naming.selector_labels(name, "receiver")}}
    publisher_rule: dict[str, Any] = {"ports": [{"port": naming.PUBLISHER_PORT, "protocol": "TCP"}],
                                      "from": [own_receivers]}
    if (s["publisher"].get("auth") or {}).get("tokenSecretRef"):
        # A publisher that demands tokens is there for receivers elsewhere too: admit the receivers' peers.
        publisher_rule = {"ports": publisher_rule["ports"]} | ({"from": [own_receivers, *peers]} if peers else {})
    policy = pipeline.meta("networking.k8s.io/v1", "NetworkPolicy", naming.network_policy(name), "networkpolicy")
    policy["spec"] = {
        "podSelector": {"matchLabels": {"app.kubernetes.io/instance": name, "app.kubernetes.io/name": "sluice"}},
        "policyTypes": ["Ingress"],
        # An edge pipeline has no publisher to let anything in to.
        "ingress": [receiver_rule] + ([] if is_edge(s) else [publisher_rule]),
    }
    return policy
