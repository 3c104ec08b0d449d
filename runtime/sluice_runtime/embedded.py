"""``sluice run``: a receiver and a publisher in one process, for a laptop or a single small host.

The two roles are composed here, from the outside: each is built exactly as its own command
builds it, and neither imports the other. The receiver hands its batches straight to the
publisher, without the loopback ``POST /in`` a second process would need: with ``--es-url`` this
is the one-hop mode, receiver to Elasticsearch. The publisher reports in the receiver's
``/status`` (under ``publisher``) and ``/metrics``; only the receiver listens.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from sluice_runtime.common.command import add_subcommand, config_file_data
from sluice_runtime.common.httpkit import run_async, start_site, wait_for_shutdown_signal
from sluice_runtime.common.logs import setup_logging
from sluice_runtime.common.tls import ServerTlsSettings
from sluice_runtime.common.tokens import AuthSettings
from sluice_runtime.publisher import app as publisher_app
from sluice_runtime.publisher import command as publisher_command
from sluice_runtime.publisher.delivery import DeliveryFailed
from sluice_runtime.publisher.documents import BatchError
from sluice_runtime.publisher.settings import ENGINE_OPTIONS, PublisherSettings
from sluice_runtime.receiver import app as receiver_app
from sluice_runtime.receiver import command as receiver_command
from sluice_runtime.receiver.outlet import BatchNotTaken
from sluice_runtime.receiver.settings import ReceiverSettings

log = logging.getLogger("sluice.run")

# The receiver's flags, minus the one this command decides itself.
RUN_RECEIVER_OPTIONS = [option for option in receiver_command.RECEIVER_OPTIONS if option.dest != "forward_url"]


def register(subparsers: Any) -> None:
    summary = "receiver and publisher in one process (NDJSON files unless --es-url is given)"
    add_subcommand(subparsers, "run", summary, __doc__, [*RUN_RECEIVER_OPTIONS, *ENGINE_OPTIONS], run)


def run(args: argparse.Namespace) -> int:
    file_data = config_file_data(args)
    receiver_settings = receiver_command.load_settings(args, RUN_RECEIVER_OPTIONS, file_data)
    publisher_settings = publisher_command.load_settings(args, ENGINE_OPTIONS, file_data)
    setup_logging(receiver_settings.log_level)
    return run_async(lambda: serve(receiver_settings, publisher_settings))


class PublisherOutlet:
    """The receiver's outlet into a publisher in the same process: what ``POST /in`` would answer,
    as a call. A batch the publisher cannot settle now is sent again, as over the wire."""

    description = "in-process publisher"

    def __init__(self, publisher: publisher_app.Publisher) -> None:
        self._publisher = publisher

    async def send(self, body: bytes) -> None:
        try:
            await self._publisher.publish(body)
        except DeliveryFailed as exc:
            raise BatchNotTaken(str(exc), exc.retry_after) from None
        except BatchError as exc:
            raise BatchNotTaken(f"malformed batch: {exc}") from None

    async def close(self) -> None:
        """Nothing to release: the publisher's output outlives the receiver and is closed after it."""

    def status(self) -> Mapping[str, Any]:
        is_ready, reason = self._publisher.sink.ready()
        return {"ready": is_ready, "reason": reason, **self._publisher.status()}


async def serve(receiver_settings: ReceiverSettings, publisher_settings: PublisherSettings) -> int:
    registry = CollectorRegistry()
    # The publisher has no listener here, so its inbound token and TLS settings do not apply.
    publisher_settings = publisher_settings.model_copy(update={"auth": AuthSettings(), "tls": ServerTlsSettings()})
    publisher = publisher_app.build_publisher(publisher_settings, registry)
    await publisher.sink.start()
    try:
        app = receiver_app.build_app(receiver_settings, registry, outlet=PublisherOutlet(publisher))
        receiver_runner = await start_site(app, receiver_settings.listen)
        try:
            _announce(receiver_settings, publisher_settings)
            await wait_for_shutdown_signal()
            log.info("shutting down")
        finally:
            # The receiver goes first, so that its last batches still find the publisher's output open.
            await receiver_runner.cleanup()
    finally:
        await publisher.sink.close()
    return 0


def _announce(receiver: ReceiverSettings, publisher: PublisherSettings) -> None:
    host, _, port = receiver.listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host
    output = publisher.elasticsearch.url or f"NDJSON files in {publisher.output.dir}/"
    log.info("receiver on %s, publisher in-process, output %s", receiver.listen, output)
    print(
        f"Sluice is running. Try:\n"
        f"  curl -XPOST http://{host}:{port}/rx/my-device/readings/demo -d '{{\"temperature\": 21.5}}'\n"
        f"Documents go to {output}. Stop with Ctrl-C.",
        flush=True,
    )
