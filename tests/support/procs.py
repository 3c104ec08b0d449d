"""Local server processes for tests: start, poll for readiness, keep logs, stop by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class NotReady(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``check`` until it is true; raise :class:`NotReady` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except NotReady:
            raise
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise NotReady(f"{what} not ready after {timeout:.0f}s{detail}")


class ManagedProcess:
    """One server process whose output goes to a log file that outlives it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_user: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.user = preexec_user
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        user = self.user
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            user=user[0] if user else None,
            group=user[1] if user else None,
            extra_groups=[] if user else None,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        def probe() -> bool:
            if not self.alive():
                raise NotReady(f"{self.name} exited with {self.proc and self.proc.returncode}:\n{self.log_tail()}")
            return check()

        try:
            wait_until(probe, timeout, self.name)
        except NotReady as exc:
            raise NotReady(f"{exc}\n--- {self.name} log tail ---\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        self._signal(signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL if the process outlives ``timeout``."""
        if not self.alive():
            self._reap(1)
            return
        self._signal(signal.SIGTERM)
        if not self._reap(timeout):
            self.kill()

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def _reap(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            content = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(content[-lines:])
