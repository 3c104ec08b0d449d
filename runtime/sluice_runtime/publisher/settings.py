"""The ``publisher`` section of the YAML config, and the flags and environment variables that override it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from sluice_runtime.common.config import CommaList, Duration, Option, Section
from sluice_runtime.common.httpkit import ListenAddress
from sluice_runtime.common.logs import LogLevel
from sluice_runtime.common.tls import ServerTlsSettings
from sluice_runtime.common.tokens import AuthSettings
from sluice_runtime.publisher.delivery import DEFAULT_RETRY_AFTER
from sluice_runtime.publisher.indexname import IndexPattern

MIB = 1024 * 1024


def _index_pattern(value: str) -> str:
    IndexPattern(value)
    return value


class ElasticsearchSettings(Section):
    url: str | None = Field(None, description="Base URL of Elasticsearch or OpenSearch; without it, files are written")
    index: str = "wx-rtbeat-%{+yyyy.MM}"
    data_stream: bool = Field(
        False, description="Write to a data stream named by index (no date math); an index template is then required"
    )
    dead_letter_index: str = "sluice-deadletter-%{+yyyy.MM}"
    username: str | None = None
    # Inline secrets come only from SLUICE_ES_PASSWORD / SLUICE_ES_API_KEY in practice; files are preferred.
    password: SecretStr | None = None
    password_file: Path | None = None
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    ca_file: Path | None = None
    tls_verify: bool = True
    max_bulk_bytes: int = Field(5 * MIB, gt=0)
    gzip: bool = False
    max_concurrent_requests: int = Field(4, ge=1)
    request_timeout: Duration = 60.0
    retry_timeout: Duration = 30.0
    retry_after: int = Field(
        DEFAULT_RETRY_AFTER, ge=1, description="Seconds a sender is told to wait (Retry-After) when the engine fails"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("index", "dead_letter_index")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _index_pattern(value)

    @model_validator(mode="after")
    def _stream_name(self) -> ElasticsearchSettings:
        if self.data_stream and IndexPattern(self.index).has_date:
            raise ValueError(f"a data stream has one name (it rolls over itself): drop the date math in {self.index!r}")
        return self

    @model_validator(mode="after")
    def _one_credential(self) -> ElasticsearchSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set one of password (SLUICE_ES_PASSWORD) and passwordFile, not both")
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set one of apiKey (SLUICE_ES_API_KEY) and apiKeyFile, not both")
        has_password = self.password is not None or self.password_file is not None
        has_api_key = self.api_key is not None or self.api_key_file is not None
        if has_password and has_api_key:
            raise ValueError("use either username and password or an API key, not both")
        if has_password != (self.username is not None):
            raise ValueError("username and password (or passwordFile) go together")
        return self


class IndexTemplateSettings(Section):
    name: str | None = None
    patterns: CommaList = Field(default_factory=list, description="Defaults to the index pattern with * for dates")
    fields_file: Path | None = None
    priority: int = Field(150, ge=0)
    check_interval: Duration = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _named(self) -> IndexTemplateSettings:
        if self.fields_file is not None and not self.name:
            raise ValueError("name is required when fieldsFile is set")
        return self


class OutputSettings(Section):
    dir: Path = Path(".sluice/out")
    max_bytes: int = Field(64 * MIB, gt=0)
    max_files: int = Field(10, ge=1)


class PublisherSettings(Section):
    listen: ListenAddress = "0.0.0.0:8081"
    max_request_bytes: int = Field(256 * MIB, gt=0)
    log_level: LogLevel = "info"
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()
    index_template: IndexTemplateSettings = IndexTemplateSettings()
    output: OutputSettings = OutputSettings()
    auth: AuthSettings = Field(AuthSettings(), description="Bearer tokens a receiver must send on POST /in")
    tls: ServerTlsSettings = ServerTlsSettings()

    def template_patterns(self) -> list[str]:
        return self.index_template.patterns or [IndexPattern(self.elasticsearch.index).wildcard()]

    def template_name(self) -> str | None:
        """The index template to install: a named one, or the data stream's own, or none."""
        if self.index_template.name:
            return self.index_template.name
        return self.elasticsearch.index if self.elasticsearch.data_stream else None


# Flags shared by `sluice publisher` and `sluice run` (which has its own --listen).
ENGINE_OPTIONS = [
    Option("--es-url", "elasticsearch.url", "Elasticsearch/OpenSearch base URL; omit to write NDJSON files"),
    Option("--index", "elasticsearch.index", "index name pattern with date math", "PATTERN"),
    Option("--data-stream", "elasticsearch.dataStream", "write to a data stream named by --index", "BOOL"),
    Option("--dead-letter-index", "elasticsearch.deadLetterIndex", "index pattern for rejected documents", "PATTERN"),
    Option("--es-username", "elasticsearch.username", "basic auth user", "U"),
    Option("--es-password-file", "elasticsearch.passwordFile", "file holding the basic auth password", "F"),
    Option("--es-api-key-file", "elasticsearch.apiKeyFile", "file holding an API key (encoded, or id:key)", "F"),
    Option("--es-ca-file", "elasticsearch.caFile", "PEM bundle of CAs to trust for https", "F"),
    Option("--es-tls-verify", "elasticsearch.tlsVerify", "verify the engine's certificate (default true)", "BOOL"),
    Option("--es-gzip", "elasticsearch.gzip", "gzip bulk request bodies (default false)", "BOOL"),
    Option("--fields", "indexTemplate.fieldsFile", "Beats-style fields file for the index template", "FILE"),
    Option("--template-name", "indexTemplate.name", "index template name", "NAME"),
    Option("--template-patterns", "indexTemplate.patterns", "comma-separated index patterns", "P,..."),
    Option("--out-dir", "output.dir", "directory for NDJSON output when there is no --es-url", "DIR"),
]
PUBLISHER_OPTIONS = [
    Option("--listen", "listen", "address to serve POST /in on", "HOST:PORT"),
    Option("--token-file", "auth.tokenFile", "file of bearer tokens accepted on POST /in, one per line", "FILE"),
    Option("--tls-cert-file", "tls.certFile", "serve HTTPS with this PEM certificate chain", "FILE"),
    Option("--tls-key-file", "tls.keyFile", "the PEM private key of --tls-cert-file", "FILE"),
    Option("--log-level", "logLevel", "debug, info, warning or error", "LEVEL"),
    *ENGINE_OPTIONS,
]
# Read from the environment only: secrets do not belong on a command line.
SECRET_ENV_OPTIONS = [
    Option("--es-password", "elasticsearch.password", "basic auth password"),
    Option("--es-api-key", "elasticsearch.apiKey", "API key"),
]
