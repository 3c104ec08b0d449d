"""Leader election on a coordination.k8s.io Lease, so two operator replicas are safe.

Only the holder runs kopf; the others wait. The holder renews every ``duration/3``; when it cannot renew
within ``duration`` it stops (and the pod restarts as a candidate), the client-go convention. Takeover of an
expired lease is an update with the read resourceVersion, so two candidates can never both win.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sluice_operator._core import kubeapi, metrics
from sluice_operator._core.kubeapi import ApiError

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _format(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text.replace("Z", "").split(".")[0], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


class LeaderElector:
    def __init__(self, namespace: str, name: str, identity: str, duration: float) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.is_leader = False
        self._renewer: threading.Thread | None = None

    def _path(self, with_name: bool = True) -> str:
        return kubeapi.path("coordination.k8s.io/v1", "Lease", self.namespace, self.name if with_name else None)

    def try_acquire(self) -> bool:
        """One attempt to become or stay the holder."""
        now = _now()
        lease = kubeapi.get("Lease", self.namespace, self.name)
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, int(self.duration)),
            "renewTime": _format(now),
        }
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": spec | {"acquireTime": _format(now), "leaseTransitions": 0}}
                kubeapi.request("POST", self._path(False), body=body)
                return True
            current = lease.get("spec") or {}
            holder = current.get("holderIdentity")
            renewed = _parse(current.get("renewTime")) or datetime.min.replace(tzinfo=UTC)
            expired = renewed + timedelta(seconds=current.get("leaseDurationSeconds") or self.duration) < now
            if holder and holder != self.identity and not expired:
                return False
            if holder != self.identity:
                spec |= {"acquireTime": _format(now), "leaseTransitions": (current.get("leaseTransitions") or 0) + 1}
            else:
                spec |= {k: current[k] for k in ("acquireTime", "leaseTransitions") if k in current}
            lease["spec"] = spec  # the resourceVersion in lease makes this a compare-and-swap
            kubeapi.request("PUT", self._path(), body=lease)
            return True
        except ApiError as exc:
            if exc.status in (409, 422):
                return False  # someone else won the race
            raise

    def acquire(self, stop: threading.Event) -> bool:
        log.info("waiting for leadership on Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            try:
                if self.try_acquire():
                    self.is_leader = True
                    metrics.LEADER.set(1)
                    log.info("became leader")
                    return True
            except Exception as exc:
                log.warning("leader election attempt failed: %s", exc)
            stop.wait(max(1.0, self.duration / 5))
        return False

    def keep_renewing(self, on_lost: Callable[[], None], stop: threading.Event) -> None:
        def loop() -> None:
            last_ok = _now()
            while not stop.wait(self.duration / 3):
                try:
                    if self.try_acquire():
                        last_ok = _now()
                        continue
                    log.error("another replica took the Lease")
                except Exception as exc:
                    log.warning("lease renewal failed: %s", exc)
                    if _now() - last_ok < timedelta(seconds=self.duration * 2 / 3):
                        continue
                self.is_leader = False
                metrics.LEADER.set(0)
                on_lost()
                return

        self._renewer = threading.Thread(target=loop, name="sluice-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """On a clean exit, hand over at once instead of making the next leader wait for expiry."""
        if not self.is_leader:
            return
        try:
            lease = kubeapi.get("Lease", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["leaseDurationSeconds"] = 1
                kubeapi.request("PUT", self._path(), body=lease)
        except Exception as exc:
            log.warning("could not release the Lease: %s", exc)
        self.is_leader = False
        metrics.LEADER.set(0)
