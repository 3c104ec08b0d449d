"""What every ``sluice`` subcommand does the same way: the ``--config`` flag, and serving until a signal."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from sluice_runtime.common.config import CONFIG_FILE_ENV, Option, add_options, read_config_file
from sluice_runtime.common.httpkit import start_site, wait_for_shutdown_signal

log = logging.getLogger("sluice")

Handler = Callable[[argparse.Namespace], int]


def add_subcommand(
    subparsers: Any, name: str, summary: str, description: str | None, options: Sequence[Option], handler: Handler
) -> None:
    """A ``sluice`` subcommand: ``--config``, then ``options`` (each with its SLUICE_* variable), run by ``handler``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=summary, description=description)
    parser.add_argument("--config", metavar="FILE", help=f"YAML config file (env {CONFIG_FILE_ENV})")
    add_options(parser, options)
    parser.set_defaults(handler=handler)


def config_file_data(args: argparse.Namespace) -> dict[str, Any]:
    return read_config_file(getattr(args, "config", None) or os.environ.get(CONFIG_FILE_ENV))


async def serve_until_signalled(
    app: web.Application, listen: str, role: str, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Serve ``app`` until SIGTERM or SIGINT, then shut it down gracefully (its cleanup hooks run)."""
    runner = await start_site(app, listen, ssl_context)
    log.info("%s listening on %s", role, listen)
    try:
        await wait_for_shutdown_signal()
        log.info("%s shutting down", role)
    finally:
        await runner.cleanup()
    return 0
