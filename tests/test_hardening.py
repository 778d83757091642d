"""Serving safely (SPEC §11), in process and in virtual time: what a client or an attacker notices.

Real sockets (smuggling, stalled clients, the token over `harness run`) are in
``test_hardening_e2e.py``; the schema-driven fuzzer is in ``test_openapi.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from harness.core.gate import Gate
from harness.core.signing import HEADER
from harness.web.http_guard import COOKIE
from harness.web.server import STATUS_BY_CODE, create_app

from .conftest import PUBLIC_URL, webhook_bot

TOKEN = "s3cret-token"
BOT = {"id": "pay", "start": "wait", "blocks": {
    "wait": {"type": "webhook", "timeout_s": 30, "success": "ok", "failure": "late"},
    "ok": {"type": "message", "text": "paid"}, "late": {"type": "message", "text": "late"}}}


@pytest.fixture
async def guarded(gate: Gate) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with ``--api-token``; it sends no token unless told to."""
    await gate.add_bot(webhook_bot(timeout_s=30))
    transport = httpx.ASGITransport(app=create_app(gate, api_token=TOKEN))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
        yield client


def bearer(token: str = TOKEN) -> dict[str, str | bytes]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]


# -- the API token ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"), ("GET", "/metrics"), ("GET", "/api/bots"), ("GET", "/api/bots/pay"),
    ("POST", "/api/bots/pay/conversations"), ("GET", "/api/conversations/nope"), ("GET", "/api/nowhere"),
])
async def test_protected_paths_need_the_token(guarded: httpx.AsyncClient, gate: Gate, method: str, path: str) -> None:
    for headers in ({}, bearer("wrong"), bearer(TOKEN + "x"), {"Authorization": TOKEN},
                    {"Authorization": "Basic " + TOKEN}, {"Authorization": "Bearer ü".encode()}, {"Cookie": f"{COOKIE}=wrong"}):
        response = await guarded.request(method, path, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert await gate.open_wait_count() == 0  # the refused start changed nothing
    allowed = await guarded.request(method, path, headers=bearer())
    assert allowed.status_code != 401


async def test_open_paths_stay_open(guarded: httpx.AsyncClient) -> None:
    key = (await guarded.post("/api/bots/pay/conversations", headers=bearer())).json()["conversation_key"]
    assert (await guarded.get("/healthz")).status_code == 200
    assert (await guarded.get("/openapi.json")).json()["openapi"].startswith("3.1")
    assert (await guarded.get(f"/c/{key}")).json()["status"] == "waiting"
    paid = await guarded.post("/webhooks/pay/wait", json={"conversation_key": key, "data": {"amount": 3}})
    assert paid.status_code == 200


async def test_the_page_link_sets_a_cookie_that_authorises_the_page_api_and_metrics(
        guarded: httpx.AsyncClient) -> None:
    assert_error(await guarded.get("/", params={"token": "wrong"}), 401, "unauthorized")
    assert COOKIE not in guarded.cookies
    opened = await guarded.get("/", params={"token": TOKEN})
    assert opened.status_code == 200
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {part.strip() for part in cookie.split(";")}
    # The client now holds the cookie (as the browser would): no header needed any more.
    assert (await guarded.get("/")).status_code == 200
    assert (await guarded.get("/api/bots")).json()["bots"][0]["id"] == "pay"
    assert (await guarded.get("/metrics")).status_code == 200
    assert (await guarded.post("/api/bots/pay/conversations")).status_code == 201
    # ?token= works on the page only: it must not turn API URLs into bearer links.
    guarded.cookies.clear()
    assert_error(await guarded.get("/api/bots", params={"token": TOKEN}), 401, "unauthorized")


async def test_without_a_token_everything_is_open(client: httpx.AsyncClient) -> None:
    for path in ("/", "/api/bots", "/metrics"):
        assert (await client.get(path)).status_code == 200


# -- JSON-only API bodies (no text/plain CSRF) --------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_api_posts_with_a_body_must_be_json(client: httpx.AsyncClient, gate: Gate,
                                                  content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    refused = await client.post("/api/bots", content=json.dumps(BOT), headers=headers)
    assert_error(refused, 415, "unsupported_media_type")
    assert_error(await client.get("/api/bots/pay"), 404, "unknown_bot")  # nothing was registered
    assert (await client.post("/api/bots", content=json.dumps(BOT),
                              headers={"Content-Type": "application/json; charset=utf-8"})).status_code == 201
    started = await client.post("/api/bots/pay/conversations", content=b'{"variables": {}}', headers=headers)
    assert_error(started, 415, "unsupported_media_type")
    assert await gate.open_wait_count() == 0
    assert (await client.post("/api/bots/pay/conversations")).status_code == 201  # no body: no type needed


# -- values that could not be stored or answered ----------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"variables": {"name": "\\ud800"}}',
    b'{"variables": {"\\udfff": 1}}',
    b'{"variables": {"deep": ' + b"[" * 64 + b"]" * 64 + b"}}",
])
async def test_start_refuses_variables_that_cannot_be_stored(client: httpx.AsyncClient, gate: Gate,
                                                             body: bytes) -> None:
    await gate.add_bot(webhook_bot(timeout_s=30))
    response = await client.post("/api/bots/pay/conversations", content=body,
                                 headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_payload")
    assert await gate.open_wait_count() == 0
    ok = b'{"variables": {"deep": ' + b"[" * 62 + b"]" * 62 + b', "name": "\\u00e9"}}'
    started = await client.post("/api/bots/pay/conversations", content=ok, headers={"Content-Type": "application/json"})
    assert started.status_code == 201 and started.json()["variables"]["name"] == "é"


async def test_a_bot_with_a_lone_surrogate_is_refused(client: httpx.AsyncClient) -> None:
    bot = json.dumps(BOT).replace('"paid"', '"\\ud800"')
    assert_error(await client.post("/api/bots", content=bot, headers={"Content-Type": "application/json"}),
                 400, "invalid_payload")
    assert_error(await client.get("/api/bots/pay"), 404, "unknown_bot")


# -- signatures with absurd timestamps -------------------------------------------------------


@pytest.mark.parametrize("digits", [400, 5000])
async def test_a_huge_signature_timestamp_is_a_401_not_a_500(client: httpx.AsyncClient, gate: Gate,
                                                             digits: int) -> None:
    await gate.add_bot(webhook_bot(timeout_s=30, secret="whsec_x"))
    key = (await client.post("/api/bots/pay/conversations")).json()["conversation_key"]
    header = f"t={'9' * digits},v1={'a' * 64}"
    response = await client.post("/webhooks/pay/wait", json={"conversation_key": key},
                                 headers={HEADER: header})
    assert_error(response, 401, "invalid_signature")
    assert (await client.get(f"/c/{key}")).json()["status"] == "waiting"


# -- raw ASGI: framing and slow bodies, in virtual time ---------------------------------------


class Exchange:
    """One request driven by hand through the ASGI app: the body arrives when the test says."""

    def __init__(self, app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                      "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                      "root_path": "", "headers": [(b"host", b"gate.test"), *headers],
                      "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        self.to_app, self._from_test = trio.open_memory_channel[dict[str, Any]](10)
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.finished = trio.Event()

    async def _receive(self) -> dict[str, Any]:
        try:
            return await self._from_test.receive()
        except trio.EndOfChannel:
            await trio.sleep_forever()
            raise AssertionError("unreachable") from None

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def run(self) -> None:
        await self.app(self.scope, self._receive, self._send)
        self.finished.set()

    async def chunk(self, data: bytes, *, more: bool) -> None:
        await self.to_app.send({"type": "http.request", "body": data, "more_body": more})

    def error(self) -> str:
        return json.loads(self.body)["error"]


def json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


async def test_content_length_with_transfer_encoding_is_refused_and_closes(gate: Gate) -> None:
    await gate.add_bot(webhook_bot(timeout_s=30))
    app = create_app(gate)
    exchange = Exchange(app, "POST", "/api/bots/pay/conversations",
                        [*json_headers(2), (b"transfer-encoding", b"chunked")])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange.run)
        await exchange.chunk(b"{}", more=False)
        await exchange.finished.wait()
    assert (exchange.status, exchange.error()) == (400, "invalid_request")
    assert exchange.headers[b"connection"] == b"close"
    assert await gate.open_wait_count() == 0


async def test_a_body_that_stalls_gets_408_and_closes_and_changes_nothing(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=300))
    app = create_app(gate, body_timeout=30)
    body = b'{"variables": {"a": 1}}'
    exchange = Exchange(app, "POST", "/api/bots/pay/conversations", json_headers(len(body)))
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(exchange.run)
        await exchange.chunk(body[:5], more=True)
        await trio.sleep(29)
        await exchange.chunk(body[5:10], more=True)  # trickling does not reset the deadline
        await exchange.finished.wait()
        assert trio.current_time() - started == pytest.approx(30)
    assert (exchange.status, exchange.error()) == (408, "body_timeout")
    assert exchange.headers[b"connection"] == b"close"
    assert await gate.open_wait_count() == 0


