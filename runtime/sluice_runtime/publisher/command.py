"""``sluice publisher``: serve ``POST /in`` and index each batch into Elasticsearch or OpenSearch."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from sluice_runtime.common.command import add_subcommand, config_file_data, serve_until_signalled
from sluice_runtime.common.config import Option, load_section
from sluice_runtime.common.httpkit import run_async
from sluice_runtime.common.logs import setup_logging
from sluice_runtime.common.tls import server_ssl_context
from sluice_runtime.publisher.app import build_app
from sluice_runtime.publisher.settings import PUBLISHER_OPTIONS, SECRET_ENV_OPTIONS, PublisherSettings

__all__ = ["PUBLISHER_OPTIONS", "load_settings", "register", "run"]


def register(subparsers: Any) -> None:
    summary = "serve POST /in and index batches into Elasticsearch/OpenSearch"
    add_subcommand(subparsers, "publisher", summary, __doc__, PUBLISHER_OPTIONS, run)


def load_settings(args: argparse.Namespace, options: Sequence[Option], file_data: dict[str, Any]) -> PublisherSettings:
    """The ``publisher`` section with ``options`` (and the secret environment variables) applied."""
    return load_section(PublisherSettings, "publisher", [*options, *SECRET_ENV_OPTIONS], file_data, vars(args))


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args, PUBLISHER_OPTIONS, config_file_data(args))
    setup_logging(settings.log_level)
    app = build_app(settings)
    tls = server_ssl_context(settings.tls, "publisher.tls")
    return run_async(lambda: serve_until_signalled(app, settings.listen, "publisher", tls))
