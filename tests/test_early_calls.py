"""Early calls (SPEC §14.1) over HTTP, on every store: held, used, expired, already held."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from harness.core.bots import InvalidBot, parse_bot
from harness.core.gate import Gate
from harness.core.signing import HEADER, sign
from harness.web.server import create_app

from .conftest import PUBLIC_URL, make_store, start

SECRET = "whsec_early"


def two_event_bot(*, early_s: float = 20, secret: str = "", bot_id: str = "two") -> dict[str, Any]:
    """Authorise, then capture: the capture may come first and is held for ``early_s``."""
    return {"id": bot_id, "start": "auth", "blocks": {
        "auth": {"type": "webhook", "timeout_s": 60, "success": "capture", "failure": "failed",
                 "mappings": {"auth_id": "id"}},
        "capture": {"type": "webhook", "timeout_s": 30, "early_s": early_s, "secret": secret,
                    "success": "done", "failure": "failed", "mappings": {"amount": "data.amount"}},
        "done": {"type": "message", "text": "captured {{amount}}"},
        "failed": {"type": "message", "text": "failed"},
    }}


@pytest.fixture
async def two(gate: Gate) -> Gate:
    await gate.create_bot(two_event_bot())
    return gate


async def read(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    return (await client.get(f"/api/conversations/{key}")).json()


async def test_an_early_call_is_held_and_resolves_the_wait_when_it_opens(
        client: httpx.AsyncClient, two: Gate, autojump_clock: object) -> None:
    key = (await start(client, "two"))["conversation_key"]
    early = await client.post("/webhooks/two/capture", json={"conversation_key": key, "data": {"amount": 42}})
    assert (early.status_code, early.json()) == (202, {"status": "held", "conversation_key": key, "expires_in_s": 20})
    conversation = await read(client, key)
    assert conversation["status"] == "waiting" and "amount" not in conversation["variables"]
    assert [(c["block"], c["outcome"]) for c in conversation["early_calls"]] == [("capture", "pending")]
    assert (await client.post("/webhooks/two/capture", json={"conversation_key": key})).json()["error"] == "already_held"

    await trio.sleep(5)
    assert (await client.post("/webhooks/two/auth", json={"conversation_key": key, "id": "a1"})).status_code == 200
    conversation = await read(client, key)
    assert conversation["status"] == "completed"
    assert [(w["block"], w["outcome"], w["reason"], w["waited_s"]) for w in conversation["waits"]] == [
        ("auth", "success", "received", 5.0), ("capture", "success", "received_early", 0.0)]
    assert conversation["variables"]["amount"] == 42 and conversation["transcript"][-1]["text"] == "captured 42"
    assert [c["outcome"] for c in conversation["early_calls"]] == ["used"]
    # The wait is resolved: a call now is an ordinary duplicate.
    assert (await client.post("/webhooks/two/capture", json={"conversation_key": key})).status_code == 409


async def test_a_held_call_expires_after_early_s_and_another_may_be_held(
        client: httpx.AsyncClient, two: Gate, autojump_clock: object) -> None:
    key = (await start(client, "two"))["conversation_key"]
    assert (await client.post("/webhooks/two/capture", json={"conversation_key": key})).status_code == 202
    await trio.sleep(20)
    assert [c["outcome"] for c in (await read(client, key))["early_calls"]] == ["expired"]
    again = await client.post("/webhooks/two/capture", json={"conversation_key": key, "data": {"amount": 7}})
    assert again.status_code == 202
    await trio.sleep(19)
    assert (await client.post("/webhooks/two/auth", json={"conversation_key": key})).status_code == 200
    conversation = await read(client, key)
    assert [c["outcome"] for c in conversation["early_calls"]] == ["expired", "used"]
    assert conversation["variables"]["amount"] == 7


async def test_a_wait_that_opens_after_early_s_waits_as_usual(
        client: httpx.AsyncClient, two: Gate, autojump_clock: object) -> None:
    key = (await start(client, "two"))["conversation_key"]
    assert (await client.post("/webhooks/two/capture", json={"conversation_key": key})).status_code == 202
    await trio.sleep(20.5)
    assert (await client.post("/webhooks/two/auth", json={"conversation_key": key})).status_code == 200
    conversation = await read(client, key)
    assert conversation["status"] == "waiting" and conversation["waits"][-1]["outcome"] is None
    assert [c["outcome"] for c in conversation["early_calls"]] == ["expired"]


async def test_a_held_call_expires_when_the_conversation_finishes_first(
        client: httpx.AsyncClient, two: Gate, autojump_clock: object) -> None:
    key = (await start(client, "two"))["conversation_key"]
    assert (await client.post("/webhooks/two/capture", json={"conversation_key": key})).status_code == 202
    await trio.sleep(60)  # auth times out: the flow ends without reaching capture
    conversation = await read(client, key)
    assert conversation["status"] == "completed" and conversation["transcript"][-1]["text"] == "failed"
    assert [c["outcome"] for c in conversation["early_calls"]] == ["expired"]
    late = await client.post("/webhooks/two/capture", json={"conversation_key": key})
    assert late.json()["error"] == "not_waiting"  # finished: nothing is held any more


async def test_early_calls_are_refused_where_early_s_is_zero_and_for_blocks_already_waited(
        client: httpx.AsyncClient, gate: Gate, autojump_clock: object) -> None:
    await gate.create_bot(two_event_bot(early_s=0))
    key = (await start(client, "two"))["conversation_key"]
    refused = await client.post("/webhooks/two/capture", json={"conversation_key": key})
    assert (refused.status_code, refused.json()["error"]) == (409, "not_waiting")
    conversation = await read(client, key)
    assert conversation["early_calls"] == [] and conversation["late_calls_total"] == 0


async def test_every_check_applies_before_a_call_is_held(gate: Gate, autojump_clock: object) -> None:
    await gate.create_bot(two_event_bot(secret=SECRET))
    app = create_app(gate, max_body=4096)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as client:
        key = (await start(client, "two"))["conversation_key"]
        body = json.dumps({"conversation_key": key}).encode()
        unsigned = await client.post("/webhooks/two/capture", content=body, headers={"Content-Type": "application/json"})
        assert unsigned.status_code == 401
        no_key = json.dumps({"data": 1}).encode()
        signed = {"Content-Type": "application/json", HEADER: sign(no_key, SECRET, unix_time=gate.clock.signing_time())}
        assert (await client.post("/webhooks/two/capture", content=no_key, headers=signed)).status_code == 422
        headers = {"Content-Type": "application/json", HEADER: sign(body, SECRET, unix_time=gate.clock.signing_time())}
        assert (await client.post("/webhooks/two/capture", content=body, headers=headers)).status_code == 202
        assert [c["outcome"] for c in (await read(client, key))["early_calls"]] == ["pending"]


@pytest.mark.parametrize("value", [-1, 301, "5", True, None, float("nan")])
def test_early_s_must_be_a_number_from_0_to_300(value: Any) -> None:
    document = two_event_bot()
    document["blocks"]["capture"]["early_s"] = value
    with pytest.raises(InvalidBot) as invalid:
        parse_bot(document)
    assert [(p.block, p.field) for p in invalid.value.problems] == [("capture", "early_s")]


async def test_a_held_call_survives_a_restart_on_sqlite(tmp_path: Path, autojump_clock: object) -> None:
    async def gate_on_file() -> Gate:
        return Gate(store=make_store("sqlite", tmp_path), public_url=PUBLIC_URL)

    first = await gate_on_file()
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await first.create_bot(two_event_bot())
        key = (await first.start_conversation("two")).key
        held = await first.deliver("two", "capture", {"conversation_key": key, "data": {"amount": 3}})
        assert held.held is not None
        nursery.cancel_scope.cancel()
    second = await gate_on_file()
    second.clock = first.clock  # the same wall-clock mapping, as a restart one instant later would have
    second.store.bind(first.clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await trio.sleep(2)
        await second.deliver("two", "auth", {"conversation_key": key})
        conversation = await second.get_conversation(key)
        assert [w.reason for w in conversation.waits] == ["received", "received_early"]
        assert conversation.variables["amount"] == 3
        nursery.cancel_scope.cancel()
