"""The gate's door: checks that come before any route, as one raw ASGI middleware (SPEC §11).

:class:`HttpGuard` wraps the Quart app (``app.asgi_app = HttpGuard(app.asgi_app, …)``, done by
:func:`harness.web.server.create_app`) and refuses, in this order:

0. **A path spelled any other way than its one canonical form** — ``//api/bots``, ``/./api``,
   ``/api/../api/bots``, an absolute-form target (``GET http://host/api/bots``), ``*``, a
   character outside the route alphabet: 404 ``not_found``. hypercorn hands the percent-decoded
   target over as ``scope["path"]`` (so ``/%61pi/bots`` *is* ``/api/bots`` here and gets its
   checks), and the router accepts spellings a prefix rule would not see; deciding here, once,
   what the path is means every rule below judges the path the router will serve.
1. **Ambiguous framing** — ``Content-Length`` *and* ``Transfer-Encoding``: 400 ``invalid_request``
   and the connection closed. h11 (hypercorn's HTTP/1.1 parser) accepts such a request and lets
   ``Transfer-Encoding`` win, so whatever a proxy that trusts ``Content-Length`` would see as the
   rest of the body is read here as the *next* request on the connection: request smuggling.
   Closing the connection drops those bytes unread.
2. **No token** — with an API token set, every path but the open ones (``/healthz``,
   ``/openapi.json``, ``/webhooks/…``, ``/c/…``, ``/static/…``) — so ``/``, ``/api/…`` and ``/metrics`` — need
   ``Authorization: Bearer TOKEN`` or the ``harness_token`` cookie (``GET /?token=TOKEN`` sets
   it): 401 ``unauthorized`` otherwise. Compared in constant time.
3. **A body that is not JSON** on a ``POST /api/…``: 415 ``unsupported_media_type``. A browser
   can send a ``text/plain`` form cross-site without a preflight; only JSON is accepted, so a
   cross-site form cannot create bots or start conversations (CSRF).
4. **A slow body** — not complete ``body_timeout`` seconds after the headers arrived: the
   request is cancelled (no handler has acted on a partial body: handlers read the whole body
   before they change anything), the answer is 408 ``body_timeout`` and the connection closes.
   At most ``max_pending_bodies`` requests may be waiting for their body at once; past that, the
   one that has waited longest is shed the same way, so stalled clients cannot pile up.

Stalls before a request is complete (a connection that sends nothing, or headers a byte at a
time) are hypercorn's: its idle timer (``keep_alive_timeout``) runs from the connection's start
until a whole request head has been parsed. :func:`hypercorn_limits` sets those knobs.

Times are trio's clock, so the body timeout follows a ``MockClock`` in in-process tests.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import resource
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import trio

from ..core.errors import Refused

__all__ = [
    "COOKIE",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_PENDING_BODIES",
    "HttpGuard",
    "hypercorn_limits",
    "needs_token",
    "raise_open_file_limit",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Any: hypercorn and Quart type scopes and events as TypedDicts, which a plain mapping cannot name.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_MAX_PENDING_BODIES = 1024
COOKIE = "harness_token"
DRAIN_LIMIT = 64 * 1024
# Connections that have not sent a whole request head (or idle keep-alive ones) close after this.
HEADER_TIMEOUT_S = 5.0


# Every route's path is "/" or segments of these characters (bot, block and static file names,
# base64url keys); anything else is not a spelling the gate serves.
_SEGMENT = re.compile(r"[A-Za-z0-9_.\-]+")
_OPEN_PREFIXES = ("webhooks", "c", "static")
_OPEN_PATHS = ("/healthz", "/openapi.json")


def is_canonical(path: str) -> bool:
    """Whether ``path`` (as hypercorn decoded it) is the one spelling of a route the gate serves.

    No empty, ``.`` or ``..`` segment, no character outside the route alphabet, no scheme or
    authority (absolute-form targets), nothing but a leading ``/``.

    >>> [is_canonical(p) for p in ("/", "/api/bots", "//api/bots", "/./api", "/api/../api", "http://h/api", "*")]
    [True, True, False, False, False, False, False]
    """
    if path == "/":
        return True
    if not path.startswith("/"):
        return False
    return all(_SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in path[1:].split("/"))


def needs_token(path: str) -> bool:
    """Whether ``path`` (canonical) is behind ``--api-token``: everything but the open routes.

    Webhooks, ``/healthz``, ``/c/{key}``, ``/openapi.json`` and the page's static files stay open:
    third parties and probes cannot hold a token, and a conversation URL is already a capability
    (its key). Deny by default: a route added later is guarded until it is listed here.

    >>> [needs_token(p) for p in ("/", "/api/bots", "/metrics", "/webhooks/a/b", "/healthz", "/c/k")]
    [True, True, True, False, False, False]
    """
    if path in _OPEN_PATHS:
        return False
    first = path[1:].split("/", 1)
    return not (len(first) == 2 and first[0] in _OPEN_PREFIXES)


def _token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a credential as received (bytes read as latin-1) with the token.

    Compared as bytes: ``compare_digest`` refuses non-ASCII text, and a header may hold anything.
    """
    return given is not None and hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode("utf-8"))


