"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler and kwok."""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.support import provision
from tests.support.procs import ManagedProcess, free_port

READY_TIMEOUT = 120.0
FAKE_NODE = "kwok-node-0"
STORAGE_CLASSES = ("standard", "rook-block")
VOLUMES_PER_CLASS = 120


class KubeCluster:
    """Handles for tests: kubeconfig, kubectl and helm bound to this cluster, and its processes."""

    def __init__(self, kubeconfig: Path, work_dir: Path, processes: list[ManagedProcess]) -> None:
        self.kubeconfig = kubeconfig
        self.work_dir = work_dir
        self.processes = processes
        self.server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.work_dir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.work_dir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.work_dir / "helm" / "data"),
        }

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([_tool("kubectl", provision.kube_bin("kubectl")), *args], self.env, input, check)

    def helm(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([_tool("helm", provision.helm_bin()), *args], self.env, input, check)

    def apply(self, manifest: dict | list[dict] | str) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump_all(_as_list(manifest))
        return self.kubectl("apply", "--server-side", "--field-manager=sluice-tests", "-f", "-", input=text)


def _as_list(manifest: dict | list[dict]) -> list[dict]:
    return manifest if isinstance(manifest, list) else [manifest]


def _tool(name: str, pinned: Path) -> str:
    if pinned.exists():
        return str(pinned)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found at {pinned} nor on PATH: run `make testbed`")
    return found


def _run(argv: list[str], env: dict[str, str], input: str | None, check: bool) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, input=input, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])}... failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "admin"}}],
        "current-context": "testbed",
    }
    path.write_text(yaml.safe_dump(config))


def _apiserver_ready(server: str, ca_file: Path, token: str) -> bool:
    context = ssl.create_default_context(cafile=str(ca_file))
    request = urllib.request.Request(f"{server}/readyz", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=5) as response:
        return response.status == 200


def _fake_node() -> dict:
    resources = {"cpu": "64", "memory": "256Gi", "pods": "500"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": FAKE_NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": FAKE_NODE, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


def _storage(volume_root: Path) -> list[dict]:
    objects: list[dict] = []
    for storage_class in STORAGE_CLASSES:
        annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if storage_class == "standard" else {}
        objects.append(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": storage_class, "annotations": annotations},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "Immediate",
            }
        )
        for index in range(VOLUMES_PER_CLASS):
            name = f"{storage_class}-pv-{index:03d}"
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": name, "labels": {"sluice.dev/testbed": "true"}},
                    "spec": {
                        "capacity": {"storage": "10Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": storage_class,
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": str(volume_root / name), "type": "DirectoryOrCreate"},
                    },
                }
            )
    return objects


@contextmanager
def running_cluster(work_dir: Path, log_dir: Path) -> Iterator[KubeCluster]:
    """Start the control plane in ``work_dir``; stop every process on exit."""
    processes: list[ManagedProcess] = []
    try:
        cluster = _start(work_dir, log_dir, processes)
        yield cluster
    finally:
        for process in reversed(processes):
            process.stop(timeout=15)


def _start(work_dir: Path, log_dir: Path, processes: list[ManagedProcess]) -> KubeCluster:
    certs = work_dir / "certs"
    certs.mkdir(parents=True)
    _openssl("genrsa", "-out", str(certs / "sa.key"), "2048")
    _openssl("rsa", "-in", str(certs / "sa.key"), "-pubout", "-out", str(certs / "sa.pub"))
    token = secrets.token_hex(16)
    (certs / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")

    def launch(name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, log_dir / f"{name}.log").start()
        processes.append(process)
        return process

    etcd_port, peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    etcd = launch(
        "etcd",
        [
            str(provision.etcd_bin()),
            "--name", "testbed",
            "--data-dir", str(work_dir / "etcd"),
            "--listen-client-urls", etcd_url,
            "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"testbed=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
        ],
    )  # fmt: skip
    etcd.wait_ready(lambda: urllib.request.urlopen(f"{etcd_url}/health", timeout=2).status == 200, READY_TIMEOUT)

    secure_port = free_port()
    server = f"https://127.0.0.1:{secure_port}"
    apiserver = launch(
        "kube-apiserver",
        [
            str(provision.kube_bin("kube-apiserver")),
            "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1",
            "--advertise-address", "127.0.0.1",
            "--endpoint-reconciler-type", "none",
            "--secure-port", str(secure_port),
            "--cert-dir", str(certs),
            "--token-auth-file", str(certs / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-key-file", str(certs / "sa.pub"),
            "--service-account-signing-key-file", str(certs / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.96.0.0/16",
        ],
    )  # fmt: skip
    ca_file = certs / "apiserver.crt"
    apiserver.wait_ready(lambda: ca_file.exists() and _apiserver_ready(server, ca_file, token), READY_TIMEOUT)
    kubeconfig = work_dir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, ca_file, token)

    launch(
        "kube-controller-manager",
        [
            str(provision.kube_bin("kube-controller-manager")),
            "--kubeconfig", str(kubeconfig),
            "--leader-elect=false",
            "--service-account-private-key-file", str(certs / "sa.key"),
            "--root-ca-file", str(ca_file),
            "--use-service-account-credentials",
            "--controllers", "*",
            "--secure-port", str(free_port()),
        ],
    )  # fmt: skip
    launch(
        "kube-scheduler",
        [
            str(provision.kube_bin("kube-scheduler")),
            "--kubeconfig", str(kubeconfig),
            "--leader-elect=false",
            "--secure-port", str(free_port()),
        ],
    )  # fmt: skip
    launch(
        "kwok",
        [
            str(provision.kwok_bin()),
            "--kubeconfig", str(kubeconfig),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds", "40",
            "--cidr", "10.244.0.1/24",
            "--node-ip", "10.244.0.1",
        ],
    )  # fmt: skip
    cluster = KubeCluster(kubeconfig, work_dir, processes)
    cluster.apply([_fake_node(), *_storage(work_dir / "volumes")])
    cluster.kubectl("wait", "--for=condition=Ready", f"node/{FAKE_NODE}", f"--timeout={int(READY_TIMEOUT)}s")
    # Namespaced workloads need the default ServiceAccount that the controller-manager creates.
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", "default", "--timeout=60s")
    return cluster
