"""The HTTP contract (SPEC §3–4) through the real Quart app, in-process, in virtual time."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from harness.core.gate import Gate
from harness.core.signing import HEADER, sign
from harness.web.server import create_app

from .conftest import start, webhook_bot

SECRET = "whsec_test"
URL = "/webhooks/pay/wait"


@pytest.fixture
async def pay(gate: Gate) -> Gate:
    await gate.add_bot(webhook_bot(timeout_s=30, amount="data.amount", sku="data.items[0].sku", tags="tag"))
    return gate


async def state(client: httpx.AsyncClient, key: str) -> dict:
    return (await client.get(f"/api/conversations/{key}")).json()


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_accepted_call_maps_and_continues(client: httpx.AsyncClient, pay: Gate) -> None:
    key = (await start(client))["conversation_key"]
    payload = {"conversation_key": key, "data": {"amount": 42.5, "items": [{"sku": "A1"}]}}
    response = await client.post(URL, json=payload)
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["conversation_key"]) == ("accepted", key)
    assert body["mapped"] == {"amount": 42.5, "sku": "A1"} and body["missing"] == ["tags"]
    conversation = await state(client, key)
    assert conversation["status"] == "completed"
    assert conversation["transcript"][-1] == {"block": "ok", "text": "paid 42.5"}
    assert conversation["waits"][0]["outcome"] == "success" and conversation["waits"][0]["reason"] == "received"


async def test_form_body_with_repeated_field(client: httpx.AsyncClient, pay: Gate) -> None:
    key = (await start(client))["conversation_key"]
    response = await client.post(URL, content=f"conversation_key={key}&tag=a&tag=b&data=x",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert response.json()["mapped"] == {"tags": ["a", "b"]}


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"{}", None, 415, "unsupported_media_type"),
        (b"{not json", "application/json", 400, "invalid_payload"),
        (b"[1, 2]", "application/json", 400, "invalid_payload"),
        (b'"text"', "application/json", 400, "invalid_payload"),
        (b"\xff\xfe", "application/json", 400, "invalid_payload"),
        (b'{"a": NaN}', "application/json", 400, "invalid_payload"),
        (b'{"a": 1e999}', "application/json", 400, "invalid_payload"),
        (b"[" * 30_000 + b"]" * 30_000, "application/json", 400, "invalid_payload"),
        (b"{}", "application/json", 422, "missing_conversation_key"),
        (b'{"conversation_key": ""}', "application/json", 422, "missing_conversation_key"),
        (b'{"conversation_key": 12}', "application/json", 422, "missing_conversation_key"),
        (b'{"conversation_key": ["a"]}', "application/json", 422, "missing_conversation_key"),
        (b'{"conversation_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', "application/json", 404, "unknown_conversation"),
    ],
    ids=lambda value: value[:24].decode(errors="replace") if isinstance(value, bytes) else None,
)
async def test_refusals_before_the_conversation(client, pay, content, content_type, status, code) -> None:
    key = (await start(client))["conversation_key"]
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(URL, content=content, headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == code and response.json()["detail"]
    assert (await state(client, key))["status"] == "waiting"


async def test_unknown_webhook_comes_first(client: httpx.AsyncClient, pay: Gate) -> None:
    for url in ("/webhooks/ghost/wait", "/webhooks/pay/ok", "/webhooks/pay/ghost"):
        response = await client.post(url, content=b"x" * 10_000_000, headers={"Content-Type": "text/plain"})
        assert (response.status_code, response.json()["error"]) == (404, "unknown_webhook")


async def test_body_over_the_limit_is_413_before_media_type(client: httpx.AsyncClient, pay: Gate) -> None:
    response = await client.post(URL, content=b"x" * (64 * 1024 + 1), headers={"Content-Type": "text/plain"})
    assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")
    assert response.headers["connection"] == "close"


async def test_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient, pay: Gate) -> None:
    async def chunks():
        for _ in range(100):
            yield b" " * 1024

    response = await client.post(URL, content=chunks(), headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")


async def test_body_at_the_limit_is_read(client: httpx.AsyncClient, pay: Gate) -> None:
    key = (await start(client))["conversation_key"]
    body = json.dumps({"conversation_key": key}).encode()
    body += b" " * (64 * 1024 - len(body))
    response = await client.post(URL, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200


async def test_late_call_is_410_and_changes_nothing(client, pay, autojump_clock) -> None:
    key = (await start(client))["conversation_key"]
    await trio.sleep(30)  # exactly at the deadline
    response = await client.post(URL, json={"conversation_key": key, "data": {"amount": 1}})
    assert (response.status_code, response.json()["error"]) == (410, "wait_expired")
    await trio.sleep(1)
    conversation = await state(client, key)
    assert "amount" not in conversation["variables"]
    assert conversation["waits"][0]["reason"] == "timeout" and conversation["waits"][0]["waited_s"] == 30.0
    assert conversation["transcript"][-1]["text"] == "too late"


async def test_just_before_deadline_is_200(client, pay, autojump_clock) -> None:
    key = (await start(client))["conversation_key"]
    await trio.sleep(30 - 1e-6)
    response = await client.post(URL, json={"conversation_key": key})
    assert response.status_code == 200
    assert response.json()["waited_s"] == pytest.approx(30 - 1e-6)


async def test_duplicate_call_is_409(client: httpx.AsyncClient, pay: Gate) -> None:
    key = (await start(client))["conversation_key"]
    assert (await client.post(URL, json={"conversation_key": key})).status_code == 200
    response = await client.post(URL, json={"conversation_key": key})
    assert (response.status_code, response.json()["error"]) == (409, "not_waiting")


@pytest.mark.parametrize("callers", [50, 100])
async def test_exactly_one_of_many_concurrent_calls_wins(client: httpx.AsyncClient, pay: Gate, callers: int) -> None:
    key = (await start(client))["conversation_key"]
    statuses: list[int] = []

    async def call(amount: int) -> None:
        response = await client.post(URL, json={"conversation_key": key, "data": {"amount": amount}})
        statuses.append(response.status_code)

    async with trio.open_nursery() as nursery:
        for amount in range(callers):
            nursery.start_soon(call, amount)
    assert sorted(statuses) == [200] + [409] * (callers - 1)
    conversation = await state(client, key)
    assert len(conversation["waits"]) == 1 and conversation["transcript"][-1]["text"].startswith("paid ")


async def test_not_waiting_when_conversation_never_reached_block(client, gate: Gate) -> None:
    await gate.add_bot(webhook_bot(timeout_s=30))
    from harness.core.bots import parse_bot

    await gate.add_bot(parse_bot({"id": "two", "start": "first", "blocks": {
        "first": {"type": "webhook", "timeout_s": 30, "success": "second", "failure": "second"},
        "second": {"type": "webhook", "timeout_s": 30, "success": "end", "failure": "end"},
        "end": {"type": "end"},
    }}))
    key = (await start(client, bot="two"))["conversation_key"]
    response = await client.post("/webhooks/two/second", json={"conversation_key": key})
    assert (response.status_code, response.json()["error"]) == (409, "not_waiting")
    assert (await client.post("/webhooks/two/first", json={"conversation_key": key})).status_code == 200
    assert (await client.post("/webhooks/two/second", json={"conversation_key": key})).status_code == 200


# -- signatures ---------------------------------------------------------------------------------


@pytest.fixture
async def signed(gate: Gate) -> Gate:
    await gate.add_bot(webhook_bot(timeout_s=30, secret=SECRET))
    return gate


async def signed_call(client, gate: Gate, key: str, header_for) -> httpx.Response:
    body = json.dumps({"conversation_key": key}).encode()
    now = gate.clock.unix(trio.current_time())
    headers = {"Content-Type": "application/json"}
    header = header_for(body, now)
    if header is not None:
        headers[HEADER] = header
    return await client.post(URL, content=body, headers=headers)


@pytest.mark.parametrize(
    ("name", "header_for", "status"),
    [
        ("valid", lambda body, now: sign(body, SECRET, unix_time=now), 200),
        ("rotated", lambda body, now: sign(body, "old_secret", unix_time=now, extra_secrets=(SECRET,)), 200),
        ("skewed_but_fresh", lambda body, now: sign(body, SECRET, unix_time=now - 299), 200),
        ("missing", lambda body, now: None, 401),
        ("wrong", lambda body, now: sign(body, "not_the_secret", unix_time=now), 401),
        ("other_body", lambda body, now: sign(body + b" ", SECRET, unix_time=now), 401),
        ("stale", lambda body, now: sign(body, SECRET, unix_time=now - 301), 401),
        ("future", lambda body, now: sign(body, SECRET, unix_time=now + 301), 401),
        ("malformed", lambda body, now: "v1=abc", 401),
        ("garbage", lambda body, now: "t=abc,v1=" + "0" * 64, 401),
    ],
)
async def test_signatures(client, signed, name, header_for, status) -> None:
    key = (await start(client))["conversation_key"]
    response = await signed_call(client, signed, key, header_for)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.json()["error"] == "invalid_signature"
        assert (await state(client, key))["status"] == "waiting"


async def test_signature_is_checked_before_the_key(client, signed) -> None:
    response = await client.post(URL, json={})
    assert (response.status_code, response.json()["error"]) == (401, "invalid_signature")


# -- the management API ---------------------------------------------------------------------------


async def test_bot_api(client: httpx.AsyncClient, payment_bot) -> None:
    created = await client.post("/api/bots", json=payment_bot.to_dict())
    assert created.status_code == 201
    assert created.json()["webhooks"] == {"wait_payment": "http://gate.test/webhooks/payment/wait_payment"}
    assert (await client.post("/api/bots", json=payment_bot.to_dict())).json()["error"] == "bot_exists"
    fetched = await client.get("/api/bots/payment")
    assert fetched.status_code == 200 and fetched.json() == created.json()
    missing = await client.get("/api/bots/ghost")
    assert (missing.status_code, missing.json()["error"]) == (404, "unknown_bot")


async def test_invalid_bot_lists_problems(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/bots", json={"id": "x", "start": "a", "blocks": {"a": {"type": "webhook"}}})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_bot"
    assert {"block": "a", "field": "timeout_s", "reason": "required"} in body["problems"]
    assert {"block": "a", "field": "success", "reason": "missing edge"} in body["problems"]


async def test_conversation_api(client: httpx.AsyncClient, pay: Gate) -> None:
    conversation = await start(client, price=10)
    key = conversation["conversation_key"]
    assert conversation["conversation_url"] == f"http://gate.test/c/{key}"
    assert conversation["variables"] == {"price": 10, "conversation_key": key, "Conversation URL": f"http://gate.test/c/{key}"}
    assert conversation["status"] == "waiting" and conversation["block"] == "wait"
    wait = conversation["waits"][0]
    assert wait["opened_at"].endswith("Z") and len(wait["opened_at"]) == len("2026-11-24T21:40:00.123456Z")
    assert (await client.post("/api/bots/ghost/conversations")).json()["error"] == "unknown_bot"
    unknown = await client.get("/api/conversations/nope")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_conversation")
    bad = await client.post("/api/bots/pay/conversations", json={"variables": [1]})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_payload")


async def test_keys_are_long_and_urlsafe(client: httpx.AsyncClient, pay: Gate) -> None:
    keys = {(await start(client))["conversation_key"] for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(key) >= 22 and set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


async def test_framework_errors_are_json(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/nowhere"), await client.delete("/healthz"), await client.get(URL)):
        assert response.headers["content-type"].startswith("application/json")
        assert set(response.json()) == {"error", "detail"}
    assert (await client.get("/nowhere")).json()["error"] == "not_found"
    assert (await client.delete("/healthz")).json()["error"] == "method_not_allowed"


async def test_metrics(client: httpx.AsyncClient, pay: Gate, autojump_clock) -> None:
    key = (await start(client))["conversation_key"]
    await start(client)
    await client.post(URL, json={"conversation_key": key})
    await trio.sleep(31)
    text = (await client.get("/metrics")).text
    assert 'harness_waits_resolved_total{outcome="success",reason="received"} 1' in text
    assert 'harness_waits_resolved_total{outcome="failure",reason="timeout"} 1' in text
    assert 'harness_webhook_calls_total{status="200"} 1' in text
    assert "harness_waits_open 0" in text


async def test_the_api_never_shows_a_secret(client: httpx.AsyncClient, signed: Gate) -> None:
    for response in (await client.get("/api/bots/pay"), await client.get("/api/bots")):
        assert SECRET not in response.text and "********" in response.text


async def test_an_unexpected_error_is_a_json_500_and_the_server_goes_on(client, pay: Gate, monkeypatch) -> None:
    key = (await start(client))["conversation_key"]

    def broken(*args, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(pay, "deliver", broken)
    response = await client.post(URL, json={"conversation_key": key})
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "unexpected server error"}
    monkeypatch.undo()
    assert (await client.post(URL, json={"conversation_key": key})).status_code == 200


async def test_quarts_own_test_client_works_too(gate: Gate) -> None:
    await gate.add_bot(webhook_bot())
    test_client = create_app(gate).test_client()
    created = await test_client.post("/api/bots/pay/conversations", json={})
    key = (await created.get_json())["conversation_key"]
    response = await test_client.post(URL, json={"conversation_key": key, "data": {"amount": 3}})
    assert response.status_code == 200 and (await response.get_json())["mapped"] == {"amount": 3}
