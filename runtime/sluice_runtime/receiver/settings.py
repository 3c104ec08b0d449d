"""The ``receiver`` section of the YAML config, and the flags and environment variables that override it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator

from sluice_runtime.common.config import CommaList, Duration, Option, Section
from sluice_runtime.common.httpkit import ListenAddress
from sluice_runtime.common.logs import LogLevel
from sluice_runtime.common.tokens import AuthSettings

MIB = 1024 * 1024


def forward_endpoint(url: str) -> str:
    """The batch endpoint for a publisher URL: a base URL gets ``/in``; a URL already ending in ``/in`` is kept."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/in"):
        path += "/in"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class QueueSettings(Section):
    max_messages: int = Field(500_000, ge=1, description="Messages the queue holds before it is full")
    when_full: Literal["reject", "dropOldest"] = "reject"
    retry_after: int = Field(5, ge=1, description="Seconds a client is told to wait when the queue is full")


class BatchSettings(Section):
    max_messages: int = Field(4000, ge=1)
    max_wait: Duration = Field(10.0, description="How long a partial batch may wait for more messages")
    max_bytes: int = Field(8 * MIB, ge=1024)
    # Measured (make bench, 2 cores, warm Elasticsearch): draining 200k messages ran about 20% faster
    # with 4 batches in flight than with 2; a crash resends at most these, and resends are harmless.
    max_in_flight: int = Field(
        4,
        ge=1,
        le=64,
        description="Batches sent at once; above 1 a later batch may be indexed first (deletes stay in order)",
    )
    request_timeout: Duration = Field(120.0, gt=0)
    retry_initial: Duration = Field(0.5, gt=0)
    retry_max: Duration = Field(30.0, gt=0)


class CorsSettings(Section):
    allow_origins: CommaList = Field(default_factory=list, description="Origins allowed by CORS; empty turns CORS off")


class ReceiverSettings(Section):
    listen: ListenAddress = "0.0.0.0:8080"
    data_dir: Path = Path("/var/lib/sluice/queue")
    forward_url: str | None = None
    forward_token_file: Path | None = Field(None, description="Bearer token (first line of the file) sent on forward")
    forward_ca_file: Path | None = Field(None, description="PEM CAs that verify an https:// forwardUrl")
    max_body_bytes: int = Field(16 * MIB, ge=1024)
    max_depth: int = Field(64, ge=1, le=512, description="Deepest nesting of objects/arrays accepted in a message")
    body_timeout: Duration = Field(30.0, gt=0, description="Longest wait for a request body; slower clients get 408")
    log_level: LogLevel = "info"
    queue: QueueSettings = QueueSettings()
    batch: BatchSettings = BatchSettings()
    auth: AuthSettings = AuthSettings()
    cors: CorsSettings = CorsSettings()

    @field_validator("forward_url")
    @classmethod
    def _forward_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")) or not urlsplit(value).netloc:
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        return value

    @property
    def forward_endpoint(self) -> str | None:
        return forward_endpoint(self.forward_url) if self.forward_url else None


RECEIVER_OPTIONS = [
    Option("--listen", "listen", "address to serve POST /rx on", "HOST:PORT"),
    Option("--data-dir", "dataDir", "directory of the LevelDB queue", "DIR"),
    Option("--forward-url", "forwardUrl", "publisher base URL (or its full /in URL)", "URL"),
    Option("--forward-token-file", "forwardTokenFile", "file whose first line is the publisher's token", "FILE"),
    Option("--forward-ca-file", "forwardCaFile", "PEM CAs to trust for an https:// --forward-url", "FILE"),
    Option("--max-queue", "queue.maxMessages", "messages the queue holds before it is full", "N"),
    Option("--when-full", "queue.whenFull", "reject (503) or dropOldest", "POLICY"),
    Option("--batch-max-messages", "batch.maxMessages", "most messages in one forwarded batch", "N"),
    Option("--batch-max-wait", "batch.maxWait", "longest wait for a partial batch", "SECONDS"),
    Option("--batch-max-bytes", "batch.maxBytes", "most bytes in one forwarded batch", "N"),
    Option("--batch-max-in-flight", "batch.maxInFlight", "batches sent concurrently", "N"),
    Option("--token-file", "auth.tokenFile", "file of bearer tokens, one per line; enables auth", "FILE"),
    Option("--max-body-bytes", "maxBodyBytes", "largest request body accepted", "N"),
    Option("--max-depth", "maxDepth", "deepest JSON nesting accepted", "N"),
    Option("--body-timeout", "bodyTimeout", "longest wait for a request body before 408", "SECONDS"),
    Option("--cors-allow-origins", "cors.allowOrigins", "comma-separated origins allowed by CORS", "O,..."),
    Option("--log-level", "logLevel", "debug, info, warning or error", "LEVEL"),
]
