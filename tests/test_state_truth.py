"""Answers come from the real state (SPEC §17.5, §17.8, §15.5): no false 409 from a cache, capped
late calls, signatures judged on the wall clock at each call, seeded keys in process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from harness.core.conversations import WallClock
from harness.core.gate import Gate
from harness.core.signing import HEADER, sign
from harness.runner.drivers import in_core, in_process
from harness.runner.engine import SeededKeys
from harness.store import SqliteStore
from harness.web.server import create_app

from .conftest import PUBLIC_URL, start, webhook_bot


def scripted_bot() -> dict:
    """A wait whose success runs scripts (off the event loop in real time) before it ends."""
    return {"id": "js", "start": "wait", "blocks": {
        "wait": {"type": "webhook", "timeout_s": 120, "success": "work", "failure": "late"},
        "work": {"type": "javascript", "code": "let s = 0; for (let i = 0; i < 20000; i++) { s += i; }"
                                               " wn.setConversationVariable('sum', s);", "next": "more"},
        "more": {"type": "javascript", "code": "wn.setConversationVariable('done', true);", "next": "ok"},
        "ok": {"type": "message", "text": "ok"},
        "late": {"type": "message", "text": "late"},
    }}


async def test_every_first_call_is_200_while_the_cache_is_evicted_under_it(tmp_path: Path) -> None:
    """Real time, SQLite with a 2-conversation cache, dashboard polls evicting while flows run scripts."""
    gate = Gate(store=SqliteStore(tmp_path / "gate.db", cache_size=2), public_url=PUBLIC_URL)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.create_bot(scripted_bot())
        transport = httpx.ASGITransport(app=create_app(gate))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL, timeout=60) as client:
            keys = [(await start(client, "js"))["conversation_key"] for _ in range(40)]
            statuses: list[int] = []
            polling = True

            async def poll() -> None:
                while polling:
                    assert (await client.get("/api/dashboard")).status_code == 200
                    for key in keys[::7]:
                        await client.get(f"/api/conversations/{key}")

            async def call(key: str) -> None:
                statuses.append((await client.post("/webhooks/js/wait", json={"conversation_key": key})).status_code)

            async with trio.open_nursery() as calls:
                calls.start_soon(poll)
                async with trio.open_nursery() as first_calls:
                    for key in keys:
                        first_calls.start_soon(call, key)
                polling = False
            assert statuses == [200] * 40
            for key in keys:
                conversation = (await client.get(f"/api/conversations/{key}")).json()
                assert conversation["status"] == "completed" and conversation["variables"]["done"] is True
            # The duplicates now meet the real state: resolved, 409.
            assert (await client.post("/webhooks/js/wait", json={"conversation_key": keys[0]})).status_code == 409
        nursery.cancel_scope.cancel()


async def test_late_calls_keep_the_first_100_and_count_every_one(client: httpx.AsyncClient, gate: Gate,
                                                                 autojump_clock: object) -> None:
    await gate.add_bot(webhook_bot(timeout_s=10))
    key = (await start(client))["conversation_key"]
    await trio.sleep(11)
    for _ in range(250):
        assert (await client.post("/webhooks/pay/wait", json={"conversation_key": key})).status_code == 410
    answer = await client.get(f"/api/conversations/{key}")
    conversation = answer.json()
    assert len(conversation["late_calls"]) == 100 and conversation["late_calls_total"] == 250
    assert len(answer.content) < 64 * 1024
    fresh = (await start(client))["conversation_key"]
    assert (await client.get(f"/api/conversations/{fresh}")).json()["late_calls_total"] == 0


async def test_signature_freshness_follows_a_stepped_wall_clock(tmp_path: Path) -> None:
    """Real time: the wall clock is read at each call, so a step counts at once."""
    wall = [1_800_000_000.0]
    gate = Gate(store=SqliteStore(tmp_path / "gate.db"), public_url=PUBLIC_URL, clock=WallClock(lambda: wall[0]))
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.add_bot(webhook_bot(timeout_s=120, secret="whsec_step"))
        transport = httpx.ASGITransport(app=create_app(gate))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            keys = [(await start(client))["conversation_key"] for _ in range(2)]
            wall[0] += 3600  # the system clock is stepped an hour forward

            def signed(key: str, at: float) -> dict:
                body = json.dumps({"conversation_key": key}).encode()
                return {"content": body, "headers": {"Content-Type": "application/json",
                                                     HEADER: sign(body, "whsec_step", unix_time=at)}}

            stale = await client.post("/webhooks/pay/wait", **signed(keys[0], 1_800_000_000.0))
            assert stale.status_code == 401
            fresh = await client.post("/webhooks/pay/wait", **signed(keys[1], wall[0]))
            assert fresh.status_code == 200, fresh.text
        nursery.cancel_scope.cancel()


async def test_in_process_runs_draw_the_same_keys_from_the_same_seed(autojump_clock: object) -> None:
    async def keys(driver_factory: object, seed: int) -> list[str]:
        seeded = SeededKeys(seed, "demo")
        async with driver_factory(new_key=seeded) as driver:  # type: ignore[operator]
            assert driver.gate is not None
            await driver.gate.add_bot(webhook_bot())
            started = []
            for index in range(3):
                seeded.next_for(0, index)  # as the engine announces each start
                started.append((await driver.start("pay"))[0])
            return started

    for factory in (in_process, in_core):
        first, again, other = await keys(factory, 7), await keys(factory, 7), await keys(factory, 8)
        assert first == again and first != other
        assert all(len(key) == 32 and key.replace("-", "").replace("_", "").isalnum() for key in first)
