"""Drivers: how the runner reaches a gate. The engine sees only :class:`Driver` and its four calls.

* ``asgi`` (:func:`in_process`) builds a fresh gate and its Quart app and calls the app's ASGI
  callable directly (:class:`AsgiClient`: no sockets, no threads, no httpx in between), so it is
  exact under ``trio.testing.MockClock(autojump_threshold=0)`` — a 300 s wait costs nothing.
* ``core`` (:func:`in_core`) drives a fresh gate without HTTP framing, through the same
  transport-free webhook handling the server uses (:class:`~harness.core.webhooks.WebhookHandler`:
  parsing, signature, refusal order, status codes), so it gives the same rows, faster.
* :func:`live` talks to a running ``harness serve`` over real HTTP, in real time, through a lean
  keep-alive HTTP/1.1 client (:class:`Http11Client`; httpx for ``https://`` targets).

What the runner does per conversation — start it, call its webhook, read its outcome, let it go —
is one method each (:meth:`Driver.start`, :meth:`Driver.call`, :meth:`Driver.read`,
:meth:`Driver.forget`). Starts and webhook calls always go through the driver's transport. The
outcome is read from the gate object itself when the gate is in this process (both virtual-time
drivers: the gate is the source of truth either way, and this read skips formatting ISO
timestamps nobody looks at); a live run reads ``GET /api/conversations/{key}``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import h11
import httpx
import trio

from ..core.conversations import Conversation
from ..core.errors import STATUS_BY_ANSWER, STATUS_BY_CODE, Refused
from ..core.gate import Gate
from ..core.store import StoreUnavailable
from ..core.webhooks import WebhookHandler, media_type_of
from ..store import MemoryStore
from ..web.server import create_app

__all__ = ["DRIVERS", "TRANSPORT_ERRORS", "Driver", "Observed", "Http11Client", "in_process", "in_core", "live", "open_driver", "IN_PROCESS_URL"]

IN_PROCESS_URL = "http://harness.local"
DRIVERS = ("asgi", "core")


class Answer(Protocol):
    """What the runner reads of an answer: httpx.Response has it, and so do the in-process answers."""

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


@dataclass(slots=True)
class AsgiAnswer:
    """An answer of the ASGI app: status and raw body."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass(slots=True)
class Observed:
    """What the runner reads back of a conversation: its status, waits and variables."""

    status: str
    # (block, outcome, reason, waited_s) per wait, in order
    waits: list[tuple[str, str | None, str | None, float | None]]
    variables: dict[str, Any]
    open_deadline_in: float | None = None  # seconds until the open wait's deadline (None: no wait open)

    @classmethod
    def of(cls, conversation: Conversation) -> Observed:
        waits: list[tuple[str, str | None, str | None, float | None]] = [
            (w.block, w.outcome, w.reason, w.waited_s) for w in conversation.waits]
        open_wait = conversation.open_wait  # an in-process gate's deadlines are on trio's clock
        due_in = None if open_wait is None else open_wait.deadline - trio.current_time()
        return cls(conversation.status, waits, conversation.variables, due_in)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Observed:
        waits = [(w["block"], w["outcome"], w["reason"], w["waited_s"]) for w in document.get("waits", [])]
        due_in = None
        for wait in document.get("waits", []):
            if wait["outcome"] is None and wait.get("deadline"):
                due_in = _unix(wait["deadline"]) - time.time()
        return cls(document["status"], waits, document.get("variables", {}), due_in)


