"""Configuration: file, environment and flags in that rising order; a bad value stops start-up naming the field."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sluice_runtime.common.config import ConfigError, read_config_file
from sluice_runtime.receiver import command
from sluice_runtime.receiver.settings import RECEIVER_OPTIONS


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    return parser.parse_args(["receiver", *argv])


def test_defaults_match_the_design() -> None:
    settings = command.load_settings(parse(), RECEIVER_OPTIONS, {})
    assert settings.listen == "0.0.0.0:8080"
    assert str(settings.data_dir) == "/var/lib/sluice/queue"
    assert settings.queue.max_messages == 500_000
    assert settings.queue.when_full == "reject"
    assert settings.batch.max_messages == 4000
    assert settings.batch.max_wait == 10.0
    assert settings.forward_url is None


def test_precedence_flags_then_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(
        "receiver:\n"
        "  forwardUrl: http://publisher:8081\n"
        "  queue: {maxMessages: 10, whenFull: dropOldest}\n"
        "  batch: {maxMessages: 7, maxWait: 500ms, maxInFlight: 5}\n"
        "  auth: {tokenFile: /run/secrets/tokens}\n"
        "  cors: {allowOrigins: [https://a.example]}\n"
    )
    monkeypatch.setenv("SLUICE_MAX_QUEUE", "20")
    monkeypatch.setenv("SLUICE_BATCH_MAX_MESSAGES", "8")
    settings = command.load_settings(parse("--max-queue", "30"), RECEIVER_OPTIONS, read_config_file(config))
    assert settings.queue.max_messages == 30  # flag
    assert settings.batch.max_messages == 8  # environment
    assert settings.batch.max_wait == 0.5  # file
    assert settings.queue.when_full == "dropOldest"
    assert settings.forward_endpoint == "http://publisher:8081/in"
    assert settings.batch.max_in_flight == 5
    assert str(settings.auth.token_file) == "/run/secrets/tokens"
    assert settings.cors.allow_origins == ["https://a.example"]


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--max-queue", "lots"], "receiver.queue.maxMessages"),
        (["--max-queue", "0"], "receiver.queue.maxMessages"),
        (["--when-full", "sometimes"], "receiver.queue.whenFull"),
        (["--batch-max-wait", "soon"], "receiver.batch.maxWait"),
        (["--forward-url", "publisher:8081"], "receiver.forwardUrl"),
        (["--listen", "8080"], "receiver.listen"),
        (["--batch-max-in-flight", "0"], "receiver.batch.maxInFlight"),
    ],
)
def test_bad_values_name_the_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        command.load_settings(parse(*argv), RECEIVER_OPTIONS, {})


def test_unusable_config_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(b"receiver:\n  dataDir: /var/lib/sluice/caf\xe9\n")
    with pytest.raises(ConfigError, match=r"config file .*latin1\.yml: not UTF-8 text"):
        read_config_file(latin1)
    with pytest.raises(ConfigError, match=r"config file .*missing\.yml: No such file or directory"):
        read_config_file(tmp_path / "missing.yml")


def test_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"receiver\.queue\.maxMesages"):
        command.load_settings(parse(), RECEIVER_OPTIONS, {"receiver": {"queue": {"maxMesages": 3}}})


def sluice_receiver(*args: str) -> subprocess.CompletedProcess[str]:
    """``sluice receiver ARGS`` with a bare environment (no SLUICE_* variables leaking in)."""
    return subprocess.run(
        [sys.executable, "-m", "sluice_runtime", "receiver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_the_command_exits_2_and_says_why(tmp_path: Path) -> None:
    result = sluice_receiver("--data-dir", str(tmp_path), "--when-full", "maybe")
    assert result.returncode == 2
    assert "receiver.queue.whenFull" in result.stderr
    missing = sluice_receiver("--token-file", str(tmp_path / "absent"))
    assert missing.returncode == 2
    assert "receiver.auth.tokenFile" in missing.stderr
