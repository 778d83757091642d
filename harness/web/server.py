"""The HTTP adapter: a quart-trio app that maps HTTP onto the :class:`~harness.core.gate.Gate`.

It parses, limits and verifies requests; the gate decides everything that depends on
conversation state. Every error leaves as ``{"error": CODE, "detail": TEXT}`` with the status of
:data:`STATUS_BY_CODE` — framework errors (404, 405, 500) included.

The app does not own the gate's scheduler: whoever runs the app (``harness serve``, the in-process
driver, a test fixture) opens a nursery and starts :meth:`Gate.run` in it. That is also what makes
the app usable through ``httpx.ASGITransport``, which sends no lifespan events.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..core.errors import RETRY_AFTER_S, STATUS_BY_ANSWER, STATUS_BY_CODE, Refused
from ..core.gate import LATENESS_BUCKETS, Gate
from ..core.js import prestart_script_workers
from ..core.store import StoreUnavailable
from ..core.webhooks import (
    DEFAULT_MAX_BODY,
    JSON_TYPE,
    WebhookHandler,
    media_type_of,
    parse_json,
    too_large,
)
from .dashboard import register_dashboard
from .deliveries import Deliveries
from .http_guard import DEFAULT_BODY_TIMEOUT, HttpGuard, hypercorn_limits
from .openapi import openapi_document

__all__ = ["DEFAULT_GRACEFUL_TIMEOUT", "DEFAULT_MAX_BODY", "STATUS_BY_CODE", "create_app", "json_response", "serve"]

DEFAULT_GRACEFUL_TIMEOUT = 30.0

log = logging.getLogger("harness.web.server")

def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, ensure_ascii=False, allow_nan=False)
    return Response(text, status=status, content_type=JSON_TYPE, headers=headers)


async def read_body(limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes (413, before reading if declared)."""
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    received = bytearray()
    async for chunk in request.body:
        received += chunk
        if len(received) > limit:
            raise too_large(limit)
    g.body_read = True
    return bytes(received)


def _body_left_unread() -> bool:
    """True when the request came with a body that the answer did not wait for.

    Answering early (404 for an unknown webhook, 413, a framework 404/405) leaves the rest of the
    body on the connection, and the next request on that keep-alive connection would hang behind
    it. Such answers close the connection instead.
    """
    if g.get("body_read"):
        return False
    declared = request.headers.get("Content-Length", "0")
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return chunked or (declared.isdigit() and int(declared) > 0)


async def read_json_object(limit: int, *, optional: bool = False) -> dict[str, Any]:
    """The body of an API call: a JSON object (any content type is accepted for convenience)."""
    body = await read_body(limit)
    if optional and not body.strip():
        return {}
    document = parse_json(body)
    if not isinstance(document, dict):
        raise Refused("invalid_payload", "the body must be a JSON object")
    return document


