"""``sluice run``: a receiver and a publisher in one process, for a laptop or a single small host.

The two roles are composed here, from the outside: each is built exactly as its own command
builds it, and they talk over loopback ``POST /in`` as they would across a cluster. The publisher
listens on an ephemeral loopback port; only the receiver's address is public.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from aiohttp import web

from sluice_runtime.common.command import add_subcommand, config_file_data
from sluice_runtime.common.httpkit import run_async, start_site, wait_for_shutdown_signal
from sluice_runtime.common.logs import setup_logging
from sluice_runtime.common.tls import ServerTlsSettings
from sluice_runtime.common.tokens import AuthSettings
from sluice_runtime.publisher import app as publisher_app
from sluice_runtime.publisher import command as publisher_command
from sluice_runtime.publisher.settings import ENGINE_OPTIONS, PublisherSettings
from sluice_runtime.receiver import app as receiver_app
from sluice_runtime.receiver import command as receiver_command
from sluice_runtime.receiver.settings import ReceiverSettings

log = logging.getLogger("sluice.run")

# The receiver's flags, minus the one this command decides itself.
RUN_RECEIVER_OPTIONS = [option for option in receiver_command.RECEIVER_OPTIONS if option.dest != "forward_url"]
PUBLISHER_LOOPBACK = "127.0.0.1:0"


def register(subparsers: Any) -> None:
    summary = "receiver and publisher in one process (NDJSON files unless --es-url is given)"
    add_subcommand(subparsers, "run", summary, __doc__, [*RUN_RECEIVER_OPTIONS, *ENGINE_OPTIONS], run)


def run(args: argparse.Namespace) -> int:
    file_data = config_file_data(args)
    receiver_settings = receiver_command.load_settings(args, RUN_RECEIVER_OPTIONS, file_data)
    publisher_settings = publisher_command.load_settings(args, ENGINE_OPTIONS, file_data)
    setup_logging(receiver_settings.log_level)
    return run_async(lambda: serve(receiver_settings, publisher_settings))


async def serve(receiver_settings: ReceiverSettings, publisher_settings: PublisherSettings) -> int:
    # The publisher is reachable on loopback only, from this process: no token, no TLS.
    publisher_settings = publisher_settings.model_copy(update={"auth": AuthSettings(), "tls": ServerTlsSettings()})
    publisher_runner = await start_site(publisher_app.build_app(publisher_settings), PUBLISHER_LOOPBACK)
    try:
        forward_url = f"http://{_bound_address(publisher_runner)}/in"
        receiver_settings = receiver_settings.model_copy(update={"forward_url": forward_url})
        receiver_runner = await start_site(receiver_app.build_app(receiver_settings), receiver_settings.listen)
        try:
            _announce(receiver_settings, publisher_settings, forward_url)
            await wait_for_shutdown_signal()
            log.info("shutting down")
        finally:
            # The receiver goes first, so that its last forwards still find the publisher.
            await receiver_runner.cleanup()
    finally:
        await publisher_runner.cleanup()
    return 0


def _bound_address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"{host}:{port}"


def _announce(receiver: ReceiverSettings, publisher: PublisherSettings, forward_url: str) -> None:
    host, _, port = receiver.listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host
    output = publisher.elasticsearch.url or f"NDJSON files in {publisher.output.dir}/"
    log.info("receiver on %s, publisher at %s, output %s", receiver.listen, forward_url, output)
    print(
        f"Sluice is running. Try:\n"
        f"  curl -XPOST http://{host}:{port}/rx/my-device/readings/demo -d '{{\"temperature\": 21.5}}'\n"
        f"Documents go to {output}. Stop with Ctrl-C.",
        flush=True,
    )
