"""The SQLite store: restart recovery, exactly-once across processes, crash safety."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from harness.core.bots import load_bot
from harness.core.conversations import WallClock
from harness.core.errors import Refused
from harness.core.gate import Gate
from harness.store import SqliteStore
from harness.testing import ServerProcess

from .conftest import BOTS, quick_bot_folder, webhook_bot


def run_virtual(function, *args):
    return trio.run(function, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def test_restart_keeps_deadlines_expires_the_overdue_and_resolves_nothing_twice(tmp_path: Path) -> None:
    database = tmp_path / "gate.db"
    started = time.time()

    async def before_crash() -> dict[str, str]:
        gate = Gate(store=SqliteStore(database), clock=WallClock(lambda: started))
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await gate.add_bot(load_bot(BOTS / "payment.toml"))  # waits 120 s
            await gate.add_bot(webhook_bot(timeout_s=5, bot_id="quick"))
            keys = {name: (await gate.start_conversation(bot)).key
                    for name, bot in (("long", "payment"), ("short", "quick"), ("paid", "payment"))}
            await trio.sleep(2)
            await gate.deliver("payment", "wait_payment", {"conversation_key": keys["paid"], "data": {"amount": 9}})
            nursery.cancel_scope.cancel()  # the process "dies" 2 s after start; nothing else is written
        return keys

    keys = run_virtual(before_crash)

    async def after_restart() -> None:
        # 60 s later by the wall clock: 'short' (5 s) is overdue, 'long' (120 s) has 58 s left.
        gate = Gate(store=SqliteStore(database), clock=WallClock(lambda: started + 60))
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await trio.sleep(0)
            short = await gate.get_conversation(keys["short"])
            assert [(w.outcome, w.reason, w.waited_s) for w in short.waits] == [("failure", "timeout", 5.0)]
            assert short.transcript[-1]["text"] == "too late"
            long = await gate.get_conversation(keys["long"])
            assert long.status == "waiting"
            assert long.waits[0].deadline - trio.current_time() == pytest.approx(60.0, abs=1e-3)
            paid = await gate.get_conversation(keys["paid"])
            assert [w.reason for w in paid.waits] == ["received"] and paid.variables["amount"] == 9
            with pytest.raises(Refused, match="not_waiting"):
                await gate.deliver("payment", "wait_payment", {"conversation_key": keys["paid"]})
            await trio.sleep(59)
            assert (await gate.get_conversation(keys["long"])).status == "waiting"
            await trio.sleep(2)
            long = await gate.get_conversation(keys["long"])
            assert (long.waits[0].reason, long.waits[0].waited_s) == ("timeout", 120.0)
            assert gate.stats.resolutions == {("failure", "timeout"): 2}
            nursery.cancel_scope.cancel()

    run_virtual(after_restart)


def test_two_stores_on_one_file_resolve_a_wait_once(tmp_path: Path) -> None:
    database = tmp_path / "gate.db"

    async def main() -> None:
        first = Gate(store=SqliteStore(database))
        second = Gate(store=SqliteStore(database))
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await nursery.start(second.run)
            await first.add_bot(webhook_bot(timeout_s=30))
            with pytest.raises(Refused, match="bot_exists"):
                await second.add_bot(webhook_bot(timeout_s=30))
            key = (await first.start_conversation("pay")).key
            # Both processes hold a copy; the second resolves; the first's copy is now stale.
            await first.get_conversation(key)
            await second.deliver("pay", "wait", {"conversation_key": key, "data": {"amount": 1}})
            with pytest.raises(Refused, match="not_waiting"):
                await first.deliver("pay", "wait", {"conversation_key": key, "data": {"amount": 2}})
            assert (await first.get_conversation(key)).variables["amount"] == 1
            # The first process's timer fires later and changes nothing.
            await trio.sleep(31)
            assert [w.reason for w in (await first.get_conversation(key)).waits] == ["received"]
            nursery.cancel_scope.cancel()

    run_virtual(main)


def test_commit_refuses_a_wait_already_resolved_elsewhere(tmp_path: Path) -> None:
    database = tmp_path / "gate.db"

    async def main() -> None:
        gate = Gate(store=SqliteStore(database))
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await gate.add_bot(webhook_bot(timeout_s=30))
            key = (await gate.start_conversation("pay")).key
            other = SqliteStore(database)
            other.bind(gate.clock)
            ours, theirs = await gate.store.get_conversation(key), await other.get_conversation(key)
            for copy in (ours, theirs):
                copy.waits[0].resolve("success", "received", trio.current_time())
            assert await other.commit(theirs, resolved_wait=0) is True
            assert await gate.store.commit(ours, resolved_wait=0) is False
            assert await gate.store.open_wait_count() == 0
            nursery.cancel_scope.cancel()

    run_virtual(main)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite database"):
        SqliteStore(junk)
    with pytest.raises(ValueError, match="does not exist"):
        SqliteStore(tmp_path / "missing" / "gate.db")


# -- real processes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_and_restart_of_harness_serve(tmp_path: Path) -> None:
    folder = quick_bot_folder(tmp_path, timeout_s=2)
    args = ("--store", f"sqlite:{tmp_path / 'gate.db'}", "--bots", str(BOTS / "payment.toml"), "--bots", str(folder))
    first = ServerProcess.harness_serve(*args, log=tmp_path / "first.log")
    with httpx.Client(base_url=first.url) as client:
        waiting = client.post("/api/bots/payment/conversations").json()
        overdue = client.post("/api/bots/quick/conversations").json()
        paid = client.post("/api/bots/payment/conversations").json()
        assert client.post("/webhooks/payment/wait_payment",
                           json={"conversation_key": paid["conversation_key"], "data": {"amount": 5}}).status_code == 200
    first.kill()
    time.sleep(2.2)  # the 2 s wait's deadline passes while no server runs
    second = ServerProcess.harness_serve(*args, log=tmp_path / "second.log")
    try:
        with httpx.Client(base_url=second.url) as client:
            now_waiting = client.get(f"/api/conversations/{waiting['conversation_key']}").json()
            assert now_waiting["status"] == "waiting"
            assert now_waiting["waits"][0]["deadline"] == waiting["waits"][0]["deadline"]
            expired = client.get(f"/api/conversations/{overdue['conversation_key']}").json()
            assert (expired["waits"][0]["reason"], expired["waits"][0]["waited_s"]) == ("timeout", 2.0)
            assert expired["transcript"][-1]["text"] == "We did not receive your payment in time."
            still_paid = client.get(f"/api/conversations/{paid['conversation_key']}").json()
            assert [w["reason"] for w in still_paid["waits"]] == ["received"]
            assert len(still_paid["transcript"]) == 2
            late = client.post("/webhooks/quick/wait_payment", json={"conversation_key": overdue["conversation_key"]})
            assert late.status_code == 410
            ok = client.post("/webhooks/payment/wait_payment", json={"conversation_key": waiting["conversation_key"]})
            assert ok.status_code == 200
    finally:
        second.stop()


async def split_calls(key: str, urls: tuple[str, ...], calls: int) -> list[int]:
    """``calls`` concurrent webhook calls for ``key``, spread over the servers at ``urls``."""
    statuses: list[int] = []
    async with httpx.AsyncClient() as client:

        async def call(url: str, amount: int) -> None:
            response = await client.post(f"{url}/webhooks/payment/wait_payment",
                                         json={"conversation_key": key, "data": {"amount": amount}})
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for amount in range(calls):
                nursery.start_soon(call, urls[amount % len(urls)], amount)
    return statuses


@pytest.mark.slow
def test_two_server_processes_sharing_a_file_accept_one_call(tmp_path: Path) -> None:
    database = f"sqlite:{tmp_path / 'gate.db'}"
    one = ServerProcess.harness_serve("--store", database, "--bots", str(BOTS / "payment.toml"), log=tmp_path / "one.log")
    two = ServerProcess.harness_serve("--store", database, log=tmp_path / "two.log")
    try:
        for round_ in range(5):
            key = httpx.post(f"{one.url}/api/bots/payment/conversations").json()["conversation_key"]
            statuses = trio.run(split_calls, key, (one.url, two.url), 20)
            assert sorted(statuses) == [200] + [409] * 19, (round_, statuses)
            for url in (one.url, two.url):
                conversation = httpx.get(f"{url}/api/conversations/{key}").json()
                assert len(conversation["transcript"]) == 2 and conversation["waits"][0]["reason"] == "received"
    finally:
        one.stop()
        two.stop()
