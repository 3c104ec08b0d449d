"""The harness runs what was rendered, so a mistake in a rendered arg, env var or mount path fails.

The operator's own ``render`` output (its receiver half) is applied directly, once as rendered and once with each
mistake; no operator and no search engine are needed for this.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice_operator.model import render
from sluice_runtime.common.config import CONFIG_FILE_ENV
from tests.e2e.harness import HarnessError, Kubelet
from tests.support.kube import KubeCluster
from tests.support.procs import wait_until

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    return sts["spec"]["template"]["spec"]["containers"][0]


def _bad_arg(sts: dict[str, Any]) -> None:
    _container(sts)["args"][-1] = _container(sts)["args"][-1].replace("sluice.yaml", "sluice.yml")


def _bad_env(sts: dict[str, Any]) -> None:
    container = _container(sts)
    path = container["args"].pop()
    container["args"].pop()  # the config file now comes from the environment, with one directory wrong
    container["env"] = [{"name": CONFIG_FILE_ENV, "value": path.replace("/config/", "/conf/")}]


def _bad_mount(sts: dict[str, Any]) -> None:
    for mount in _container(sts)["volumeMounts"]:
        if mount["name"] == "data":
            mount["mountPath"] += "-data"  # the config's dataDir is now on the read-only root file system


# The mistake, and what the runtime says about it (the harness shows the path as the container would see it).
MISTAKES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "arg": (_bad_arg, "config/sluice.yml: No such file or directory"),
    "env": (_bad_env, "/etc/sluice/conf/sluice.yaml: Not a directory"),
    "mount": (_bad_mount, "rootfs-is-read-only/var/lib/sluice/queue"),
}


def receiver_children(namespace: str) -> list[dict[str, Any]]:
    spec = yaml.safe_load((ROOT / "examples" / "wx.yaml").read_text())["spec"]
    children = render("wx", namespace, spec, runtime_image="sluice-runtime:test")
    return [c for c in children if c["kind"] in ("ConfigMap", "StatefulSet")]


def test_the_rendered_receiver_runs(kube: KubeCluster, sluice_crd: None, namespace: str, kubelet: Kubelet) -> None:
    kube.apply(receiver_children(namespace))
    kubelet.wait_ready("receiver", 1, 60)


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_mistake_in_the_rendered_pod_fails(
    kube: KubeCluster, sluice_crd: None, namespace: str, kubelet: Kubelet, mistake: str
) -> None:
    children = receiver_children(namespace)
    mutate, message = MISTAKES[mistake]
    mutate(next(c for c in children if c["kind"] == "StatefulSet"))
    kube.apply(children)

    reported: list[str] = []

    def failed() -> bool:
        try:
            kubelet.check()
        except HarnessError as exc:
            reported.append(str(exc))
            return True
        return False

    wait_until(failed, 60, f"the harness reporting the {mistake} mistake")
    assert message in reported[0]
    assert not any(c.ready for c in kubelet.containers("receiver"))
    kubelet.crashes.clear()  # expected here: the fixture fails any other test on a crash
