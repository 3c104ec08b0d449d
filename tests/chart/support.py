"""Helm and chart helpers shared by the chart tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support import provision

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sluice-operator"
# A `go install`-built helm has no Kubernetes version stamped in and assumes v1.20, below the chart's kubeVersion.
KUBE_VERSION = provision.KUBERNETES_VERSION

NAMESPACED = {"watch.allNamespaces": "false", "watch.namespaces": "{a,b}"}
MONITORS = {"metrics.serviceMonitor.enabled": "true", "metrics.podMonitor.enabled": "true"}


def helm_path() -> str:
    pinned = provision.helm_bin()
    if pinned.exists():
        return str(pinned)
    found = shutil.which("helm")
    if found is None:
        raise RuntimeError(f"helm not found at {pinned} nor on PATH: run `make testbed`")
    return found


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def run_helm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run([helm_path(), *args], env=env, capture_output=True, text=True, timeout=120)


def template_args(values: dict[str, str], release: str = "sl", namespace: str = "ops") -> list[str]:
    return ["template", release, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION, *set_args(values)]


def render(values: dict[str, str], home: Path, release: str = "sl", namespace: str = "ops") -> list[dict]:
    proc = run_helm(*template_args(values, release, namespace), home=home)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def of_kind(docs: list[dict], *kinds: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] in kinds]


def wildcards(docs: list[dict]) -> list[str]:
    """Every '*' in a Role's or ClusterRole's rules, as 'kind/name: field'."""
    found = []
    for role in of_kind(docs, "Role", "ClusterRole"):
        for rule in role.get("rules", []):
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                if any("*" in item for item in rule.get(key, [])):
                    found.append(f"{role['kind']}/{role['metadata']['name']}: {key}={rule[key]}")
    return found
