"""Bearer tokens from a file (a mounted Secret): one per line, blank and ``#`` lines ignored.

The file is re-read when its modification time changes (checked at most once a second), so a
rotated Secret takes effect without a restart. If a re-read fails, the tokens last read stay.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

from sluice_runtime.common.config import ConfigError, Section

log = logging.getLogger("sluice.tokens")

CHECK_INTERVAL = 1.0


def parse_tokens(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


class TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._tokens: frozenset[str] = frozenset()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.load()  # at start-up an unreadable file is a configuration error

    def load(self) -> None:
        stat = os.stat(self.path)
        self._tokens = parse_tokens(self.path.read_text())
        self._stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if not self._tokens:
            log.warning("token file holds no tokens: every request will be refused", extra={"path": str(self.path)})

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
            if (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self._stamp:
                self.load()
                log.info("token file reloaded", extra={"path": str(self.path), "tokens": len(self._tokens)})
        except OSError as exc:
            log.warning("token file not re-read; keeping the tokens last read", extra={"error": str(exc)})

    def allows(self, authorization: str | None) -> bool:
        self._refresh()
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = token.strip().encode()
        # Compare against every token, in constant time each, so timing does not reveal a prefix.
        matched = False
        for candidate in self._tokens:
            matched |= hmac.compare_digest(given, candidate.encode())
        return matched


class AuthSettings(Section):
    """Bearer-token authentication of callers; off unless a token file is given."""

    token_file: Path | None = None


def open_token_file(settings: AuthSettings, where: str) -> TokenFile | None:
    """The token file of ``settings``, read once now; ``where`` names the setting in errors (``receiver.auth``)."""
    if settings.token_file is None:
        return None
    try:
        return TokenFile(settings.token_file)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}.tokenFile: cannot read {settings.token_file}: {exc}") from None


def read_first_token(path: Path) -> str:
    """The token a client sends: the first one in the file, re-read each time so a rotated Secret applies."""
    tokens = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not tokens:
        raise ValueError(f"{path} holds no token")
    return tokens[0]
