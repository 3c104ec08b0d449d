"""Provision the pinned, real test-bed parts into a cache directory.

Run as ``python3 tests/support/provision.py`` (``make testbed``). Only the standard library is
used so that this works before any virtualenv exists. Every part is installed under a
directory named after its version, so bumping a pin rebuilds and an unchanged pin is a no-op.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.5"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.22.0"
ELASTICSEARCH_VERSION = "8.19.0"
OPENSEARCH_VERSION = "2.19.0"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ENGINE_USER = "sluice-testbed"


def testbed_dir() -> Path:
    default = Path.home() / ".cache" / "sluice" / "testbed"
    return Path(os.environ.get("SLUICE_TESTBED_DIR", default))


def engines_dir() -> Path:
    # The engines refuse to run as root and root's home is not readable by other users,
    # so their install lives where the unprivileged engine user can read it.
    return Path(os.environ.get("SLUICE_ENGINES_DIR", "/var/tmp/sluice-testbed"))


def kube_bin(name: str) -> Path:
    return testbed_dir() / f"kubernetes-{KUBERNETES_VERSION}" / "bin" / name


def etcd_bin() -> Path:
    return testbed_dir() / f"etcd-{ETCD_VERSION}" / "bin" / "etcd"


def kwok_bin() -> Path:
    return testbed_dir() / f"kwok-{KWOK_VERSION}" / "bin" / "kwok"


def helm_bin() -> Path:
    return testbed_dir() / f"helm-{HELM_VERSION}" / "bin" / "helm"


def elasticsearch_home() -> Path:
    return engines_dir() / f"elasticsearch-{ELASTICSEARCH_VERSION}"


def opensearch_home() -> Path:
    return engines_dir() / f"opensearch-{OPENSEARCH_VERSION}"


class StepFailed(RuntimeError):
    pass


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    merged = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=merged, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepFailed(
            f"command failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
            f"cwd: {cwd or os.getcwd()}\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"
            f"\n--- stdout (tail) ---\n{proc.stdout[-2000:]}"
        )
    return proc.stdout


def go_env() -> dict[str, str]:
    return {"GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


def write_wrapper_module(workdir: Path, module: str, require: str, tools: list[str], replaces: list[str]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"module {module}", "", "go 1.26.0", "", f"require {require}", ""]
    lines += [f"replace {r}" for r in replaces]
    lines += [""] + [f"tool {t}" for t in tools]
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")


def kubernetes_staging_replaces() -> list[str]:
    info = json.loads(run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], env=go_env()))
    staging_version = "v0" + KUBERNETES_VERSION[2:]
    replaces = []
    for line in Path(info["GoMod"]).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            replaces.append(f"{parts[0]} => {parts[0]} {staging_version}")
    if not replaces:
        raise StepFailed(f"no staging replace lines found in {info['GoMod']}")
    return replaces


def build_kubernetes() -> None:
    work = testbed_dir() / "build" / f"kubernetes-{KUBERNETES_VERSION}"
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_COMMANDS]
    write_wrapper_module(
        work,
        "sluice.dev/testbed/kubernetes",
        f"k8s.io/kubernetes {KUBERNETES_VERSION}",
        packages,
        kubernetes_staging_replaces(),
    )
    run(["go", "mod", "tidy"], cwd=work, env=go_env())
    minor = KUBERNETES_VERSION.split(".")[1]
    ldflags = " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
            "-X k8s.io/component-base/version.gitMajor=1",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            f"-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION}",
        ]
    )
    out = kube_bin("kubectl").parent
    out.mkdir(parents=True, exist_ok=True)
    run(["go", "build", "-ldflags", ldflags, "-o", str(out) + "/", *packages], cwd=work, env=go_env())


def build_etcd() -> None:
    work = testbed_dir() / "build" / f"etcd-{ETCD_VERSION}"
    write_wrapper_module(
        work, "sluice.dev/testbed/etcd", f"go.etcd.io/etcd/server/v3 {ETCD_VERSION}", ["go.etcd.io/etcd/server/v3"], []
    )
    run(["go", "mod", "tidy"], cwd=work, env=go_env())
    etcd_bin().parent.mkdir(parents=True, exist_ok=True)
    run(
        ["go", "build", "-ldflags", "-s -w", "-o", str(etcd_bin()), "go.etcd.io/etcd/server/v3"], cwd=work, env=go_env()
    )


def go_install(package: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    run(["go", "install", "-ldflags", "-s -w", package], env={**go_env(), "GOFLAGS": "", "GOBIN": str(target.parent)})


def ensure_engine_user() -> None:
    if os.geteuid() != 0:
        return
    if subprocess.run(["id", "-u", ENGINE_USER], capture_output=True).returncode != 0:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ENGINE_USER])


def install_engine(group: str, artifact: str, version: str, home: Path) -> None:
    # MAVEN_REPO moves the local repository, for Maven and for the unzip alike.
    repo = Path(os.environ.get("MAVEN_REPO", Path.home() / ".m2" / "repository"))
    run([
        "mvn", "-q", "-B", "dependency:get", f"-Dmaven.repo.local={repo}",
        f"-Dartifact={group}:{artifact}:{version}:zip", "-Dtransitive=false",
    ])  # fmt: skip
    archive = repo / group.replace(".", "/") / artifact / version / f"{artifact}-{version}.zip"
    staging = home.with_name(home.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            extracted = Path(zf.extract(info, staging))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                extracted.chmod(mode)
    (top,) = list(staging.iterdir())
    shutil.rmtree(home, ignore_errors=True)
    top.rename(home)
    staging.rmdir()
    for path in [engines_dir(), *home.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    engines_dir().chmod(0o755)


@dataclass(frozen=True)
class Step:
    name: str
    done: Callable[[], bool]
    install: Callable[[], None]


def steps() -> list[Step]:
    return [
        Step(
            "engine user",
            lambda: os.geteuid() != 0 or subprocess.run(["id", "-u", ENGINE_USER], capture_output=True).returncode == 0,
            ensure_engine_user,
        ),
        Step(
            f"elasticsearch {ELASTICSEARCH_VERSION}",
            lambda: (elasticsearch_home() / "bin" / "elasticsearch").exists(),
            lambda: install_engine(
                "org.elasticsearch.distribution.integ-test-zip",
                "elasticsearch",
                ELASTICSEARCH_VERSION,
                elasticsearch_home(),
            ),
        ),
        Step(
            f"opensearch {OPENSEARCH_VERSION}",
            lambda: (opensearch_home() / "bin" / "opensearch").exists(),
            lambda: install_engine(
                "org.opensearch.distribution.integ-test-zip", "opensearch", OPENSEARCH_VERSION, opensearch_home()
            ),
        ),
        Step(f"etcd {ETCD_VERSION}", etcd_bin().exists, build_etcd),
        Step(
            f"kwok {KWOK_VERSION}",
            kwok_bin().exists,
            lambda: go_install(f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}", kwok_bin()),
        ),
        Step(
            f"helm {HELM_VERSION}",
            helm_bin().exists,
            lambda: go_install(f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}", helm_bin()),
        ),
        Step(
            f"kubernetes {KUBERNETES_VERSION} ({', '.join(KUBE_COMMANDS)})",
            lambda: all(kube_bin(name).exists() for name in KUBE_COMMANDS),
            build_kubernetes,
        ),
    ]


def main() -> int:
    print(f"test bed: {testbed_dir()} (engines: {engines_dir()})", flush=True)
    for index, step in enumerate(steps(), start=1):
        prefix = f"[{index}/{len(steps())}] {step.name}"
        if step.done():
            print(f"{prefix}: present", flush=True)
            continue
        print(f"{prefix}: installing ...", flush=True)
        started = time.monotonic()
        try:
            step.install()
        except (StepFailed, OSError, zipfile.BadZipFile) as exc:
            print(f"{prefix}: FAILED\n{exc}", file=sys.stderr, flush=True)
            return 1
        if not step.done():
            print(f"{prefix}: FAILED: install finished but the result is missing", file=sys.stderr, flush=True)
            return 1
        print(f"{prefix}: done in {time.monotonic() - started:.0f}s", flush=True)
    print("test bed ready", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
