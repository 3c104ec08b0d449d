"""A small generic REST layer over the kubernetes client: server-side apply, get, list, delete, status patch.

The generated typed APIs would need one code path per kind; the children are plain dicts from render, so a
generic path per (apiVersion, kind) keeps the reconciler kind-agnostic.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from sluice_operator._cogs.naming import MANAGER

PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Pod": "pods",
    "Event": "events",
    "StatefulSet": "statefulsets",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "Lease": "leases",
    "IngestPipeline": "ingestpipelines",
}

API_VERSIONS = {
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "Pod": "v1",
    "StatefulSet": "apps/v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Lease": "coordination.k8s.io/v1",
    "IngestPipeline": "sluice.dev/v1alpha1",
}

TIMEOUT = 20


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body

    @property
    def not_found(self) -> bool:
        return self.status == 404


_client_lock = threading.Lock()
_client: kubernetes.client.ApiClient | None = None


def load_config() -> None:
    """In-cluster service account first, then KUBECONFIG / ~/.kube/config (local runs, tests)."""
    global _client
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    # Worker threads, kopf's handler threads and the lease thread share one pool; urllib3's default of 10
    # would make them discard and reopen connections under load.
    configuration.connection_pool_maxsize = 32
    with _client_lock:
        _client = kubernetes.client.ApiClient(configuration)


def client() -> kubernetes.client.ApiClient:
    with _client_lock:
        if _client is None:
            raise RuntimeError("kubeapi.load_config() was not called")
        return _client


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    url = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{PLURALS[kind]}"
    if name:
        url += f"/{name}"
    if sub:
        url += f"/{sub}"
    return url


def request(
    method: str,
    resource_path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    api = client()
    headers = {"Accept": "application/json", "Content-Type": content_type}
    method, url, headers, _, _ = api.param_serialize(
        method, resource_path, query_params=query or [], header_params=headers, auth_settings=["BearerToken"]
    )
    try:
        # The REST client serialises dict bodies itself for JSON and structured-YAML content types.
        response = api.call_api(method, url, header_params=headers, body=body, _request_timeout=TIMEOUT)
        data = response.read()
        status = response.status
    except ApiException as exc:
        raise ApiError(exc.status or 0, str(exc.body or exc.reason)) from None
    text = data.decode() if isinstance(data, bytes) else str(data or "")
    if status >= 400:
        raise ApiError(status, text)
    return json.loads(text) if text else {}


def apply(manifest: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
    """Server-side apply under the operator's stable field manager; force takes fields back from hand edits."""
    meta = manifest["metadata"]
    return request(
        "PATCH",
        path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]),
        body=manifest,
        query=[("fieldManager", MANAGER), ("force", "true" if force else "false")],
        content_type="application/apply-patch+yaml",
    )


def get(kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    try:
        return request("GET", path(API_VERSIONS[kind], kind, namespace, name))
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


def list_(kind: str, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
    query = [("labelSelector", selector)] if selector else []
    return list(request("GET", path(API_VERSIONS[kind], kind, namespace), query=query).get("items", []))


def delete(kind: str, namespace: str, name: str, uid: str | None = None) -> None:
    # A uid precondition: never delete a same-named object that someone else created in between.
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    if uid:
        body["preconditions"] = {"uid": uid}
    try:
        request("DELETE", path(API_VERSIONS[kind], kind, namespace, name), body=body)
    except ApiError as exc:
        if not exc.not_found:
            raise


def patch_status(kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    return request(
        "PATCH",
        path(API_VERSIONS[kind], kind, namespace, name, "status"),
        body={"status": status},
        content_type="application/merge-patch+json",
    )
