"""TLS for the servers (``tls.certFile``/``keyFile``) and for the clients that call them (``caFile``)."""

from __future__ import annotations

import ssl
from pathlib import Path

from sluice_runtime.common.config import ConfigError, Section


class ServerTlsSettings(Section):
    """Serve HTTPS with this certificate chain and key; plain HTTP when both are unset."""

    cert_file: Path | None = None
    key_file: Path | None = None


def server_ssl_context(settings: ServerTlsSettings, where: str) -> ssl.SSLContext | None:
    if settings.cert_file is None and settings.key_file is None:
        return None
    if settings.cert_file is None or settings.key_file is None:
        raise ConfigError(f"{where}: certFile and keyFile go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load {settings.cert_file} / {settings.key_file}: {exc}") from None
    return context


def client_ssl_context(ca_file: Path | None, where: str) -> ssl.SSLContext:
    """Verification on, against the system CAs or ``ca_file``."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load {ca_file}: {exc}") from None
