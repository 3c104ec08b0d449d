"""A kubelet (and kube-proxy) for Sluice's own pods, so that what the operator renders is what actually runs.

Kwok makes pods Ready but runs nothing inside them. :class:`Kubelet` follows the pods that the StatefulSet and
ReplicaSet controllers create from the operator's children and runs each container as a local process:

- the command: ``sluice`` (the image's entrypoint) becomes ``python -m sluice_runtime``; args and env come from the
  pod spec (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``; ``$(VAR)`` expanded);
- volumes: ConfigMap and Secret volumes are written into a per-pod directory, a PersistentVolumeClaim is one local
  directory per claim name (``data-wx-receiver-0``) that outlives the pod, an emptyDir is a per-pod directory;
- paths: every absolute path in args, env values and mounted YAML files is rewritten to the local directory of the
  mount that holds it. A path under no mount leads into a *file*, so any use of it fails (even as root), like a
  read-only root filesystem of an image that has nothing there: a wrong mount path fails the test;
- network: each pod gets its own loopback ports. A listen address ``0.0.0.0:8080`` becomes ``127.0.0.1:<port>``;
  a URL to ``<svc>.<ns>.svc[.cluster.local]`` (or ``<svc>`` when that Service exists) goes to a local proxy for that
  Service port, which round-robins over the ready processes its selector matches, and refuses connections while the
  Service does not exist or has no ready endpoint. URLs to any other host (the test Elasticsearch) pass unchanged;
- readiness: each container's ``readinessProbe.httpGet`` is polled; only ready containers are proxy endpoints;
- restarts: a process that exits while its pod exists is restarted (restartPolicy Always); an exit the test did
  not cause is recorded in :attr:`Kubelet.crashes`, and the fixture fails the test on it;
- rollouts and scaling need nothing special: the controllers replace and add pods, and processes follow pods.

The operator reads receivers' ``/status`` at pod IPs; the harness keeps ``SLUICE_OPERATOR_ADDRESS_MAP``'s file
(``podIP:port`` -> loopback) current, so ``kubectl get ingp`` shows the real backlog.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from tests.support.procs import ManagedProcess, free_port, wait_until

MANAGED = "app.kubernetes.io/managed-by=sluice-operator"
ENTRYPOINTS = {"sluice": [sys.executable, "-m", "sluice_runtime"]}
TICK = 0.25
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)

_LISTEN = re.compile(r"^(0\.0\.0\.0|\[::\]|::|localhost|127\.0\.0\.1)?:(\d+)$")
_URL = re.compile(r"^(https?)://([^/:?#\[\]]+)(?::(\d+))?(.*)$", re.DOTALL)
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class HarnessError(AssertionError):
    """A pod the harness cannot run as rendered (an unsupported or broken spec)."""


@dataclass
class Container:
    """One running (or restarting) container of one pod."""

    pod: str
    uid: str
    name: str
    labels: dict[str, str]
    process: ManagedProcess
    ports: dict[int, int]  # containerPort -> local port
    named_ports: dict[str, int]  # port name -> containerPort
    readiness: dict[str, Any] | None
    volumes: dict[str, Path]  # volume name -> local directory
    restarts: int = 0
    expected_exit: bool = False
    ready: bool = False
    next_start: float = 0.0

    def local(self, port: int | str) -> int | None:
        number = self.named_ports.get(port) if isinstance(port, str) else port
        return self.ports.get(number) if number is not None else None


@dataclass
class _Service:
    name: str
    selector: dict[str, str]
    target: dict[int, int | str]  # service port -> targetPort


@dataclass
class Crash:
    pod: str
    container: str
    code: int | None
    log_tail: str


@dataclass
class _Pods:
    """One poll of the namespace: the objects the harness acts on."""

    pods: list[dict[str, Any]]
    services: dict[str, _Service]
    config_maps: dict[str, dict[str, Any]]
    secrets: dict[str, dict[str, Any]]


class Kubelet:
    """Runs the pods of one namespace (those labelled as the operator's) as local processes; see the module doc."""

    def __init__(self, kubeconfig: Path, namespace: str, work_dir: Path, log_dir: Path) -> None:
        self.namespace = namespace
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.address_map = work_dir / "address-map.json"
        self.claims_dir = work_dir / "claims"
        self.crashes: list[Crash] = []
        self.errors: dict[str, str] = {}  # pod -> why it cannot run (cleared when it can)
        self._api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
        self._containers: dict[tuple[str, str], Container] = {}  # (pod uid, container) -> container
        self._services: dict[str, _Service] = {}
        self._proxy_ports: dict[tuple[str, int], int] = {}
        self._round_robin = itertools.count()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._threads = [
            threading.Thread(target=self._loop.run_forever, name="harness-proxy", daemon=True),
            threading.Thread(target=self._run, name="harness-kubelet", daemon=True),
        ]
        self.address_map.write_text("{}")

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> Kubelet:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._threads[1].join(30)
        with self._lock:
            for container in self._containers.values():
                container.expected_exit = True
                container.process.stop(10)
            self._containers.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._threads[0].join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the API server may blink; the next tick tries again
                self.errors["(poll)"] = repr(exc)
            else:
                self.errors.pop("(poll)", None)
            self._stop.wait(TICK)

    # --- one reconcile of pods to processes ------------------------------------------------------------------------

    def _poll(self) -> _Pods:
        ns = self.namespace

        def items(call: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
            # Raw JSON, not the typed models: the harness reads pod specs as the API server stores them.
            return json.loads(call(ns, _preload_content=False, **kwargs).data)["items"]

        services = {}
        for svc in items(self._api.list_namespaced_service):
            spec = svc["spec"]
            target = {p["port"]: p.get("targetPort", p["port"]) for p in spec.get("ports") or []}
            services[svc["metadata"]["name"]] = _Service(svc["metadata"]["name"], spec.get("selector") or {}, target)
        return _Pods(
            pods=items(self._api.list_namespaced_pod, label_selector=MANAGED),
            services=services,
            config_maps={c["metadata"]["name"]: c for c in items(self._api.list_namespaced_config_map)},
            secrets={s["metadata"]["name"]: s for s in items(self._api.list_namespaced_secret)},
        )

    def tick(self) -> None:
        seen = self._poll()
        live = {
            p["metadata"]["uid"]: p
            for p in seen.pods
            if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
        }
        with self._lock:
            self._services = seen.services
            gone = [self._containers.pop(k) for k in [k for k in self._containers if k[0] not in live]]
            for container in gone:
                container.expected_exit = True
        # Stopped outside the lock (the proxy needs it meanwhile), and before any start: a StatefulSet pod's
        # replacement reuses its volume, and the queue's lock in it.
        for container in gone:
            container.process.stop(30)
        with self._lock:
            for uid, pod in live.items():
                self._sync_pod(uid, pod, seen)
            current = list(self._containers.values())
        # Probes may take their timeout; the proxy must not wait for them meanwhile.
        for container in current:
            self._supervise(container)
        with self._lock:
            self._write_address_map(live)

    def _sync_pod(self, uid: str, pod: dict[str, Any], seen: _Pods) -> None:
        name = pod["metadata"]["name"]
        containers = pod["spec"]["containers"]
        if all((uid, c["name"]) in self._containers for c in containers):
            return
        try:
            volumes = self._materialise_volumes(pod, seen)
            pod_ports: dict[int, int] = {}  # one network namespace per pod: its containers share the ports
            for spec in containers:
                if (uid, spec["name"]) not in self._containers:
                    container = self._container(pod, spec, volumes, pod_ports, seen)
                    self._containers[(uid, spec["name"])] = container
                    container.process.start()
        except _Waiting as exc:
            self.errors[name] = str(exc)  # like ContainerCreating: retried on the next tick
            return
        except HarnessError as exc:
            self.errors[name] = f"cannot run: {exc}"
            return
        self.errors.pop(name, None)

    def _supervise(self, container: Container) -> None:
        process = container.process
        if process.alive():
            container.ready = self._probe(container)
            return
        container.ready = False
        if container.next_start == 0.0:
            if not container.expected_exit:
                code = process.proc.returncode if process.proc else None
                self.crashes.append(Crash(container.pod, container.name, code, process.log_tail()))
            delay = RESTART_BACKOFF[min(container.restarts, len(RESTART_BACKOFF) - 1)]
            container.next_start = time.monotonic() + delay
        elif time.monotonic() >= container.next_start:
            container.restarts += 1
            container.expected_exit = False
            container.next_start = 0.0
            process.start()

    def _probe(self, container: Container) -> bool:
        probe = container.readiness
        if not probe:
            return True
        get = probe.get("httpGet")
        if get is None:
            self.errors[container.pod] = f"cannot run: {container.name}: only httpGet readiness probes are supported"
            return False
        port = container.local(get["port"])
        if port is None:
            return False  # a probe on an undeclared port never succeeds
        try:
            url = f"http://127.0.0.1:{port}{get.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds", 1))) as response:
                return 200 <= response.status < 400
        except Exception:
            return False

    def _write_address_map(self, live: Mapping[str, dict[str, Any]]) -> None:
        mapping = {}
        for (uid, _), container in self._containers.items():
            ip = (live[uid].get("status") or {}).get("podIP")
            if ip:
                mapping |= {f"{ip}:{port}": f"127.0.0.1:{local}" for port, local in container.ports.items()}
        temporary = self.address_map.with_suffix(".tmp")
        temporary.write_text(json.dumps(mapping, sort_keys=True))
        temporary.replace(self.address_map)  # atomic: the operator never reads half a file

    # --- volumes ---------------------------------------------------------------------------------------------------

    def _materialise_volumes(self, pod: dict[str, Any], seen: _Pods) -> dict[str, Path]:
        pod_dir = self.work_dir / "pods" / f"{pod['metadata']['name']}-{pod['metadata']['uid'][:8]}"
        local: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            target = pod_dir / "volumes" / name
            if "persistentVolumeClaim" in volume:
                target = self.claims_dir / volume["persistentVolumeClaim"]["claimName"]
                target.mkdir(parents=True, exist_ok=True)
            elif "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
            elif "configMap" in volume or "secret" in volume:
                files = self._volume_files(volume, seen)
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                source = volume.get("configMap") or volume.get("secret") or {}
                for path, content in files.items():
                    file = target / path
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_bytes(content)
                    file.chmod(int(source.get("defaultMode", 0o644)))
            else:
                raise HarnessError(f"volume {name}: only configMap, secret, persistentVolumeClaim and emptyDir")
            local[name] = target
        return local

    def _volume_files(self, volume: dict[str, Any], seen: _Pods) -> dict[str, bytes]:
        if "configMap" in volume:
            ref = volume["configMap"]
            obj = seen.config_maps.get(ref["name"])
            raw = {k: v.encode() for k, v in ((obj or {}).get("data") or {}).items()}
            raw |= {k: base64.b64decode(v) for k, v in ((obj or {}).get("binaryData") or {}).items()}
        else:
            ref = volume["secret"]
            obj = seen.secrets.get(ref["secretName"])
            raw = {k: base64.b64decode(v) for k, v in ((obj or {}).get("data") or {}).items()}
        what = f"{'ConfigMap' if 'configMap' in volume else 'Secret'} {ref.get('name') or ref.get('secretName')}"
        if obj is None:
            if ref.get("optional"):
                return {}
            raise _Waiting(f"{what} does not exist yet")
        items = ref.get("items")
        if not items:
            return raw
        missing = [i["key"] for i in items if i["key"] not in raw]
        if missing and not ref.get("optional"):
            raise _Waiting(f"{what} has no key {missing[0]!r}")
        return {i["path"]: raw[i["key"]] for i in items if i["key"] in raw}

    # --- one container ---------------------------------------------------------------------------------------------

    def _container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        volumes: dict[str, Path],
        pod_ports: dict[int, int],
        seen: _Pods,
    ) -> Container:
        meta = pod["metadata"]
        mounts: dict[str, Path] = {}
        for mount in spec.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                raise HarnessError(f"container {spec['name']} mounts volume {mount['name']!r}, which the pod lacks")
            local = volumes[mount["name"]] / mount.get("subPath", "")
            mounts[mount["mountPath"].rstrip("/") or "/"] = local
        # A path under no mount leads below this regular file, so that using it fails with ENOTDIR, even as root.
        rootfs = self.work_dir / "pods" / f"{meta['name']}-{meta['uid'][:8]}" / "rootfs-is-read-only"
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        rootfs.touch()
        view = _PodView(self, mounts, rootfs, pod_ports)

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": meta["name"]}
        for entry in spec.get("env") or []:
            env[entry["name"]] = view.rewrite(_expand(self._env_value(pod, entry, seen), env))
        if "/tmp" in mounts:
            env["TMPDIR"] = str(mounts["/tmp"])  # the container's /tmp is its emptyDir, not the host's
        command = spec.get("command") or ["sluice"]  # the image's ENTRYPOINT
        if command[0] not in ENTRYPOINTS:
            raise HarnessError(f"container {spec['name']}: unknown command {command[0]!r}")
        args = [view.rewrite_arg(_expand(arg, env)) for arg in [*command[1:], *spec.get("args", [])]]
        config_volumes = {v["name"] for v in pod["spec"].get("volumes") or [] if "configMap" in v}
        for mount in spec.get("volumeMounts") or []:
            if mount["name"] in config_volumes:
                view.rewrite_files(volumes[mount["name"]])

        named = {p["name"]: p["containerPort"] for p in spec.get("ports") or [] if p.get("name")}
        for port in spec.get("ports") or []:
            view.local_port(port["containerPort"])
        log = self.log_dir / f"{self.namespace}-{meta['name']}-{spec['name']}.log"
        process = ManagedProcess(f"{meta['name']}/{spec['name']}", [*ENTRYPOINTS[command[0]], *args], log, env=env)
        process.env = env  # exactly the pod's environment, not the test runner's SLUICE_* variables
        return Container(meta["name"], meta["uid"], spec["name"], dict(meta.get("labels") or {}), process, pod_ports,
                         named, spec.get("readinessProbe"), volumes)

    def _env_value(self, pod: dict[str, Any], entry: dict[str, Any], seen: _Pods) -> str:
        if "value" in entry or "valueFrom" not in entry:
            return str(entry.get("value", ""))
        source = entry["valueFrom"]
        if "secretKeyRef" in source or "configMapKeyRef" in source:
            secret = "secretKeyRef" in source
            ref = source["secretKeyRef"] if secret else source["configMapKeyRef"]
            obj = (seen.secrets if secret else seen.config_maps).get(ref["name"])
            values = (obj or {}).get("data") or {}
            if ref["key"] not in values:
                if ref.get("optional"):
                    return ""
                raise _Waiting(f"env {entry['name']}: {ref['name']} has no key {ref['key']!r} (or does not exist)")
            return base64.b64decode(values[ref["key"]]).decode() if secret else str(values[ref["key"]])
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": pod["metadata"]["name"],
                "metadata.namespace": pod["metadata"]["namespace"],
                "status.podIP": (pod.get("status") or {}).get("podIP", ""),
                "spec.nodeName": pod["spec"].get("nodeName", ""),
            }
            if path not in fields:
                raise HarnessError(f"env {entry['name']}: fieldRef {path} is not supported")
            return str(fields[path])
        raise HarnessError(f"env {entry['name']}: unsupported valueFrom {sorted(source)}")

    # --- network ---------------------------------------------------------------------------------------------------

    def service_address(self, host: str, port: int) -> tuple[str, int] | None:
        """The loopback address that stands for ``host:port`` inside the namespace, or None if it is not ours."""
        ns = self.namespace
        for suffix in (f".{ns}.svc.cluster.local", f".{ns}.svc"):
            if host.endswith(suffix) and "." not in host.removesuffix(suffix):
                # Reserved whether or not the Service exists yet: like DNS, it works once the Service is created.
                return "127.0.0.1", self._proxy_port(host.removesuffix(suffix), port)
        with self._lock:
            if host in self._services:
                return "127.0.0.1", self._proxy_port(host, port)
        return None

    def url(self, url: str) -> str:
        """``url`` as seen from a pod of the namespace (e.g. the CR's ``status.endpoint``), for the test to call."""
        return _rewrite_url(url, self.service_address)

    def _proxy_port(self, service: str, port: int) -> int:
        key = (service, port)
        with self._lock:
            if key not in self._proxy_ports:
                # Bound and listening here and now, so the port is ours and connections queue until the loop serves
                # them; never waiting for the loop while holding the lock its connections need.
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind(("127.0.0.1", 0))
                listener.listen(128)
                listener.setblocking(False)
                self._proxy_ports[key] = listener.getsockname()[1]

                async def serve(listener: socket.socket = listener) -> None:
                    await asyncio.start_server(lambda r, w: self._relay(key, r, w), sock=listener)

                asyncio.run_coroutine_threadsafe(serve(), self._loop)
            return self._proxy_ports[key]

    def endpoints(self, service: str, port: int) -> list[int]:
        """Local ports of the ready containers behind ``service:port`` (empty while the Service does not exist)."""
        with self._lock:
            svc = self._services.get(service)
            if svc is None or port not in svc.target or not svc.selector:
                return []
            target = svc.target[port]
            found = []
            for container in self._containers.values():
                if container.ready and all(container.labels.get(k) == v for k, v in svc.selector.items()):
                    local = container.local(target)
                    if local is not None:
                        found.append(local)
            return found

    async def _relay(self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backends = self.endpoints(*key)
        if not backends:
            writer.close()  # no Service or no ready endpoint: the connection is refused, as kube-proxy's REJECT
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", backends[next(self._round_robin) % len(backends)]
            )
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(OSError):
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    # --- for tests -------------------------------------------------------------------------------------------------

    def containers(self, component: str | None = None) -> list[Container]:
        with self._lock:
            found = [c for c in self._containers.values() if c.process.alive()]
        if component is not None:
            found = [c for c in found if c.labels.get("app.kubernetes.io/component") == component]
        return sorted(found, key=lambda c: c.pod)

    def ready(self, component: str, count: int) -> bool:
        """Exactly ``count`` containers of ``component`` run and are ready (raises on a pod that cannot run)."""
        self.check()
        running = self.containers(component)
        return len(running) == count and all(c.ready for c in running)

    def wait_ready(self, component: str, count: int, timeout: float = 90) -> None:
        wait_until(lambda: self.ready(component, count), timeout, f"{count} ready {component} process(es)")

    def kill(self, pod: str) -> None:
        """SIGKILL the container(s) of ``pod``, as a crash would; the harness restarts them like a kubelet."""
        with self._lock:
            for container in self._containers.values():
                if container.pod == pod:
                    container.expected_exit = True
                    container.process.kill()

    def check(self) -> None:
        """Raise if any pod cannot run as rendered, or any process exited without the test's doing."""
        broken = {pod: why for pod, why in self.errors.items() if why.startswith("cannot run")}
        if broken or self.crashes:
            lines = [f"{pod}: {why}" for pod, why in broken.items()]
            lines += [f"{c.pod}/{c.container} exited with {c.code}:\n{c.log_tail}" for c in self.crashes]
            raise HarnessError("\n".join(lines))


