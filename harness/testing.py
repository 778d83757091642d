"""Helpers for testing against a real, served gate (used by this project's tests and benchmarks)::

    with ServerProcess.harness_serve("--bots", "scenarios/bots") as server:
        httpx.post(f"{server.url}/api/bots/payment/conversations")
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["free_port", "ServerProcess"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server in a subprocess on a free port, up (answering ``health_path``) when constructed.

    ``argv`` may contain ``{port}``, replaced by the chosen port. Its stderr goes to ``log`` (or
    nowhere): a pipe nobody reads would fill up and stall the server.
    """

    def __init__(self, argv: Sequence[str], *, log: Path | None = None, health_path: str = "/healthz",
                 start_timeout_s: float = 15.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("a") if log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen([part.replace("{port}", str(self.port)) for part in argv], stderr=self._log)
        give_up_at = time.monotonic() + start_timeout_s
        while time.monotonic() < give_up_at and self.process.poll() is None:
            try:
                httpx.get(f"{self.url}{health_path}", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        detail = log.read_text() if log is not None else f"exit code {self.process.returncode}"
        raise RuntimeError(f"server {' '.join(argv)} did not start: {detail}")

    @classmethod
    def harness_serve(cls, *args: str, log: Path | None = None) -> ServerProcess:
        """``harness serve --port {port} ARGS…`` with this interpreter."""
        return cls([sys.executable, "-m", "harness.cli", "serve", "--port", "{port}", *args], log=log)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush — a crash."""
        self.process.kill()
        self.process.wait(timeout=10)
        self._close_log()

    def stop(self) -> None:
        """SIGTERM, then wait for the exit."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if not isinstance(self._log, int):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
