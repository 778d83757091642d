"""Drivers: how the runner reaches a gate. The seam is a client with ``request()`` plus a clock.

* :func:`in_process` (``driver="asgi"``) builds a fresh gate and its Quart app and talks to it
  through ``httpx.ASGITransport``: no sockets, no threads, so it is exact under
  ``trio.testing.MockClock(autojump_threshold=0)`` — a 300 s wait costs milliseconds.
* :func:`in_core` (``driver="core"``) drives a fresh gate without HTTP framing, through the same
  transport-free webhook handling the server uses (:class:`~harness.core.webhooks.WebhookHandler`:
  parsing, signature, refusal order, status codes), so it gives the same rows, faster.
* :func:`live` talks to a running ``harness serve`` over real HTTP, in real time.

The runner sees only :class:`Driver`; it never knows which one it has.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import trio

from ..core.errors import STATUS_BY_CODE, Refused
from ..core.gate import Gate
from ..core.webhooks import WebhookHandler, media_type_of
from ..server import create_app

__all__ = ["DRIVERS", "Driver", "in_process", "in_core", "live", "open_driver", "IN_PROCESS_URL"]

IN_PROCESS_URL = "http://harness.local"
DRIVERS = ("asgi", "core")


class Answer(Protocol):
    """What the runner reads of an answer: httpx.Response has it, and so does :class:`CoreAnswer`."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


@dataclass(slots=True)
class CoreAnswer:
    """An answer of the core driver: a status and a JSON-ready body, never serialised."""

    status_code: int
    body: Any

    def json(self) -> Any:
        return self.body

    @property
    def text(self) -> str:
        return json.dumps(self.body)


class CoreClient:
    """Routes the runner's few requests straight to the gate, without HTTP.

    Webhook calls go through :class:`~harness.core.webhooks.WebhookHandler`, exactly as the
    server's webhook route does; refusals carry the same codes and statuses.
    """

    base_url = "core:"

    def __init__(self, gate: Gate, *, max_body: int) -> None:
        self.gate = gate
        self.webhooks = WebhookHandler(gate, max_body=max_body)

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None, json: Any = None) -> CoreAnswer:
        await trio.lowlevel.checkpoint()  # a request is a scheduling point, as over HTTP
        try:
            status, body = self._route(method, url.split("/")[1:], content, headers or {}, json)
        except Refused as refusal:
            return CoreAnswer(STATUS_BY_CODE[refusal.code], refusal.as_dict())
        return CoreAnswer(status, body)

    def _route(self, method: str, parts: list[str], content: bytes | None, headers: dict[str, str],
               document: Any) -> tuple[int, Any]:
        gate = self.gate
        if method == "POST" and len(parts) == 3 and parts[0] == "webhooks":
            media_type = media_type_of(next((v for k, v in headers.items() if k.lower() == "content-type"), None))
            return 200, self.webhooks.handle(parts[1], parts[2], media_type=media_type, headers=headers,
                                             body=content or b"")
        if parts[:2] == ["api", "conversations"] and len(parts) == 3 and method == "GET":
            return 200, gate.get_conversation(parts[2]).as_dict(gate.clock)
        if parts[:2] == ["api", "bots"]:
            if len(parts) == 2 and method == "POST":
                return 201, gate.bot_document(gate.create_bot(document))
            if len(parts) == 3 and method == "GET":
                return 200, gate.bot_document(gate.get_bot(parts[2]))
            if len(parts) == 4 and parts[3] == "conversations" and method == "POST":
                return 201, gate.start_conversation(parts[2], (document or {}).get("variables")).as_dict(gate.clock)
        raise ValueError(f"the core driver has no route for {method} /{'/'.join(parts)}")


@dataclass
class Driver:
    client: httpx.AsyncClient | CoreClient
    virtual: bool  # True: trio's clock may be a MockClock; there is no real network
    gate: Gate | None = None  # only in-process: lets the signer read the gate's wall clock
    in_flight: trio.Semaphore | None = None  # bounds concurrent requests to a live server
    poll_interval_s: float = 0.001

    def unix_time(self) -> float:
        """Seconds since the epoch on the clock the gate checks signatures against."""
        if self.gate is not None:
            return self.gate.clock.unix(trio.current_time())
        return time.time()

    async def request(self, method: str, url: str, **kwargs: object) -> Answer:
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


@asynccontextmanager
async def in_core(*, max_body: int = 1024 * 1024) -> AsyncIterator[Driver]:
    """A fresh in-memory gate driven without HTTP; use under a MockClock for virtual time."""
    gate = Gate(public_url=IN_PROCESS_URL)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        yield Driver(client=CoreClient(gate, max_body=max_body), virtual=True, gate=gate)
        nursery.cancel_scope.cancel()


def open_driver(name: str) -> Any:
    """The in-process driver called ``name`` (:data:`DRIVERS`), as an async context manager."""
    if name == "asgi":
        return in_process()
    if name == "core":
        return in_core()
    raise ValueError(f"unknown driver {name!r}; use one of {', '.join(DRIVERS)}")