class _Waiting(Exception):
    """The pod cannot start yet (a ConfigMap or Secret it needs is missing); kubelet would keep trying."""


@dataclass
class _PodView:
    """How one pod sees the file system and the network, translated to local directories and loopback ports."""

    kubelet: Kubelet
    mounts: dict[str, Path]
    rootfs: Path
    ports: dict[int, int]

    def local_port(self, port: int) -> int:
        if port not in self.ports:
            self.ports[port] = free_port()
        return self.ports[port]

    def path(self, value: str) -> str:
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(self.mounts[mount_path]) + value[len(mount_path.rstrip("/")):]
        return str(self.rootfs) + value

    def rewrite(self, value: str) -> str:
        if value.startswith("/"):
            return self.path(value)
        listen = _LISTEN.match(value)
        if listen:
            return f"127.0.0.1:{self.local_port(int(listen.group(2)))}"
        return _rewrite_url(value, self.kubelet.service_address)

    def rewrite_arg(self, arg: str) -> str:
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            return f"{flag}={self.rewrite(value)}"
        return self.rewrite(arg)

    def rewrite_files(self, directory: Path) -> None:
        """Rewrite the string values of the YAML (and JSON) files of a ConfigMap volume; other files stay as is."""
        for file in directory.rglob("*"):
            if file.suffix not in (".yaml", ".yml", ".json") or not file.is_file():
                continue
            original = yaml.safe_load(file.read_text())
            rewritten = _walk(original, self.rewrite)
            if rewritten != original:
                file.write_text(yaml.safe_dump(rewritten, sort_keys=False, allow_unicode=True))


def _walk(value: Any, rewrite: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        return {k: _walk(v, rewrite) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, rewrite) for v in value]
    return value


def _rewrite_url(value: str, resolve: Callable[[str, int], tuple[str, int] | None]) -> str:
    match = _URL.match(value)
    if not match:
        return value
    scheme, host, port, rest = match.groups()
    address = resolve(host, int(port or (443 if scheme == "https" else 80)))
    return value if address is None else f"{scheme}://{address[0]}:{address[1]}{rest}"


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in args and env values (an unknown name stays as written)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


@contextlib.contextmanager
def running_kubelet(kubeconfig: Path, namespace: str, work_dir: Path, log_dir: Path) -> Iterator[Kubelet]:
    kubelet = Kubelet(kubeconfig, namespace, work_dir, log_dir).start()
    try:
        yield kubelet
    finally:
        kubelet.close()
