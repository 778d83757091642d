"""Real third parties (SPEC §8.1, §8.3): the key where the processor puts it, and late calls.

A Stripe ``checkout.session.completed`` event carries the key in
``data.object.metadata.conversation_key``; a PayPal IPN-style form carries it in ``custom``.
A call after the deadline is answered 410 and recorded in the conversation's ``late_calls`` —
the customers who paid but were told the flow failed — and changes nothing else. Every test runs
on both stores (the ``gate`` fixture).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
import trio
import trio.testing

from harness.core.bots import load_bot
from harness.core.conversations import WallClock
from harness.core.errors import Refused
from harness.core.gate import Gate
from harness.store import SqliteStore
from harness.web.server import create_app

from .conftest import BOTS, PUBLIC_URL, start, webhook_bot
from .events import CHECKOUT_MAPPINGS, STRIPE_KEY_PATH, STRIPE_SECRET, gated_bot, ipn_form, stripe_body

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
async def shops(gate: Gate) -> Gate:
    await gate.add_bot(gated_bot("checkout", signature="stripe", secret=STRIPE_SECRET, key_path=STRIPE_KEY_PATH,
                           mappings=CHECKOUT_MAPPINGS, timeout_s=120))
    await gate.add_bot(gated_bot("ipn", key_path="custom", timeout_s=120,
                           mappings={"gross": "mc_gross", "items": "item_number", "status": "payment_status"}))
    return gate


def stripe_headers(gate: Gate, body: bytes, secret: str = STRIPE_SECRET) -> dict[str, str]:
    """``Stripe-Signature`` as the stripe library computes it, at the gate's (virtual) time."""
    unix = int(gate.clock.unix(trio.current_time()))
    return {**JSON, "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body.decode(), secret,
                                                                                          timestamp=unix)}


