"""The live page of ``harness serve`` (SPEC §12): ``GET /`` and its data, ``GET /api/dashboard``.

The page is plain HTML, CSS and JavaScript shipped in the package (``harness/web/static/``): no
build step, nothing fetched from elsewhere. It polls :func:`snapshot` once a second, same-origin
and with credentials, so the ``harness_token`` cookie set by ``/?token=…`` goes along when the
server requires a token; the page never puts the token in a URL it builds. It renders every value
with ``textContent`` — bot names, ids and blocks come from users.

Countdowns run in the browser between polls: the snapshot carries the server's clock
(``now_unix``) and each deadline as unix seconds, so the page corrects for its own clock's offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.resources import files
from typing import Any

import trio
from quart import Response
from quart_trio import QuartTrio

from ..core.conversations import WallClock
from ..core.gate import Gate
from .deliveries import Deliveries

__all__ = ["register_dashboard", "snapshot", "MAX_OPEN_WAITS"]

MAX_OPEN_WAITS = 100  # the soonest deadlines shown; the count covers all of them
KEY_PREFIX = 8  # as much of a key as the gate's recent resolutions show
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# The page loads only its own files and talks only to its own origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# `harness run --target` registers a copy of a bot per timeout override: `payment.t300` (SPEC §6).
DERIVED_ID = re.compile(r"^(?P<base>.+)\.t\d+$")


def derived_from(bot_id: str, ids: set[str]) -> str | None:
    """The bot a live run's derived copy was made from, when ``bot_id`` is one (``payment.t300``)."""
    match = DERIVED_ID.match(bot_id)
    return match["base"] if match and match["base"] in ids else None


async def snapshot(gate: Gate, deliveries: Deliveries | None = None) -> dict[str, Any]:
    """What the page shows, as JSON: bots, open waits (soonest first), recent events, counters.

    Its cost does not grow with the number of open waits: the store answers the soonest
    :data:`MAX_OPEN_WAITS` from its deadline index and the count from a maintained counter.

    With ``deliveries`` (the web layer's record of webhook answers): the last calls, accepted and
    refused, newest first, and ``refused`` — the last 50 refused calls (SPEC §16.3).
    """
    clock = gate.clock
    now = trio.current_time()
    open_count = await gate.store.open_wait_count()
    soonest = await gate.store.soonest_open_waits(MAX_OPEN_WAITS)
    bots = await gate.store.bots()
    open_waits = [{
        "bot": wait.bot, "block": wait.block, "conversation": wait.key[:KEY_PREFIX] + "…",
        "opened_at": clock.iso(wait.opened_at), "timeout_s": wait.timeout_s,
        "deadline": clock.iso(wait.deadline), "deadline_unix": clock.unix(wait.deadline),
    } for wait in soonest]
    stats = gate.stats
    resolved = {f"{outcome}/{reason}": count for (outcome, reason), count in sorted(stats.resolutions.items())}
    ids = {bot.id for bot in bots}
    recent = list(reversed(deliveries.recent)) if deliveries is not None else []
    refused = list(reversed(deliveries.refused)) if deliveries is not None else []
    return {
        "now": clock.iso(now),
        "now_unix": clock.unix(now),
        "bots": [{"id": bot.id, "name": bot.name, "webhooks": gate.webhook_urls(bot),
                  "derived_from": derived_from(bot.id, ids)} for bot in bots],
        "open_waits": {"count": open_count, "shown": open_waits},
        "recent_resolutions": _timed(gate.recent_resolutions, clock),  # newest first
        "recent_late_calls": _timed(gate.recent_late_calls, clock),
        "deliveries": recent,  # newest first: accepted (2xx) and refused (4xx) webhook calls
        "refused": refused,
        "counters": {
            "open_waits": open_count,
            "waits_opened": stats.waits_opened,
            "resolved": resolved,
            "succeeded": sum(n for (outcome, _), n in stats.resolutions.items() if outcome == "success"),
            "timed_out": sum(n for (_, reason), n in stats.resolutions.items() if reason == "timeout"),
            "late_calls": stats.late_calls,
            "failed": sum(n for (outcome, _), n in stats.resolutions.items() if outcome == "failure"),
            "accepted_calls": deliveries.accepted_total if deliveries is not None else 0,
            "refused_calls": deliveries.refused_total if deliveries is not None else 0,
        },
    }


def _timed(entries: Iterable[dict[str, Any]], clock: WallClock) -> list[dict[str, Any]]:
    """The gate's recent entries, newest first, their trio-time ``at`` as an ISO timestamp."""
    return [{**entry, "at": clock.iso(entry["at"])} for entry in reversed(list(entries))]


def _asset(name: str) -> str:
    return files("harness.web").joinpath("static", name).read_text(encoding="utf-8")


def register_dashboard(app: QuartTrio, gate: Gate, deliveries: Deliveries | None = None) -> None:
    """Add ``GET /``, ``GET /static/dashboard.{js,css}`` and ``GET /api/dashboard`` to ``app``."""
    from .server import json_response  # here, not at the top: the server module calls this one

    page = _asset("dashboard.html")
    assets = {name: _asset(name) for name in ASSETS}

    @app.get("/")
    async def dashboard_page() -> Response:
        return Response(page, content_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                                 "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"})

    @app.get("/static/<name>")
    async def dashboard_asset(name: str) -> Response:
        if name not in assets:
            return json_response({"error": "not_found", "detail": f"no static file {name!r}"}, 404)
        return Response(assets[name], content_type=ASSETS[name], headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/api/dashboard")
    async def dashboard_data() -> Response:
        return json_response(await snapshot(gate, deliveries), headers={"Cache-Control": "no-store"})
