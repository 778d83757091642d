"""``harness serve --workers N``: N gate processes on one host and port (SPEC §13.4).

A small supervisor reserves the address, then starts N ordinary ``harness serve`` processes that
each listen on it with ``SO_REUSEPORT``: the kernel spreads new connections over them, and each
is a whole gate (its own event loop, timers and caches) on the shared store, which arbitrates
between them as it does between gates on several machines.

The supervisor forwards SIGINT/SIGTERM to every worker as one SIGTERM (each then stops
gracefully: no new connections, requests in flight finish) and waits for all of them. A worker
that dies on its own is started again; one that exits 2 (a configuration error) stops them all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["reserve_address", "reuse_port_socket", "supervise", "worker_command"]

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 60.0  # after SIGTERM a worker finishes its requests in flight; then it is killed


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (not listening yet)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def reserve_address(host: str, port: int) -> socket.socket:
    """Bind (never listen on) the address for the workers; its port is the one chosen for ``port=0``.

    Raises :class:`OSError` when something else listens there. Keep it open while workers run: it
    holds the port, and the kernel gives connections only to listening sockets.
    """
    return reuse_port_socket(host, port)


def supervise(worker_argv: Callable[[], Sequence[str]], workers: int, *, env: dict[str, str] | None = None,
              say: Callable[[str], None] = print) -> int:
    """Run ``workers`` copies of ``worker_argv()`` until SIGINT/SIGTERM; the exit status."""
    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}

    def start() -> subprocess.Popen[bytes]:
        # A session of its own: a terminal's Ctrl+C reaches the supervisor only, which forwards one
        # SIGTERM (a second signal would cut a worker's graceful stop short).
        return subprocess.Popen(list(worker_argv()), env=env, start_new_session=True)

    running = [start() for _ in range(workers)]
    status = 0
    try:
        while not stop:
            time.sleep(0.1)
            for number, process in enumerate(running):
                code = process.poll()
                if code is None:
                    continue
                if code == 2:
                    say(f"worker {process.pid} exited with status 2 (a configuration error); stopping")
                    stop.append(signal.SIGTERM)
                    status = 2
                    break
                say(f"worker {process.pid} exited with status {code}; starting another")
                time.sleep(RESTART_DELAY_S)
                running[number] = start()
        if status == 0:
            say(f"{signal.Signals(stop[0]).name}: stopping {workers} workers gracefully")
    finally:
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        give_up_at = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, give_up_at - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def worker_command(arguments: Sequence[str]) -> list[str]:
    """``harness serve ARGUMENTS`` with this interpreter (``python -m harness.cli``)."""
    return [sys.executable, "-m", "harness.cli", "serve", *arguments]


if os.name != "posix":  # pragma: no cover
    raise ImportError("harness serve --workers needs SO_REUSEPORT (Linux, macOS, BSD)")
