"""The ``sluice`` command: ``receiver``, ``publisher`` and ``run`` (both roles in one process)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sluice_runtime import embedded
from sluice_runtime.common.config import ConfigError
from sluice_runtime.publisher import command as publisher_command
from sluice_runtime.receiver import command as receiver_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True, metavar="{receiver,publisher,run}")
    receiver_command.register(roles)
    publisher_command.register(roles)
    embedded.register(roles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"sluice {args.role}: {exc}", file=sys.stderr)
        return 2