def create_app(gate: Gate, *, max_body: int = DEFAULT_MAX_BODY, api_token: str | None = None,
               body_timeout: float = DEFAULT_BODY_TIMEOUT) -> QuartTrio:
    """Build the quart-trio app serving ``gate``. See SPEC §3–4 and §11 for the routes.

    ``api_token`` puts the page, ``/api/…`` and ``/metrics`` behind a bearer token;
    ``body_timeout`` bounds how long a request body may take (see :mod:`harness.web.http_guard`,
    which wraps the app and makes those checks before any route runs).
    """
    app = QuartTrio("harness")
    app.config.update(MAX_CONTENT_LENGTH=None, PROVIDE_AUTOMATIC_OPTIONS=False)
    app.gate = gate  # type: ignore[attr-defined]
    app.asgi_app = HttpGuard(  # type: ignore[method-assign,assignment]
        app.asgi_app, statuses=STATUS_BY_CODE, api_token=api_token, body_timeout=body_timeout)
    webhook_calls: dict[int, int] = {}
    webhooks = WebhookHandler(gate, max_body=max_body)
    deliveries = app.deliveries = Deliveries(gate)  # type: ignore[attr-defined]

    @app.errorhandler(Refused)
    async def refused(error: Refused) -> Response:
        return json_response(error.as_dict(), STATUS_BY_CODE[error.code])

    @app.errorhandler(StoreUnavailable)
    async def store_unavailable(error: StoreUnavailable) -> Response:
        # Nothing changed (SPEC §13.3): the client may simply try again.
        return json_response({"error": "store_unavailable", "detail": f"the store cannot answer now: {error.reason}"},
                             STATUS_BY_CODE["store_unavailable"], headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = re.sub(r"\W+", "_", (error.name or "error").lower()).strip("_")
        allow = dict(error.get_headers()).get("Allow")  # a 405 says which methods the path takes
        return json_response({"error": code, "detail": error.description or error.name}, error.code or 500,
                             headers={"Allow": allow} if allow else None)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return json_response({"error": "internal_error", "detail": "unexpected server error"}, 500)

    @app.after_request
    async def finish(response: Response) -> Response:
        if request.path.startswith("/webhooks/"):
            webhook_calls[response.status_code] = webhook_calls.get(response.status_code, 0) + 1
            await _note_delivery(deliveries, response)
        if _body_left_unread():
            response.headers["Connection"] = "close"
        return response

    @app.get("/healthz")
    async def healthz() -> Response:
        reason = await gate.health()
        if reason is not None:
            return json_response({"status": "degraded", "store": reason}, 503,
                                 headers={"Retry-After": str(RETRY_AFTER_S)})
        return json_response({"status": "ok"})

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        webhooks = {bot.id: bot.webhook_blocks() for bot in await gate.store.bots()}
        return json_response(openapi_document(max_body=max_body, protected=bool(api_token), webhooks=webhooks))

    @app.post("/api/bots")
    async def create_bot() -> Response:
        document = await read_json_object(max_body)
        return json_response(gate.bot_document(await gate.create_bot(document)), 201)

    @app.get("/api/bots")
    async def list_bots() -> Response:
        return json_response({"bots": [gate.bot_document(bot) for bot in await gate.store.bots()]})

    @app.get("/api/bots/<bot_id>")
    async def get_bot(bot_id: str) -> Response:
        return json_response(gate.bot_document(await gate.get_bot(bot_id)))

    @app.post("/api/bots/<bot_id>/conversations")
    async def start_conversation(bot_id: str) -> Response:
        await gate.get_bot(bot_id)  # 404 before reading a body we would not use
        document = await read_json_object(max_body, optional=True)
        conversation = await gate.start_conversation(bot_id, document.get("variables"))
        return json_response(conversation.as_dict(gate.clock), 201)

    @app.get("/api/conversations/<key>")
    @app.get("/c/<key>")
    async def get_conversation(key: str) -> Response:
        return json_response((await gate.get_conversation(key)).as_dict(gate.clock))

    @app.post("/webhooks/<bot_id>/<block_id>")
    async def webhook(bot_id: str, block_id: str) -> Response:
        block = await webhooks.block(bot_id, block_id)
        body = await read_body(max_body)
        try:
            answer = await webhooks.decide(block, bot_id, block_id,
                                           media_type=media_type_of(request.headers.get("Content-Type")),
                                           headers=request.headers, body=body)
        except Refused as error:
            g.refused_key = error.conversation_key  # for the refused call's log line: its key, if it named one
            raise
        g.answer = answer
        return json_response(answer, STATUS_BY_ANSWER[answer["status"]])

    @app.get("/metrics")
    async def metrics() -> Response:
        text = render_metrics(gate, webhook_calls, await gate.open_wait_count())
        return Response(text, content_type="text/plain; version=0.0.4")

    register_dashboard(app, gate, deliveries)  # GET / (the live page) and GET /api/dashboard
    return app


async def _note_delivery(deliveries: Deliveries, response: Response) -> None:
    """Record a webhook call's answer for the live page; log it when refused (4xx)."""
    args = request.view_args or {}
    parts = request.path.split("/")
    bot, block = args.get("bot_id", parts[2] if len(parts) > 2 else None), args.get(
        "block_id", parts[3] if len(parts) > 3 else None)
    status = response.status_code
    if status < 300 and g.get("answer") is not None:
        deliveries.accepted(bot, block, status, g.answer)
        return
    if not 400 <= status < 500:
        return
    try:
        error = str(json.loads(await response.get_data())["error"])
    except (ValueError, KeyError, TypeError):
        error = "unknown"
    # The key travels with the refusal (Refused.conversation_key): the gate sets it on the refusals
    # that come after the payload named a key, so the body is not parsed a second time here.
    deliveries.refused_call(bot, block, status, error, g.get("refused_key"))


def render_metrics(gate: Gate, webhook_calls: dict[int, int], open_waits: int) -> str:
    """Prometheus text exposition of the gate's counters."""
    stats = gate.stats
    lines = [
        "# HELP harness_waits_open Waits currently open.",
        "# TYPE harness_waits_open gauge",
        f"harness_waits_open {open_waits}",
        "# HELP harness_waits_opened_total Waits this process armed: opened here, or found open at start.",
        "# TYPE harness_waits_opened_total counter",
        f"harness_waits_opened_total {stats.waits_opened}",
        "# HELP harness_waits_resolved_total Waits resolved, by outcome and reason.",
        "# TYPE harness_waits_resolved_total counter",
    ]
    for (outcome, reason), count in sorted(stats.resolutions.items()):
        lines.append(f'harness_waits_resolved_total{{outcome="{outcome}",reason="{reason}"}} {count}')
    lines += [
        "# HELP harness_webhook_calls_total Webhook calls answered, by HTTP status.",
        "# TYPE harness_webhook_calls_total counter",
    ]
    for status, count in sorted(webhook_calls.items()):
        lines.append(f'harness_webhook_calls_total{{status="{status}"}} {count}')
    lines += [
        "# HELP harness_late_calls_total Calls refused with wait_expired: they came after the deadline.",
        "# TYPE harness_late_calls_total counter",
        f"harness_late_calls_total {stats.late_calls}",
        "# HELP harness_timer_lateness_seconds How late timeouts fire after their deadline.",
        "# TYPE harness_timer_lateness_seconds histogram",
    ]
    for bound, count in zip(LATENESS_BUCKETS, stats.lateness_buckets):
        label = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f'harness_timer_lateness_seconds_bucket{{le="{label}"}} {count}')
    lines.append(f"harness_timer_lateness_seconds_sum {stats.lateness_sum}")
    lines.append(f"harness_timer_lateness_seconds_count {stats.lateness_count}")
    return "\n".join(lines) + "\n"


