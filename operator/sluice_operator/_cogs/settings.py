"""The operator's own settings, from flags and environment; one frozen object passed down the layers."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_RUNTIME_IMAGE = "ghcr.io/sluice-dev/sluice-runtime:0.1.0"


@dataclass(frozen=True)
class OperatorSettings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = True
    # Bounded drift repair: every pipeline is re-applied at least this often, children watched or not.
    resync_seconds: float = 15.0
    # The receivers' /status is polled for the backlog with this timeout, so a dead pod never stalls a reconcile.
    backlog_timeout_seconds: float = 1.0
    workers: int = 4
    leader_election: bool = True
    lease_name: str = "sluice-operator"
    lease_namespace: str = ""
    lease_duration_seconds: float = 15.0
    identity: str = ""
    health_listen: str = "0.0.0.0:8080"
    log_level: str = "info"
    extra: dict[str, str] = field(default_factory=dict)
