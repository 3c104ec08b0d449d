"""``sluice-operator [--namespace NS ... | --all-namespaces]``: leader election, then ``kopf run``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import kopf

from sluice_operator._cogs.settings import DEFAULT_RUNTIME_IMAGE, OperatorSettings
from sluice_operator._core import handlers, kubeapi, reconcile
from sluice_operator._core.health import serve
from sluice_operator._core.leader import LeaderElector
from sluice_operator._core.workqueue import Resyncer

log = logging.getLogger("sluice_operator")

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sluice-operator", description="Runs the IngestPipeline operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (the default when no --namespace is given)")
    env = os.environ.get
    parser.add_argument("--runtime-image", default=env("SLUICE_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE),
                        help="image of the receiver and publisher pods (env SLUICE_RUNTIME_IMAGE)")
    parser.add_argument("--log-level", default=env("SLUICE_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--resync-interval", type=float, default=float(env("SLUICE_RESYNC_INTERVAL", "15")),
                        metavar="SECONDS", help="re-apply every pipeline at least this often (drift repair bound)")
    parser.add_argument("--backlog-timeout", type=float, default=1.0, metavar="SECONDS",
                        help="timeout of one receiver /status request")
    parser.add_argument("--workers", type=int, default=4, help="resync worker threads")
    parser.add_argument("--health-listen", default=env("SLUICE_HEALTH_LISTEN", "0.0.0.0:8080"),
                        metavar="HOST:PORT", help="serves /healthz (liveness) and /metrics")
    parser.add_argument("--no-leader-election", dest="leader_election", action="store_false",
                        help="run without the Lease (one replica only)")
    parser.add_argument("--leader-election-namespace", default=env("POD_NAMESPACE", ""), metavar="NS",
                        help="namespace of the Lease (default: the pod's namespace)")
    parser.add_argument("--leader-election-id", default="sluice-operator", metavar="NAME", help="name of the Lease")
    parser.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS")
    parser.add_argument("--identity", default=env("POD_NAME", "") or socket.gethostname(),
                        help="this replica's identity in the Lease (default: POD_NAME or the host name)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    lease_ns = args.leader_election_namespace
    if not lease_ns and SA_NAMESPACE_FILE.exists():
        lease_ns = SA_NAMESPACE_FILE.read_text().strip()
    if not lease_ns:
        lease_ns = args.namespace[0] if args.namespace else "default"
    return OperatorSettings(
        runtime_image=args.runtime_image,
        namespaces=tuple(args.namespace),
        all_namespaces=not args.namespace,
        resync_seconds=args.resync_interval,
        backlog_timeout_seconds=args.backlog_timeout,
        workers=args.workers,
        leader_election=args.leader_election,
        lease_name=args.leader_election_id,
        lease_namespace=lease_ns,
        lease_duration_seconds=args.lease_duration,
        identity=args.identity,
        health_listen=args.health_listen,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "debug":
        # kopf logs every child-watch event handler at INFO: noise at the rate children change.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kubeapi.load_config()
    stop = threading.Event()
    lost = threading.Event()
    resyncer = Resyncer(settings)
    elector = (
        LeaderElector(settings.lease_namespace, settings.lease_name, settings.identity,
                      settings.lease_duration_seconds)
        if settings.leader_election
        else None
    )

    def healthy() -> tuple[bool, str]:
        if lost.is_set():
            return False, "lost leadership"
        if elector is not None and not elector.is_leader:
            return True, "standby"
        return (resyncer.healthy(), "leader" if resyncer.healthy() else "worker threads died")

    serve(settings.health_listen, healthy)
    try:
        if elector is not None:
            if not elector.acquire(_stop_on_signals(stop)):
                return 0

            def on_lost() -> None:
                reconcile.ACTIVE.clear()
                lost.set()
                resyncer.stop.set()  # stop writing at once; a new leader may already be applying
                # kopf's own SIGTERM handling is the clean way to stop it. (A threading.Event stop_flag would
                # park an executor thread that blocks interpreter exit on an ordinary SIGTERM.)
                os.kill(os.getpid(), signal.SIGTERM)

            elector.keep_renewing(on_lost, stop)
        reconcile.ACTIVE.set()
        resyncer.start()
        registry = kopf.OperatorRegistry()
        handlers.register(registry, settings, resyncer)
        log.info("watching %s", "all namespaces" if settings.all_namespaces else ", ".join(settings.namespaces))
        kopf.run(
            registry=registry,
            settings=handlers.kopf_settings(),
            standalone=True,  # no kopf peering: the Lease above already guarantees a single active replica
            clusterwide=settings.all_namespaces,
            namespaces=settings.namespaces,
        )
    finally:
        stop.set()
        resyncer.stop.set()
        if elector is not None and not lost.is_set():
            elector.release()
    return 1 if lost.is_set() else 0


def _stop_on_signals(stop: threading.Event) -> threading.Event:
    """While waiting for leadership kopf is not running yet, so SIGTERM must end the wait by itself."""

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


if __name__ == "__main__":
    sys.exit(main())
