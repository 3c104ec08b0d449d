"""Every example in examples/ is accepted by a real API server with the CRD installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kube import KubeCluster

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path for path in (ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_is_accepted(kube: KubeCluster, sluice_crd: None, namespace: str, example: Path) -> None:
    # Examples that create their own namespaces are applied for real; the others go into a fresh namespace.
    text = example.read_text()
    if "kind: Namespace" in text:
        applied = kube.kubectl("apply", "--server-side", "-f", str(example))
        names = [line.split()[0] for line in applied.stdout.splitlines() if line.startswith("namespace/")]
        for name in names:
            kube.kubectl("delete", name, "--wait=false")
    else:
        kube.kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(example))
        kube.kubectl("apply", "--server-side", "-n", namespace, "-f", str(example))
        assert kube.kubectl("get", "ingp", "-n", namespace, "-o", "name").stdout.strip()