async def test_a_slow_body_within_the_timeout_is_served(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=300))
    app = create_app(gate, body_timeout=30)
    body = b'{"variables": {"a": 1}}'
    exchange = Exchange(app, "POST", "/api/bots/pay/conversations", json_headers(len(body)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange.run)
        await exchange.chunk(body[:5], more=True)
        await trio.sleep(29.9)
        await exchange.chunk(body[5:], more=False)
        await trio.sleep(1)
        assert exchange.status == 201
        nursery.cancel_scope.cancel()  # the app now waits for the client to disconnect
    assert await gate.open_wait_count() == 1


async def test_past_the_cap_the_longest_stalled_body_is_shed(gate: Gate, autojump_clock) -> None:
    from harness.web.http_guard import HttpGuard

    await gate.add_bot(webhook_bot(timeout_s=300))
    app = create_app(gate)
    guard = app.asgi_app
    assert isinstance(guard, HttpGuard)
    guard.max_pending_bodies = 2
    exchanges = [Exchange(app, "POST", "/api/bots/pay/conversations", json_headers(100)) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for exchange in exchanges:
            nursery.start_soon(exchange.run)
            await exchange.chunk(b"{", more=True)
            await trio.sleep(1)
        await exchanges[0].finished.wait()
        assert trio.current_time() < 5  # shed at once, long before the 30 s body timeout
        assert (exchanges[0].status, exchanges[0].error()) == (408, "body_timeout")
        assert [e.status for e in exchanges[1:]] == [None, None]
        nursery.cancel_scope.cancel()
    assert guard.shed_count == 1


def test_every_guard_code_has_a_status() -> None:
    assert {STATUS_BY_CODE[code] for code in ("invalid_request", "unauthorized", "body_timeout")} == {400, 401, 408}


async def test_a_block_type_that_is_a_table_is_an_invalid_bot_not_a_500(client: httpx.AsyncClient) -> None:
    """Found by Schemathesis: ``"type": {}`` made the bot validator fail with TypeError."""
    for bad_type in ({}, [], ["message"]):
        bot = {"id": "p", "start": "x", "blocks": {"x": {"type": bad_type}}}
        response = await client.post("/api/bots", json=bot)
        assert_error(response, 422, "invalid_bot")
        assert response.json()["problems"][0]["field"] == "type"