async def serve(
    gate: Gate,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body: int = DEFAULT_MAX_BODY,
    public_url: str | None = None,
    api_token: str | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``gate`` over HTTP on hypercorn's trio worker.

    Reports the base URL it bound (``port=0`` picks a free port) through ``task_status``; when
    ``public_url`` is not given, conversation and webhook URLs use that bound URL. Runs until
    cancelled, or until ``shutdown_trigger`` returns: then hypercorn stops accepting, lets the
    requests in flight finish — up to ``graceful_timeout`` seconds (SPEC §17.6) — and ``serve``
    returns. With ``reuse_port`` it listens with ``SO_REUSEPORT``, next to the other workers of
    ``harness serve --workers N``.

    Why the long default: hypercorn's own is 3 s, after which it cancels what is still running;
    a webhook call whose resolution was committed but whose flow (scripts, up to 1.5 s per step)
    or answer was still on its way would then be dropped, and the sender's retry would get 409.
    Idle keep-alive connections do not hold the stop up: once the requests in flight have been
    answered (counted by :class:`_InFlight`), whatever connections are left are closed. (Left to
    hypercorn, a keep-alive connection that had served a request held the stop for the whole
    ``graceful_timeout``.)
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    if reuse_port:
        from .workers import reuse_port_socket

        listening = reuse_port_socket(host, port)  # hypercorn listens on it; closed with the process
        config.bind = [f"fd://{listening.fileno()}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = graceful_timeout
    hypercorn_limits(config, body_timeout=body_timeout)
    app: Any = _InFlight(create_app(gate, max_body=max_body, api_token=api_token, body_timeout=body_timeout))
    stopping = trio.Event()

    async def stop_accepting() -> None:
        await (shutdown_trigger or trio.sleep_forever)()
        stopping.set()

    async with trio.open_nursery() as nursery:

        async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn_serve(app, config, shutdown_trigger=stop_accepting, task_status=task_status)
            nursery.cancel_scope.cancel()  # graceful shutdown done: stop the deadline scheduler too

        async def close_when_answered() -> None:
            await stopping.wait()
            with trio.move_on_after(graceful_timeout):
                await app.all_answered()
            nursery.cancel_scope.cancel()  # only idle connections are left (or the graceful time is up)

        nursery.start_soon(close_when_answered)

        await nursery.start(gate.run)
        prestart_script_workers()  # their start-up (an interpreter each) is not charged to the first script
        bound = await nursery.start(http)
        base_url = bound[0] if bound else f"http://{host}:{port}"
        if public_url is None:
            gate.public_url = base_url.rstrip("/")
        task_status.started(base_url)


class _InFlight:
    """ASGI middleware that counts the HTTP requests being served, so a stop can end as soon as
    every one has been answered, without waiting for idle keep-alive connections."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0
        self._none_left = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if self.count == 0:
                self._none_left.set()

    async def all_answered(self) -> None:
        """Return once no request is in flight (checked again after a moment: a keep-alive client
        may have sent one more while the listener closed)."""
        while True:
            if self.count:
                self._none_left = trio.Event()
                await self._none_left.wait()
            await trio.sleep(0.05)  # let the last answer's bytes leave
            if not self.count:
                return