@dataclass(slots=True)
class _PendingBody:
    """A request whose body is still arriving; ``deadline`` moves to now when it is shed."""

    deadline: float
    timer: trio.CancelScope | None = None

    def shed(self) -> None:
        self.deadline = -math.inf
        if self.timer is not None:
            self.timer.deadline = -math.inf


class HttpGuard:
    """Raw ASGI middleware enforcing the checks above; every refusal is ``{"error", "detail"}``.

    ``statuses`` maps each error code to its HTTP status (the server's one table).
    """

    def __init__(self, app: ASGIApp, *, statuses: Mapping[str, int], api_token: str | None = None,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 max_pending_bodies: int = DEFAULT_MAX_PENDING_BODIES) -> None:
        if not body_timeout > 0:
            raise ValueError("body_timeout must be positive")
        self.app = app
        self.statuses = statuses
        self.api_token = api_token or None
        self.body_timeout = body_timeout
        self.max_pending_bodies = max_pending_bodies
        # Requests waiting for their body, oldest first (dicts keep insertion order).
        self._pending: dict[int, _PendingBody] = {}
        self.shed_count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        has_body = _may_have_body(scope, headers)
        if "content-length" in headers and "transfer-encoding" in headers:
            await self._drain(receive)
            await self._refuse(send, "invalid_request",
                               "Content-Length and Transfer-Encoding together are ambiguous; send one", close=True)
            return
        path: str = scope["path"]
        if not is_canonical(path):
            await self._refuse(send, "not_found", "no such path (paths are served in their canonical spelling only)",
                               close=has_body)
            return
        if self.api_token is not None and needs_token(path):
            cookie_to_set = self._authorise(scope, headers)
            if cookie_to_set is False:
                await self._refuse(send, "unauthorized", "send Authorization: Bearer <token> (see --api-token)",
                                   close=has_body, extra_headers=[(b"www-authenticate", b"Bearer")])
                return
            if cookie_to_set:
                send = _with_cookie(send, self.api_token)
        if scope["method"] != "GET" and path.startswith("/api/") and has_body:
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                await self._refuse(send, "unsupported_media_type",
                                   f"/api/ accepts application/json bodies, not {media_type or 'no content type'}",
                                   close=True)
                return
        if not has_body:
            await self.app(scope, receive, send)
        else:
            await self._with_body_deadline(scope, receive, send)

    def _authorise(self, scope: Scope, headers: dict[str, str]) -> bool | None:
        """False: refuse. True: allowed by ``?token=`` on ``/`` (set the cookie). None: allowed."""
        assert self.api_token is not None
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _token_matches(credentials.strip(), self.api_token):
            return None
        if _token_matches(_cookie(headers.get("cookie", "")), self.api_token):
            return None
        if scope["path"] == "/":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), encoding="latin-1")
            if _token_matches((query.get("token") or [None])[0], self.api_token):
                return True
        return False

    async def _with_body_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One cancel scope around the app carries the body's deadline until the body is complete,
        # then none: cheaper than a timer per receive, and the handler's own work is never cut.
        app_scope = trio.CancelScope(deadline=trio.current_time() + self.body_timeout)
        pending = _PendingBody(deadline=app_scope.deadline, timer=app_scope)
        ticket = id(pending)
        if len(self._pending) >= self.max_pending_bodies:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest).shed()
            self.shed_count += 1
        self._pending[ticket] = pending
        response_started = body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if not body_done and (message["type"] == "http.disconnect" or not message.get("more_body", False)):
                body_done = True
                app_scope.deadline = math.inf
                self._pending.pop(ticket, None)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            with app_scope:
                await self.app(scope, timed_receive, tracked_send)
        finally:
            self._pending.pop(ticket, None)
        if app_scope.cancelled_caught and not body_done and not response_started:
            await self._refuse(send, "body_timeout",
                               f"the request body was not complete {self.body_timeout:g} s after its headers",
                               close=True)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop a body we refuse (at most :data:`DRAIN_LIMIT` bytes, within the body timeout).

        Why: hypercorn parses what follows this request's body (e.g. a smuggled request) as soon as
        it has the body's end; if our ``Connection: close`` answer has started by then, h11 treats
        those bytes as a protocol error and hypercorn drops the connection *before our answer's
        body is written*. With the body consumed first and a few scheduler turns for hypercorn's
        reader to pause, the whole answer goes out, then the connection closes. The smuggled bytes
        are never run either way; this is only about the client seeing why.
        """
        received = 0
        with trio.move_on_after(self.body_timeout):
            while received <= DRAIN_LIMIT:
                message = await receive()
                received += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        for _ in range(3):
            await trio.sleep(0)

    async def _refuse(self, send: Send, code: str, detail: str, *, close: bool,
                      extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps(Refused(code, detail).as_dict()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if close:
            # The body (if any) is left unread; the connection cannot carry another request.
            headers.append((b"connection", b"close"))
        headers += extra_headers or []
        await send({"type": "http.response.start", "status": self.statuses[code], "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _headers(scope: Scope) -> dict[str, str]:
    """Lower-case header names to values; a repeated header keeps its last value."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _may_have_body(scope: Scope, headers: dict[str, str]) -> bool:
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return not str(scope.get("http_version", "1.1")).startswith("1")  # HTTP/2 frames bodies itself


