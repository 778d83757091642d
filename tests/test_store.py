"""The Store protocol's contract, on every store kind (``store_kind`` in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from harness.core.conversations import Conversation, EarlyCall, Wait, WallClock
from harness.core.errors import Refused
from harness.core.store import Store

from .conftest import make_store, webhook_bot


@pytest.fixture
async def store(store_kind: str, tmp_path: Path) -> Store:
    store = make_store(store_kind, tmp_path)
    store.bind(WallClock())
    return store


def waiting(key: str, now: float, timeout_s: int = 30) -> Conversation:
    conversation = Conversation(key=key, bot="pay", url=f"http://x/c/{key}", started_at=now, status="waiting",
                                block="wait")
    conversation.waits.append(Wait(block="wait", opened_at=now, deadline=now + timeout_s, timeout_s=timeout_s))
    return conversation


async def test_bots_are_kept_in_order_and_ids_are_unique(store: Store) -> None:
    await store.add_bot(webhook_bot(bot_id="a"))
    await store.add_bot(webhook_bot(bot_id="b"))
    with pytest.raises(Refused) as refused:
        await store.add_bot(webhook_bot(bot_id="a"))
    assert refused.value.code == "bot_exists"
    assert [bot.id for bot in await store.bots()] == ["a", "b"]
    assert await store.get_bot("nope") is None


async def test_counts_and_soonest_waits_follow_opening_and_resolution(store: Store) -> None:
    await store.add_bot(webhook_bot())
    now = trio.current_time()
    for number in range(5):
        await store.add_conversation(waiting(f"k{number}", now, timeout_s=50 - number))
    assert await store.open_wait_count() == 5
    soonest = await store.soonest_open_waits(2)
    assert [(w.key, w.block, w.timeout_s) for w in soonest] == [("k4", "wait", 46), ("k3", "wait", 47)]

    conversation = await store.get_conversation("k4")
    assert conversation is not None
    conversation.waits[0].resolve("success", "received", now + 1)
    conversation.status = "completed"
    assert await store.commit(conversation, resolved_wait=0)
    assert await store.open_wait_count() == 4
    assert [w.key for w in await store.soonest_open_waits(2)] == ["k3", "k2"]
    assert sorted(key for key, _, _ in await store.open_waits()) == ["k0", "k1", "k2", "k3"]


async def test_late_calls_keep_the_first_hundred_and_count_all(store: Store) -> None:
    await store.add_bot(webhook_bot())
    now = trio.current_time()
    await store.add_conversation(waiting("k", now))
    for number in range(130):
        conversation = await store.get_conversation("k")
        assert conversation is not None
        await store.add_late_call(conversation, {"block": "wait", "at": now + number, "after_deadline_s": 1.0})
    conversation = await store.get_conversation("k")
    assert conversation is not None
    assert len(conversation.late_calls) == 100 and conversation.late_calls_total == 130


async def test_a_held_early_call_is_kept_and_used_once(store: Store) -> None:
    await store.add_bot(webhook_bot())
    now = trio.current_time()
    await store.add_conversation(waiting("k", now))
    conversation = await store.get_conversation("k")
    assert conversation is not None
    early = EarlyCall(block="later", at=now, expires_at=now + 10, payload={"a": 1})
    assert await store.hold_early_call(conversation, early)
    again = await store.get_conversation("k")
    assert again is not None
    assert [(e.block, e.outcome, e.payload) for e in again.early_calls] == [("later", "pending", {"a": 1})]
    assert again.early_calls[0].state(now + 10, finished=False) == "expired"
