"""What every output (the search engine or files) promises the ``POST /in`` handler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sluice_runtime.publisher.documents import Document

DEFAULT_RETRY_AFTER = 5


@dataclass
class Delivery:
    """How a batch's documents ended up; together they account for every document."""

    indexed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


class DeliveryFailed(Exception):
    """Not every document could be stored or dead-lettered; the sender should try the batch again later."""

    def __init__(self, reason: str, retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Sink(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def deliver(self, documents: Sequence[Document]) -> Delivery:
        """Return once every document is durably stored or dead-lettered; else raise :class:`DeliveryFailed`."""
        ...

    def ready(self) -> tuple[bool, str]: ...

    def status(self) -> Mapping[str, Any]: ...