async def conversation(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    response = await client.get(f"/api/conversations/{key}")
    assert response.status_code == 200
    return response.json()


async def late_calls_metric(client: httpx.AsyncClient) -> int:
    text = (await client.get("/metrics")).text
    match = re.search(r"^harness_late_calls_total (\d+)$", text, re.MULTILINE)
    assert match, text
    return int(match[1])


def without_late_calls(document: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in document.items() if name != "late_calls"}


# -- key_path ----------------------------------------------------------------------------------


async def test_a_stripe_checkout_event_resolves_the_wait_and_maps_its_fields(client, shops, autojump_clock) -> None:
    key = (await start(client, bot="checkout"))["conversation_key"]
    await trio.sleep(20)
    body = stripe_body(key, order="A-1001")
    response = await client.post("/webhooks/checkout/wait", content=body, headers=stripe_headers(shops, body))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["conversation_key"] == key
    assert answer["mapped"] == {"amount_total": 4200, "currency": "eur", "payment_intent": "pi_3QJ7dKFX0aXhx3YQ1AbCdEfG",
                                "email": "jenny.rosen@example.com", "payment_status": "paid"}
    assert answer["missing"] == []
    state = await conversation(client, key)
    assert state["status"] == "completed"
    assert state["variables"]["amount_total"] == 4200 and state["variables"]["email"] == "jenny.rosen@example.com"
    assert state["transcript"][-1] == {"block": "paid", "text": "paid 4200"}
    assert (state["waits"][0]["reason"], state["waits"][0]["waited_s"]) == ("received", 20.0)


@pytest.mark.parametrize("metadata", [
    {},
    {"conversation_key": ""},
    {"conversation_key": 12345},
    {"conversation_key": None},
    {"conversation_key": ["k"]},
    {"conversation_key": {"value": "k"}},
    {"conversation_key": True},
    {"other_key": "k"},
], ids=["absent", "empty", "number", "null", "list", "object", "boolean", "other field"])
async def test_no_string_key_at_the_path_is_422(client, shops, metadata) -> None:
    key = (await start(client, bot="checkout"))["conversation_key"]
    metadata = {name: key if value == "k" else value for name, value in metadata.items()}
    body = stripe_body(None, **metadata)
    response = await client.post("/webhooks/checkout/wait", content=body, headers=stripe_headers(shops, body))
    assert (response.status_code, response.json()["error"]) == (422, "missing_conversation_key")
    assert STRIPE_KEY_PATH in response.json()["detail"]
    state = await conversation(client, key)
    assert state["status"] == "waiting" and "amount_total" not in state["variables"]


async def test_the_default_place_of_the_key_no_longer_counts(client, shops) -> None:
    key = (await start(client, bot="checkout"))["conversation_key"]
    document = json.loads(stripe_body(None))
    document["conversation_key"] = key  # top level, where a block without key_path looks
    body = json.dumps(document).encode()
    response = await client.post("/webhooks/checkout/wait", content=body, headers=stripe_headers(shops, body))
    assert (response.status_code, response.json()["error"]) == (422, "missing_conversation_key")
    document["data"]["object"] = [document["data"]["object"]]  # a list where the path expects an object
    body = json.dumps(document).encode()
    response = await client.post("/webhooks/checkout/wait", content=body, headers=stripe_headers(shops, body))
    assert response.status_code == 422


async def test_a_paypal_ipn_form_with_the_key_in_custom(client, shops) -> None:
    key = (await start(client, bot="ipn"))["conversation_key"]
    response = await client.post("/webhooks/ipn/wait", content=ipn_form(key, item_number=["A1", "B2"]), headers=FORM)
    assert response.status_code == 200, response.text
    assert response.json()["mapped"] == {"gross": "19.99", "items": ["A1", "B2"], "status": "Completed"}
    assert (await conversation(client, key))["status"] == "completed"


@pytest.mark.parametrize("custom", [None, "", ["KEY", "KEY"]], ids=["absent", "empty", "repeated"])
async def test_a_form_without_one_string_in_custom_is_422(client, shops, custom) -> None:
    key = (await start(client, bot="ipn"))["conversation_key"]
    # A repeated field is a list, not a key.
    body = ipn_form([key, key]) if isinstance(custom, list) else ipn_form(custom)
    response = await client.post("/webhooks/ipn/wait", content=body, headers=FORM)
    assert (response.status_code, response.json()["error"]) == (422, "missing_conversation_key")
    assert (await conversation(client, key))["status"] == "waiting"


async def test_the_refusal_order_holds_with_a_key_path(client, shops, autojump_clock) -> None:
    key = (await start(client, bot="checkout"))["conversation_key"]
    good = stripe_body(key)
    no_key = stripe_body(None)
    unknown = stripe_body("A" * 32)

    async def post(body: bytes, headers: dict[str, str], url: str = "/webhooks/checkout/wait") -> tuple[int, str]:
        response = await client.post(url, content=body, headers=headers)
        return response.status_code, response.json().get("error", "")

    wrong = stripe_headers(shops, good, secret="whsec_someone_else")
    assert await post(good, {**wrong, "Content-Type": "text/plain"}, "/webhooks/checkout/paid") == (404, "unknown_webhook")
    assert await post(good, {**wrong, "Content-Type": "text/plain"}) == (415, "unsupported_media_type")
    assert await post(b"{not json", stripe_headers(shops, b"{not json")) == (400, "invalid_payload")
    assert await post(b"[]", stripe_headers(shops, b"[]")) == (400, "invalid_payload")
    assert await post(no_key, JSON) == (401, "invalid_signature")            # 401 before 422
    assert await post(unknown, wrong) == (401, "invalid_signature")          # 401 before 404
    assert await post(no_key, stripe_headers(shops, no_key)) == (422, "missing_conversation_key")
    assert await post(unknown, stripe_headers(shops, unknown)) == (404, "unknown_conversation")
    await trio.sleep(121)
    assert await post(good, wrong) == (401, "invalid_signature")             # 401 before 410: not a late call
    assert (await conversation(client, key))["late_calls"] == []
    assert await post(good, stripe_headers(shops, good)) == (410, "wait_expired")
    assert len((await conversation(client, key))["late_calls"]) == 1


# -- late calls ----------------------------------------------------------------------------------


@pytest.fixture
async def pay(gate: Gate) -> Gate:
    await gate.add_bot(webhook_bot(timeout_s=30))
    return gate


URL = "/webhooks/pay/wait"


async def test_late_calls_are_always_present_and_empty_without_one(client, pay, autojump_clock) -> None:
    started = await start(client)
    assert started["late_calls"] == []
    key = started["conversation_key"]
    assert (await conversation(client, key))["late_calls"] == []
    await trio.sleep(10)
    assert (await client.post(URL, json={"conversation_key": key})).status_code == 200
    assert (await conversation(client, key))["late_calls"] == []
    assert await late_calls_metric(client) == 0


async def test_a_late_call_is_410_recorded_counted_and_changes_nothing_else(client, pay, autojump_clock) -> None:
    key = (await start(client))["conversation_key"]
    await trio.sleep(35)  # the timer has fired: the conversation took its failure edge
    before = await conversation(client, key)
    assert before["waits"][0]["reason"] == "timeout" and before["late_calls"] == []
    response = await client.post(URL, json={"conversation_key": key, "data": {"amount": 99}})
    assert (response.status_code, response.json()["error"]) == (410, "wait_expired")

    after = await conversation(client, key)
    assert without_late_calls(after) == without_late_calls(before)  # status, variables, waits, transcript
    [late] = after["late_calls"]
    assert set(late) == {"block", "at", "after_deadline_s"}
    assert late["block"] == "wait" and late["after_deadline_s"] == pytest.approx(5.0)
    assert ISO.fullmatch(late["at"])
    deadline = datetime.fromisoformat(after["waits"][0]["deadline"].replace("Z", "+00:00"))
    at = datetime.fromisoformat(late["at"].replace("Z", "+00:00"))
    assert (at - deadline).total_seconds() == pytest.approx(5.0, abs=1e-5)
    assert await late_calls_metric(client) == 1

    await trio.sleep(60)  # the customer's processor retries: each retry is another late call
    assert (await client.post(URL, json={"conversation_key": key})).status_code == 410
    again = await conversation(client, key)
    assert [call["after_deadline_s"] for call in again["late_calls"]] == pytest.approx([5.0, 65.0])
    assert without_late_calls(again) == without_late_calls(before)
    assert await late_calls_metric(client) == 2
    metrics = (await client.get("/metrics")).text
    assert 'harness_waits_resolved_total{outcome="failure",reason="timeout"} 1' in metrics
    assert "success" not in metrics.split("harness_waits_resolved_total", 1)[1].split("# HELP", 1)[0]


async def test_a_call_at_the_deadline_before_the_timer_is_a_late_call(client, pay, autojump_clock) -> None:
    key = (await start(client))["conversation_key"]
    await trio.sleep(30)  # exactly the deadline; the timer may not have run yet
    assert (await client.post(URL, json={"conversation_key": key})).status_code == 410
    await trio.sleep(1)
    state = await conversation(client, key)
    assert state["late_calls"][0]["after_deadline_s"] == 0.0
    assert (state["waits"][0]["outcome"], state["waits"][0]["reason"], state["waits"][0]["waited_s"]) == (
        "failure", "timeout", 30.0)
    assert state["transcript"][-1]["text"] == "too late"


async def test_409_404_and_422_are_not_late_calls(client, pay, autojump_clock) -> None:
    paid = (await start(client))["conversation_key"]
    await trio.sleep(10)
    assert (await client.post(URL, json={"conversation_key": paid})).status_code == 200
    await trio.sleep(40)  # after the deadline of a wait that was resolved in time
    duplicate = await client.post(URL, json={"conversation_key": paid})
    assert (duplicate.status_code, duplicate.json()["error"]) == (409, "not_waiting")
    unknown = await client.post(URL, json={"conversation_key": "B" * 32})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_conversation")
    assert (await client.post(URL, json={})).status_code == 422
    assert (await conversation(client, paid))["late_calls"] == []
    assert await late_calls_metric(client) == 0


def run_virtual(function: Any, *args: Any) -> Any:
    return trio.run(function, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def test_late_calls_survive_a_reopen_of_the_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "gate.db"
    started = 1_764_000_000.0

    async def first_process() -> tuple[str, list[dict[str, Any]]]:
        gate = Gate(store=SqliteStore(database), clock=WallClock(lambda: started), public_url=PUBLIC_URL)
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await gate.add_bot(webhook_bot(timeout_s=30))
            key = (await gate.start_conversation("pay")).key
            await trio.sleep(42.5)
            with pytest.raises(Refused, match="wait_expired"):
                await gate.deliver("pay", "wait", {"conversation_key": key})
            late_calls = (await gate.get_conversation(key)).as_dict(gate.clock)["late_calls"]
            nursery.cancel_scope.cancel()
        return key, late_calls

    key, late_calls = run_virtual(first_process)
    assert late_calls == [{"block": "wait", "at": "2025-11-24T16:00:42.500000Z", "after_deadline_s": 12.5}]

    async def second_process() -> None:
        gate = Gate(store=SqliteStore(database), clock=WallClock(lambda: started + 100), public_url=PUBLIC_URL)
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            transport = httpx.ASGITransport(app=create_app(gate))
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
                assert (await conversation(client, key))["late_calls"] == late_calls
                assert (await client.post(URL, json={"conversation_key": key})).status_code == 410
                now = await conversation(client, key)
                assert now["late_calls"][0] == late_calls[0]
                assert now["late_calls"][1]["after_deadline_s"] == pytest.approx(70.0)
            nursery.cancel_scope.cancel()

    run_virtual(second_process)


# -- the shipped example bots, driven the way the real processors call them ------------------------


@pytest.fixture
async def shipped(gate: Gate) -> Gate:
    for name in ("stripe_checkout", "ipn_form"):
        await gate.add_bot(load_bot(BOTS / f"{name}.toml"))
    return gate


async def test_the_shipped_stripe_bot_takes_a_stripe_signed_checkout_event(client, shipped, autojump_clock) -> None:
    bot = shipped.get_bot("stripe_checkout")
    block = bot.blocks["wait_payment"]
    started = await start(client, bot="stripe_checkout")
    key = started["conversation_key"]
    assert started["transcript"][0]["text"].endswith(f"?conversation={key}")
    await trio.sleep(90)
    body = stripe_body(key)
    response = await client.post("/webhooks/stripe_checkout/wait_payment", content=body,
                                 headers=stripe_headers(shipped, body, secret=block.secret))
    assert response.status_code == 200, response.text
    state = await conversation(client, key)
    assert state["status"] == "completed"
    assert state["transcript"][-1]["text"] == "Thanks, we received 42.00 EUR. The receipt goes to jenny.rosen@example.com."
    unsigned = await client.post("/webhooks/stripe_checkout/wait_payment", content=body, headers=JSON)
    assert unsigned.status_code == 401


async def test_the_shipped_stripe_bot_tells_a_delayed_payment_apart(client, shipped) -> None:
    block = shipped.get_bot("stripe_checkout").blocks["wait_payment"]
    key = (await start(client, bot="stripe_checkout"))["conversation_key"]
    document = json.loads(stripe_body(key))
    document["data"]["object"]["payment_status"] = "unpaid"  # SEPA debit: completed, money not there yet
    body = json.dumps(document).encode()
    response = await client.post("/webhooks/stripe_checkout/wait_payment", content=body,
                                 headers=stripe_headers(shipped, body, secret=block.secret))
    assert response.status_code == 200
    assert "being processed" in (await conversation(client, key))["transcript"][-1]["text"]


async def test_the_shipped_ipn_bot_takes_a_form(client, shipped) -> None:
    key = (await start(client, bot="ipn_form"))["conversation_key"]
    response = await client.post("/webhooks/ipn_form/wait_payment", content=ipn_form(key, item_number=["A1", "B2"]),
                                 headers=FORM)
    assert response.status_code == 200, response.text
    assert response.json()["mapped"]["items"] == ["A1", "B2"]
    state = await conversation(client, key)
    assert state["transcript"][-1]["text"] == "Thanks, we received 19.99 EUR (transaction 61E67681CH3238416)."