def _cookie(header: str) -> str | None:
    """The ``harness_token`` cookie's value, in one linear pass.

    Not :class:`http.cookies.SimpleCookie`: its parser is quadratic on crafted input
    (CVE-2024-7592; a 16 KB header cost ≈ 0.5 s of CPU), and we need one cookie, not a jar.

    >>> _cookie('a=1; harness_token="t0k"; b=2'), _cookie("a=1"), _cookie("")
    ('t0k', None, None)
    """
    if COOKIE not in header:
        return None
    for part in header.split(";"):
        name, equals, value = part.partition("=")
        if equals and name.strip() == COOKIE:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _with_cookie(send: Send, token: str) -> Send:
    """``send`` that adds the token cookie (and forbids caching) to the response."""
    cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")

    async def send_with_cookie(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie),
                                              (b"cache-control", b"no-store")]}
        await send(message)

    return send_with_cookie


def hypercorn_limits(config: Any, *, body_timeout: float) -> None:
    """Set hypercorn's own stall limits on ``config`` (a ``hypercorn.config.Config``).

    * ``keep_alive_timeout``: hypercorn's idle timer runs from the connection's start (and after
      each answer) until a whole request head is parsed, so a client sending nothing, or headers
      a byte at a time (slowloris), is closed after it.
    * ``h11_max_incomplete_size``: a request head may not grow past 16 KiB.
    * ``read_timeout``: a connection that sends nothing at all for this long is closed, a backstop
      behind the body deadline (no request of ours runs that long).
    * ``backlog``: room for bursts of new connections while the loop is busy.
    """
    config.keep_alive_timeout = HEADER_TIMEOUT_S
    config.h11_max_incomplete_size = 16 * 1024
    config.read_timeout = int(math.ceil(body_timeout)) + 30
    config.backlog = 1024


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's open-file soft limit to its hard limit; return (soft, hard) after.

    Every connection is a file descriptor. With the common soft limit of 1024, a few hundred
    stalled clients plus the store would make ``accept()`` fail and starve ``/healthz``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, hard
        soft = target
    return soft, hard
