"""Names and labels of the children of one IngestPipeline; one place so render and the handlers agree."""

from __future__ import annotations

MANAGER = "sluice-operator"
PART_OF = "sluice"

RECEIVER_PORT = 8080
PUBLISHER_PORT = 8081


def receiver(name: str) -> str:
    return f"{name}-receiver"


def receiver_headless(name: str) -> str:
    return f"{name}-receiver-headless"


def publisher(name: str) -> str:
    return f"{name}-publisher"


def config(name: str) -> str:
    return f"{name}-sluice-config"


def service_account(name: str) -> str:
    return f"{name}-sluice"


def pdb(name: str, component: str) -> str:
    return f"{name}-{component}"


def network_policy(name: str) -> str:
    return f"{name}-sluice"


def endpoint(name: str, namespace: str) -> str:
    return f"http://{receiver(name)}.{namespace}.svc:{RECEIVER_PORT}/rx"


def selector_labels(name: str, component: str) -> dict[str, str]:
    """The immutable subset used in selectors; never add to it (StatefulSet selectors cannot change)."""
    return {
        "app.kubernetes.io/name": "sluice",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
    }


def labels(name: str, component: str, version: str = "") -> dict[str, str]:
    result = {
        **selector_labels(name, component),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGER,
    }
    if version:
        result["app.kubernetes.io/version"] = version[:63]
    return result


def instance_selector(name: str) -> str:
    """A label selector that finds every child of one pipeline."""
    return f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGER}"


MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGER}"