def _unix(iso: str) -> float:
    """Unix seconds of the gate's ISO 8601 UTC timestamps (``2026-11-24T21:40:00.123456Z``)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class CoreClient:
    """Routes the runner's requests straight to the gate, without HTTP.

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
            status, body = await self._route(method, url.split("/")[1:], content, headers or {}, json)
        except Refused as refusal:
            return CoreAnswer(STATUS_BY_CODE[refusal.code], refusal.as_dict())
        except StoreUnavailable as error:
            return CoreAnswer(STATUS_BY_CODE["store_unavailable"], {"error": "store_unavailable", "detail": error.reason})
        return CoreAnswer(status, body)

    async def webhook_status(self, bot_id: str, block_id: str, body: bytes, headers: dict[str, str]) -> int:
        """The status a webhook call gets; the hot path of the core driver (no answer body built)."""
        media_type = media_type_of(headers.get("Content-Type"))
        try:
            answer = await self.webhooks.handle(bot_id, block_id, media_type=media_type, headers=headers, body=body)
        except Refused as refusal:
            return STATUS_BY_CODE[refusal.code]
        except StoreUnavailable:
            return STATUS_BY_CODE["store_unavailable"]
        return STATUS_BY_ANSWER[answer["status"]]

    async def _route(self, method: str, parts: list[str], content: bytes | None, headers: dict[str, str],
                     document: Any) -> tuple[int, Any]:
        gate = self.gate
        if method == "POST" and len(parts) == 3 and parts[0] == "webhooks":
            media_type = media_type_of(next((v for k, v in headers.items() if k.lower() == "content-type"), None))
            answer = await self.webhooks.handle(parts[1], parts[2], media_type=media_type, headers=headers,
                                                body=content or b"")
            return STATUS_BY_ANSWER[answer["status"]], answer
        if parts[:2] == ["api", "conversations"] and len(parts) == 3 and method == "GET":
            return 200, (await gate.get_conversation(parts[2])).as_dict(gate.clock)
        if parts[:2] == ["api", "bots"]:
            if len(parts) == 2 and method == "POST":
                return 201, gate.bot_document(await gate.create_bot(document))
            if len(parts) == 3 and method == "GET":
                return 200, gate.bot_document(await gate.get_bot(parts[2]))
            if len(parts) == 4 and parts[3] == "conversations" and method == "POST":
                variables = (document or {}).get("variables", {})
                return 201, (await gate.start_conversation(parts[2], variables)).as_dict(gate.clock)
        raise ValueError(f"the core driver has no route for {method} /{'/'.join(parts)}")


