"""Drift repair and status refresh outside kopf's per-event handlers.

kopf timers would add a finalizer to every IngestPipeline (DESIGN section 5 pitfall), so the periodic resync
and the child-triggered reconciles run on this small deduplicating queue with a few worker threads instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from sluice_operator import KIND
from sluice_operator._cogs.settings import OperatorSettings
from sluice_operator._core import kubeapi, metrics
from sluice_operator._core.kubeapi import ApiError
from sluice_operator._core.reconcile import forget_except, reconcile

log = logging.getLogger(__name__)

Key = tuple[str, str]


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: OrderedDict[Key, None] = OrderedDict()
        self._active: set[Key] = set()

    def add(self, key: Key) -> None:
        with self._cond:
            self._pending[key] = None  # a key already pending is not queued twice
            self._cond.notify()

    def get(self, stop: threading.Event) -> Key | None:
        with self._cond:
            while not stop.is_set():
                for key in self._pending:
                    if key not in self._active:  # the same pipeline is never worked on by two threads
                        del self._pending[key]
                        self._active.add(key)
                        return key
                self._cond.wait(0.5)
            return None

    def done(self, key: Key) -> None:
        with self._cond:
            self._active.discard(key)
            self._cond.notify_all()


class Resyncer:
    """Lists every pipeline each ``resync_seconds`` and reconciles the queue with ``workers`` threads."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.queue = WorkQueue()
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._resync_loop, name="sluice-resync", daemon=True)]
        self._threads += [
            threading.Thread(target=self._worker, name=f"sluice-worker-{n}", daemon=True)
            for n in range(self.settings.workers)
        ]
        for thread in self._threads:
            thread.start()

    def healthy(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def _resync_loop(self) -> None:
        while not self.stop.is_set():
            try:
                items = self._list_pipelines()
                metrics.MANAGED.set(len(items))
                keys = {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}
                for key in keys:
                    self.queue.add(key)
                forget_except(keys)
            except Exception as exc:
                metrics.ERRORS.labels("ResyncList").inc()
                log.warning("resync list failed: %s", exc)
            self.stop.wait(self.settings.resync_seconds)

    def _list_pipelines(self) -> list[dict]:
        if self.settings.all_namespaces:
            return kubeapi.list_(KIND, None)
        return [item for ns in self.settings.namespaces for item in kubeapi.list_(KIND, ns)]

    def _worker(self) -> None:
        while not self.stop.is_set():
            key = self.queue.get(self.stop)
            if key is None:
                return
            try:
                body = kubeapi.get(KIND, *key)
                if body is not None:
                    reconcile(body, self.settings)
            except ApiError as exc:
                if exc.not_found:
                    log.debug("%s/%s disappeared during its reconcile", *key)  # deleted: GC does the rest
                else:
                    log.warning("reconcile of %s/%s failed: %s", key[0], key[1], exc)
            except Exception as exc:
                # Logged and retried at the next resync; one broken pipeline never stops the others.
                log.warning("reconcile of %s/%s failed: %s", key[0], key[1], exc)
                time.sleep(0.5)
            finally:
                self.queue.done(key)
