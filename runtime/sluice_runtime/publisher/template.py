"""The composable index template: built from the fields file, installed on start-up and whenever it changes.

The template carries a hash of its own content in ``_meta``, so checking whether the engine holds the
current version is one GET, and an unchanged template is never rewritten. The fields file is re-read
when it changes on disk (a mounted ConfigMap is updated in place), and the engine is checked every
``checkInterval`` so a template deleted by hand comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from sluice_runtime.common.config import ConfigError
from sluice_runtime.publisher.engine import EngineClient, EngineError, EngineRefused, EngineUnreachable
from sluice_runtime.publisher.fields import FieldsError, load_fields_file
from sluice_runtime.publisher.metrics import PublisherMetrics

log = logging.getLogger("sluice.publisher.template")

MANAGED_BY = "sluice"
MAX_RETRY_INTERVAL = 30.0


def template_body(
    patterns: list[str], priority: int, mappings: dict[str, Any], data_stream: bool = False
) -> dict[str, Any]:
    """The ``_index_template`` body, stamped with a hash of everything else in it."""
    body: dict[str, Any] = {"index_patterns": patterns, "priority": priority, "template": {"mappings": mappings}}
    if data_stream:
        body["data_stream"] = {}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    body["_meta"] = {"managed_by": MANAGED_BY, "hash": digest}
    return body


class TemplateRejected(Exception):
    """The engine refused the template itself (for example a type it does not know)."""


class TemplateInstaller:
    def __init__(
        self,
        engine: EngineClient,
        name: str,
        fields_file: Path | None,
        patterns: list[str],
        priority: int,
        check_interval: float,
        metrics: PublisherMetrics,
        data_stream: bool = False,
    ) -> None:
        self._engine = engine
        self.name = name
        self._fields_file = fields_file
        self._patterns = patterns
        self._priority = priority
        self._check_interval = check_interval
        self._metrics = metrics
        self._data_stream = data_stream
        self._file_stamp: tuple[float, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.body: dict[str, Any] = {}
        self.warnings: tuple[str, ...] = ()
        self.installed_hash: str | None = None
        self.installed_at: str | None = None
        self.checked_at: str | None = None
        self.error: str | None = None

    @property
    def desired_hash(self) -> str:
        return str(self.body["_meta"]["hash"])

    @property
    def state(self) -> str:
        if self.installed_hash is None:
            return "pending"
        return "installed" if self.installed_hash == self.desired_hash else "outdated"

    def load(self) -> bool:
        """Build the template from the fields file if the file changed; True when it did."""
        if self._fields_file is None:
            # A data stream's template without a fields file: dynamic mappings, @timestamp as the engine maps it.
            first = not self.body
            if first:
                self.body = template_body(self._patterns, self._priority, {}, self._data_stream)
            return first
        try:
            stat = self._fields_file.stat()
            stamp = (stat.st_mtime, stat.st_size)
        except OSError as exc:
            raise FieldsError(f"fields file {self._fields_file}: cannot be read: {exc.strerror}") from exc
        if stamp == self._file_stamp:
            return False
        fields = load_fields_file(self._fields_file)
        for warning in fields.warnings:
            log.warning("%s", warning, extra={"fieldsFile": str(self._fields_file)})
        self.body = template_body(self._patterns, self._priority, fields.as_mappings(), self._data_stream)
        self.warnings = fields.warnings
        self._file_stamp = stamp
        return True

    async def start(self) -> None:
        """First install, at start-up: a template the engine refuses stops start-up; an absent engine does not."""
        try:
            self.load()
        except FieldsError as exc:
            raise ConfigError(f"publisher.indexTemplate.fieldsFile: {exc}") from None
        try:
            await self.ensure()
        except TemplateRejected as exc:
            raise ConfigError(f"publisher.indexTemplate: {exc}") from None
        except (EngineUnreachable, EngineError, EngineRefused) as exc:
            log.warning("index template %s not installed yet: %s", self.name, exc)
        self._task = asyncio.create_task(self._watch(), name=f"index-template-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def ensure(self) -> None:
        """Make the engine hold the current template; raise when that cannot be done now."""
        try:
            if await self._installed_hash() != self.desired_hash:
                await self._put()
                self.installed_at = _now()
                log.info("index template %s installed", self.name, extra={"hash": self.desired_hash})
            self.installed_hash = self.desired_hash
            self.checked_at = _now()
            self.error = None
            self._metrics.template_installs.labels("ok").inc()
        except (EngineUnreachable, EngineError, EngineRefused, TemplateRejected) as exc:
            self.error = str(exc)
            self._metrics.template_installs.labels("failed").inc()
            raise
        finally:
            self._metrics.template_installed.set(1 if self.state == "installed" else 0)

    async def _watch(self) -> None:
        failures = 0 if self.state == "installed" else 1
        while True:
            delay = self._check_interval if failures == 0 else min(MAX_RETRY_INTERVAL, 2.0 ** (failures - 1))
            await asyncio.sleep(delay)
            try:
                if self.load():
                    log.info("fields file %s changed", self._fields_file)
                await self.ensure()
                failures = 0
            except FieldsError as exc:
                # Keep serving with the template already installed; the status shows the problem.
                self.error = str(exc)
                log.error("fields file no longer usable, keeping the installed template: %s", exc)
                failures = 0
            except (EngineUnreachable, EngineError, EngineRefused, TemplateRejected) as exc:
                failures += 1
                log.warning("index template %s: %s", self.name, exc)

    async def _installed_hash(self) -> str | None:
        response = await self._engine.request("GET", f"/_index_template/{self.name}")
        if response.status == 404:
            return None
        if response.status != 200:
            raise EngineError(f"reading index template {self.name}: {response.error_reason()}")
        for entry in response.json().get("index_templates", []):
            if entry.get("name") == self.name:
                meta = entry.get("index_template", {}).get("_meta") or {}
                return meta.get("hash") if meta.get("managed_by") == MANAGED_BY else None
        return None

    async def _put(self) -> None:
        response = await self._engine.request_json("PUT", f"/_index_template/{self.name}", self.body)
        if response.status == 200:
            return
        if response.status == 400:
            raise TemplateRejected(f"the engine refused index template {self.name}: {response.error_reason()}")
        if response.status in (401, 403):
            raise EngineRefused(f"installing index template {self.name}: {response.error_reason()}")
        raise EngineError(f"installing index template {self.name}: {response.error_reason()}")

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "patterns": self._patterns,
            "fieldsFile": str(self._fields_file) if self._fields_file else None,
            "dataStream": self._data_stream,
            "state": self.state,
            "hash": self.desired_hash if self.body else None,
            "installedHash": self.installed_hash,
            "installedAt": self.installed_at,
            "checkedAt": self.checked_at,
            "warnings": list(self.warnings),
            "error": self.error,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
