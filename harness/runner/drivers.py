"""Drivers: how the runner reaches a gate. The seam is an ``httpx.AsyncClient`` plus a clock.

* :func:`in_process` builds a fresh gate and its Quart app and talks to it through
  ``httpx.ASGITransport``: no sockets, no threads, so it is exact under
  ``trio.testing.MockClock(autojump_threshold=0)`` — a 300 s wait costs milliseconds.
* :func:`live` talks to a running ``harness serve`` over real HTTP, in real time.

The runner sees only :class:`Driver`; it never knows which one it has.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from ..core.gate import Gate
from ..server import create_app

__all__ = ["Driver", "in_process", "live", "IN_PROCESS_URL"]

IN_PROCESS_URL = "http://harness.local"


@dataclass
class Driver:
    client: httpx.AsyncClient
    virtual: bool  # True: trio's clock may be a MockClock; there is no real network
    gate: Gate | None = None  # only in-process: lets the signer read the gate's wall clock
    in_flight: trio.Semaphore | None = None  # bounds concurrent requests to a live server
    poll_interval_s: float = 0.001

    def unix_time(self) -> float:
        """Seconds since the epoch on the clock the gate checks signatures against."""
        if self.gate is not None:
            return self.gate.clock.unix(trio.current_time())
        return time.time()

    async def request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        if self.in_flight is None:
            return await self.client.request(method, url, **kwargs)  # type: ignore[arg-type]
        async with self.in_flight:
            return await self.client.request(method, url, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def in_process(*, max_body: int = 1024 * 1024) -> AsyncIterator[Driver]:
    """A fresh in-memory gate served in this trio run; use under a MockClock for virtual time."""
    gate = Gate(public_url=IN_PROCESS_URL)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        # QuartTrio's precise ASGI types are narrower than httpx's generic ones; it is an ASGI app.
        transport = httpx.ASGITransport(app=create_app(gate, max_body=max_body))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=IN_PROCESS_URL) as client:
            yield Driver(client=client, virtual=True, gate=gate)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def live(url: str, *, concurrency: int = 64, api_token: str | None = None) -> AsyncIterator[Driver]:
    """A running gate at ``url``. ``concurrency`` bounds requests in flight (and connections);
    ``api_token`` is sent as ``Authorization: Bearer`` (the gate's ``--api-token``)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0, pool=None)  # waiting for a pooled connection is not an error
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else None
    async with httpx.AsyncClient(base_url=url.rstrip("/"), limits=limits, timeout=timeout,
                                 headers=headers) as client:
        yield Driver(client=client, virtual=False, in_flight=trio.Semaphore(concurrency), poll_interval_s=0.05)
