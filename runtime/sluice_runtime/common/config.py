"""Layered configuration: command-line flags, then ``SLUICE_*`` environment, then a YAML file, then defaults.

Each role declares a pydantic model for its section of the YAML file and a table of
:class:`Option` rows that tie a flag and an environment variable to a key in that section.
Validation errors name the offending key the way a user wrote it (``receiver.queue.maxMessages``).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

ENV_PREFIX = "SLUICE_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG"


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the field."""


class Section(BaseModel):
    """Base for config models: camelCase keys in YAML, unknown keys rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``10s``, ``500ms``, ``2m``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '10s'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; use seconds or a string like '500ms', '10s', '2m'")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _comma_list(value: Any) -> Any:
    # Flags and environment variables carry lists as "a,b,c".
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], BeforeValidator(_comma_list)]


@dataclass(frozen=True)
class Option:
    """One setting reachable from a flag, an environment variable and a YAML key."""

    flag: str
    key: str
    help: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        parser.add_argument(
            option.flag,
            dest=option.dest,
            default=None,
            metavar=option.metavar,
            help=f"{option.help} (env {option.env}; YAML {option.key})",
        )


def load_yaml_file(path: str | os.PathLike[str], what: str, error: Callable[[str], Exception] = ConfigError) -> Any:
    """The data of a YAML file; ``error`` says which file (``what``) and why it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror} (cannot be read)") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path}: not UTF-8 text: {exc.reason}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: not valid YAML: {exc}") from exc


def read_config_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if not path:
        return {}
    data = load_yaml_file(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return data


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _error_location(section: str, loc: Sequence[int | str]) -> str:
    return ".".join([section, *(str(part) for part in loc)])


M = TypeVar("M", bound=BaseModel)


def load_section(
    model: type[M],
    section: str,
    options: Sequence[Option],
    file_data: Mapping[str, Any],
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> M:
    """Merge one section from file, environment and flags (in rising precedence) and validate it."""
    environ = os.environ if environ is None else environ
    raw = file_data.get(section, {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: must be a mapping")
    merged: dict[str, Any] = _deep_copy(raw)
    for option in options:
        if option.env in environ and environ[option.env] != "":
            _set_path(merged, option.key, environ[option.env])
    for option in options:
        value = flags.get(option.dest)
        if value is not None:
            _set_path(merged, option.key, value)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = [f"{_error_location(section, err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _deep_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _deep_copy(value) if isinstance(value, Mapping) else value for key, value in tree.items()}