class AsgiClient:
    """Calls an ASGI app directly: one ``http`` scope per request, the body in one message.

    This is what ``httpx.ASGITransport`` does, minus httpx's request/response models and its
    transport layers (about 1.6× fewer CPU cycles per request, measured).
    """

    base_url = IN_PROCESS_URL

    def __init__(self, app: Any) -> None:
        self.app = app

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None, json: Any = None) -> AsgiAnswer:
        body, headers = _body_and_headers(content, headers, json)
        raw_headers = [(b"host", b"harness.local"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        path, _, query = url.partition("?")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": raw_headers, "client": ("127.0.0.1", 1), "server": ("harness.local", 80), "extensions": {},
        }
        sent = False
        status = 500
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await trio.sleep_forever()  # the app cancels this once it has answered
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return AsgiAnswer(status, b"".join(chunks))


def _body_and_headers(content: bytes | None, headers: dict[str, str] | None,
                      json: Any) -> tuple[bytes, dict[str, str]]:
    """The bytes to send and the headers to send them with (``json=`` sets the content type)."""
    if json is not None:
        return _json_bytes(json), {**(headers or {}), "Content-Type": "application/json"}
    return content or b"", headers or {}


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


class _Connection:
    """One keep-alive HTTP/1.1 connection: a trio stream and its h11 state machine."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.used = False  # has answered a request before: the server may have closed it meanwhile
        self.answering = False  # bytes of the current answer have come in


class Http11Client:
    """A lean HTTP/1.1 client for a live gate: keep-alive connections, h11 for the protocol.

    httpx's connection pool scans and request/response models were half of the client's CPU per
    conversation; a live run needs only small JSON requests to one ``http://`` origin, so this
    does just that. At most ``connections`` requests are in flight, one per connection. A request
    that fails on a reused connection before any answer came back (the server closed it while it
    sat idle) is sent once more on a fresh one: the server never saw it.
    """

    def __init__(self, base_url: str, *, connections: int, timeout_s: float = 30.0,
                 headers: dict[str, str] | None = None) -> None:
        url = httpx.URL(base_url)
        if url.scheme != "http":
            raise ValueError(f"the lean client speaks plain http, not {url.scheme}")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = url.host, url.port or 80
        self.authority = f"{self.host}:{self.port}".encode()
        self.prefix = url.path.rstrip("/")
        self.timeout_s = timeout_s
        self.fixed = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
        self.slots = trio.Semaphore(connections)
        self.idle: list[_Connection] = []

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None, json: Any = None) -> AsgiAnswer:
        body, headers = _body_and_headers(content, headers, json)
        fields = [(b"Host", self.authority), (b"Content-Length", str(len(body)).encode()), *self.fixed]
        fields += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        request = h11.Request(method=method, target=(self.prefix + url).encode(), headers=fields)
        async with self.slots:
            with trio.fail_after(self.timeout_s):
                while True:
                    connection = self.idle.pop() if self.idle else await self._connect()
                    try:
                        answer = await self._exchange(connection, request, body)
                    except (OSError, trio.BrokenResourceError, h11.RemoteProtocolError):
                        await connection.stream.aclose()
                        if connection.used and not connection.answering:
                            continue  # a keep-alive connection the server had closed: once more, fresh
                        raise
                    except BaseException:
                        await connection.stream.aclose()
                        raise
                    if connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE:
                        connection.h11.start_next_cycle()
                        connection.used = True
                        self.idle.append(connection)
                    else:
                        await connection.stream.aclose()
                    return answer

    async def _connect(self) -> _Connection:
        stream = await trio.open_tcp_stream(self.host, self.port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(stream)

    async def _exchange(self, connection: _Connection, request: h11.Request, body: bytes) -> AsgiAnswer:
        protocol = connection.h11
        data = protocol.send(request) or b""
        if body:
            data += protocol.send(h11.Data(data=body)) or b""
        data += protocol.send(h11.EndOfMessage()) or b""
        connection.answering = False
        await connection.stream.send_all(data)
        status = 0
        chunks: list[bytes] = []
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                received = await connection.stream.receive_some(65536)
                connection.answering = connection.answering or bool(received)
                protocol.receive_data(received)  # b"": the server closed; h11 then says how that ends
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return AsgiAnswer(status, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the server closed the connection mid-answer")

    async def aclose(self) -> None:
        for connection in self.idle:
            await connection.stream.aclose()
        self.idle.clear()


# What a failed exchange with a live gate raises; the engine records it on the conversation.
TRANSPORT_ERRORS = (httpx.HTTPError, OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError)


@dataclass
class Driver:
    client: httpx.AsyncClient | CoreClient | AsgiClient | Http11Client
    virtual: bool  # True: trio's clock may be a MockClock; there is no real network
    gate: Gate | None = None  # only in-process: outcomes are read from it, signatures use its clock
    in_flight: trio.Semaphore | None = None  # bounds concurrent requests to a live server
    poll_interval_s: float = 0.001
    # Several live gates on one store (SPEC §13.5): `client` is the first (bots, reads); conversations
    # start on each in turn, and a call goes to the one after the gate its conversation started on.
    others: list[httpx.AsyncClient | Http11Client] = field(default_factory=list)
    _started_on: dict[str, int] = field(default_factory=dict)
    _starts: int = 0
    _forgotten: list[str] = field(default_factory=list)  # keys to let go of at the next call

    def unix_time(self) -> float:
        """Seconds since the epoch on the clock the gate checks signatures against."""
        if self.gate is not None:
            return self.gate.clock.signing_time()
        return time.time()

    async def request(self, method: str, url: str, *, target: int = 0, **kwargs: object) -> Answer:
        client = self.client if target == 0 else self.others[target - 1]
        if self.in_flight is None:
            return await client.request(method, url, **kwargs)  # type: ignore[arg-type]
        async with self.in_flight:
            return await client.request(method, url, **kwargs)  # type: ignore[arg-type]

    async def start(self, bot_id: str) -> tuple[str | None, str | None]:
        """Start a conversation: ``(key, None)``, or ``(None, why)`` when the gate refused."""
        await self._let_go()
        if isinstance(self.client, CoreClient):
            assert self.gate is not None
            try:
                return (await self.gate.start_conversation(bot_id)).key, None
            except Refused as refusal:
                return None, f"starting the conversation: {STATUS_BY_CODE[refusal.code]} {refusal.detail}"
        target = self._starts % (1 + len(self.others))
        self._starts += 1
        response = await self.request("POST", f"/api/bots/{bot_id}/conversations", target=target)
        if response.status_code != 201:
            return None, f"starting the conversation: {response.status_code} {response.text[:200]}"
        key: str = response.json()["conversation_key"]
        if self.others:
            self._started_on[key] = target
        return key, None

    async def call(self, bot_id: str, block_id: str, body: bytes, headers: dict[str, str],
                   owner: str | None = None) -> tuple[int, Any]:
        """A third party's webhook call: its status, and (live only) the 200 answer's document.

        ``owner`` is the key of the conversation the party belongs to (whatever key the call
        carries); with several targets the call goes to another gate than the one that started it.
        """
        await self._let_go()
        if isinstance(self.client, CoreClient):
            return await self.client.webhook_status(bot_id, block_id, body, headers), None
        target = 0
        if self.others:
            target = (self._started_on.get(owner or "", 0) + 1) % (1 + len(self.others))
        response = await self.request("POST", f"/webhooks/{bot_id}/{block_id}", content=body, headers=headers,
                                      target=target)
        accepted = response.json() if response.status_code == 200 and self.gate is None else None
        return response.status_code, accepted

    async def read(self, key: str) -> tuple[Observed | None, str | None]:
        """The conversation as the gate has it now: ``(observed, None)`` or ``(None, why)``."""
        if self.gate is not None:
            conversation = await self.gate.store.get_conversation(key)
            if conversation is None:
                return None, "reading the conversation: 404"
            return Observed.of(conversation), None
        response = await self.request("GET", f"/api/conversations/{key}")
        if response.status_code != 200:
            return None, f"reading the conversation: {response.status_code}"
        return Observed.from_json(response.json()), None

    def forget(self, key: str) -> None:
        """The runner is done with this conversation: an in-process gate lets it go, at the
        driver's next call (the engine releases conversations from synchronous bookkeeping)."""
        self._started_on.pop(key, None)
        if self.gate is not None:
            self._forgotten.append(key)

    async def _let_go(self) -> None:
        if self._forgotten:
            assert self.gate is not None
            keys, self._forgotten = self._forgotten, []
            for key in keys:
                await self.gate.forget(key)


@asynccontextmanager
async def in_process(*, max_body: int = 1024 * 1024, new_key: Callable[[], str] | None = None) -> AsyncIterator[Driver]:
    """A fresh in-memory gate behind its Quart app, in this trio run; use under a MockClock.

    ``new_key`` draws the gate's conversation keys (e.g. :class:`~harness.runner.engine.SeededKeys`, so a run's keys
    repeat with its seed, SPEC §15.5); default: the OS's randomness.
    """
    gate = Gate(store=MemoryStore(), public_url=IN_PROCESS_URL, new_key=new_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        yield Driver(client=AsgiClient(create_app(gate, max_body=max_body)), virtual=True, gate=gate)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def live(url: str | Sequence[str], *, concurrency: int = 64, api_token: str | None = None,
               ) -> AsyncIterator[Driver]:
    """A running gate at ``url``, or several gates sharing one store (a list: bots go to the first,
    conversations start on each in turn, calls go to another than their conversation's, SPEC
    §13.5). ``concurrency`` bounds requests in flight (and connections, per gate); ``api_token``
    is sent as ``Authorization: Bearer`` (the gates' ``--api-token``)."""
    urls = [url] if isinstance(url, str) else list(url)
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0, pool=None)  # waiting for a pooled connection is not an error
    clients: list[httpx.AsyncClient | Http11Client] = [
        Http11Client(each, connections=concurrency, headers=headers) if httpx.URL(each).scheme == "http"
        else httpx.AsyncClient(base_url=each.rstrip("/"), limits=limits, timeout=timeout, headers=headers)
        for each in urls
    ]
    lean = all(isinstance(client, Http11Client) for client in clients)
    try:
        yield Driver(client=clients[0], others=clients[1:], virtual=False, poll_interval_s=0.05,
                     in_flight=None if lean else trio.Semaphore(concurrency))
    finally:
        for client in clients:
            await client.aclose()


@asynccontextmanager
async def in_core(*, max_body: int = 1024 * 1024, new_key: Callable[[], str] | None = None) -> AsyncIterator[Driver]:
    """A fresh in-memory gate driven without HTTP; use under a MockClock for virtual time.
    ``new_key`` as for :func:`in_process`."""
    gate = Gate(store=MemoryStore(), public_url=IN_PROCESS_URL, new_key=new_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        yield Driver(client=CoreClient(gate, max_body=max_body), virtual=True, gate=gate)
        nursery.cancel_scope.cancel()


def open_driver(name: str, *, new_key: Callable[[], str] | None = None) -> Any:
    """The in-process driver called ``name`` (:data:`DRIVERS`), as an async context manager;
    ``new_key`` draws its gate's conversation keys (see :class:`~harness.runner.engine.SeededKeys`)."""
    if name == "asgi":
        return in_process(new_key=new_key)
    if name == "core":
        return in_core(new_key=new_key)
    raise ValueError(f"unknown driver {name!r}; use one of {', '.join(DRIVERS)}")
