"""``sluice receiver``: accept rxtx-style POSTs onto a durable queue and forward them to a publisher."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from sluice_runtime.common.command import add_subcommand, config_file_data, serve_until_signalled
from sluice_runtime.common.config import Option, load_section
from sluice_runtime.common.httpkit import run_async
from sluice_runtime.common.logs import setup_logging
from sluice_runtime.receiver.app import build_app
from sluice_runtime.receiver.settings import RECEIVER_OPTIONS, ReceiverSettings

__all__ = ["RECEIVER_OPTIONS", "load_settings", "register", "run"]


def register(subparsers: Any) -> None:
    summary = "accept POST /rx onto a durable queue and forward it to a publisher"
    add_subcommand(subparsers, "receiver", summary, __doc__, RECEIVER_OPTIONS, run)


def load_settings(args: argparse.Namespace, options: Sequence[Option], file_data: dict[str, Any]) -> ReceiverSettings:
    """The ``receiver`` section of ``file_data`` with ``options`` (flags, then environment) applied."""
    return load_section(ReceiverSettings, "receiver", options, file_data, vars(args))


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args, RECEIVER_OPTIONS, config_file_data(args))
    setup_logging(settings.log_level)
    app = build_app(settings)
    return run_async(lambda: serve_until_signalled(app, settings.listen, "receiver"))
