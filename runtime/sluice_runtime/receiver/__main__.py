"""``python -m sluice_runtime.receiver [flags]``: the receiver alone, without the other roles' imports."""

from __future__ import annotations

import argparse
import sys

from sluice_runtime.common.config import ConfigError
from sluice_runtime.receiver import command


def main() -> int:
    parser = argparse.ArgumentParser(prog="sluice")
    command.register(parser.add_subparsers(dest="role", required=True))
    args = parser.parse_args(["receiver", *sys.argv[1:]])
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"sluice receiver: {exc}", file=sys.stderr)
        return 2


raise SystemExit(main())
