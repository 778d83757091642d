"""The gate core under virtual time: deadlines, exactly-once, refusals. No HTTP."""

from __future__ import annotations

import pytest
import trio

from harness.core.errors import Refused
from harness.core.gate import Gate
from harness.store import MemoryStore

from .conftest import webhook_bot

EPSILON = 1e-6


async def refusal(gate: Gate, payload: dict, block: str = "wait") -> str:
    with pytest.raises(Refused) as caught:
        await gate.deliver("pay", block, payload)
    return caught.value.code


async def test_call_before_deadline_maps_and_takes_success(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=30))
    conversation = await gate.start_conversation("pay")
    await trio.sleep(12.5)
    delivery = await gate.deliver("pay", "wait", {"conversation_key": conversation.key, "data": {"amount": 7}})
    assert delivery.mapped == {"amount": 7} and delivery.missing == []
    conversation = await gate.get_conversation(conversation.key)  # as stored (a shared store hands out copies)
    wait = conversation.waits[0]
    assert (wait.outcome, wait.reason, wait.waited_s) == ("success", "received", 12.5)
    assert conversation.status == "completed"
    assert conversation.transcript[-1]["text"] == "paid 7"


async def test_timeout_takes_failure_edge_and_waits_exactly_timeout(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=300))
    conversation = await gate.start_conversation("pay")
    await trio.sleep(300.001)
    conversation = await gate.get_conversation(conversation.key)
    wait = conversation.waits[0]
    assert (wait.outcome, wait.reason, wait.waited_s) == ("failure", "timeout", 300.0)
    assert conversation.transcript[-1]["text"] == "too late"
    assert trio.current_time() == pytest.approx(300.001)  # virtual: no real 300 s passed


async def test_call_just_before_deadline_succeeds(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=10))
    conversation = await gate.start_conversation("pay")
    await trio.sleep_until(conversation.waits[0].deadline - EPSILON)
    await gate.deliver("pay", "wait", {"conversation_key": conversation.key})
    assert (await gate.get_conversation(conversation.key)).waits[0].outcome == "success"


async def test_call_at_deadline_is_refused_even_before_the_timer_runs(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=10))
    conversation = await gate.start_conversation("pay")
    deadline = conversation.waits[0].deadline
    # Sleep to the deadline exactly; the gate's scheduler may or may not have run yet.
    await trio.sleep_until(deadline)
    assert await refusal(gate, {"conversation_key": conversation.key}) == "wait_expired"
    await trio.sleep(EPSILON)
    wait = (await gate.get_conversation(conversation.key)).waits[0]
    assert (wait.outcome, wait.reason, wait.waited_s) == ("failure", "timeout", 10.0)


async def test_late_call_gets_wait_expired_forever_after(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=10))
    conversation = await gate.start_conversation("pay")
    await trio.sleep(10 + EPSILON)
    assert await refusal(gate, {"conversation_key": conversation.key}) == "wait_expired"
    await trio.sleep(1000)
    assert await refusal(gate, {"conversation_key": conversation.key}) == "wait_expired"


async def test_refused_call_changes_nothing(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=10))
    conversation = await gate.start_conversation("pay")
    before = conversation.as_dict(gate.clock)
    for payload in ({}, {"conversation_key": ""}, {"conversation_key": 5}, {"conversation_key": "nope"}):
        await refusal(gate, payload)
    assert conversation.as_dict(gate.clock) == before


async def test_second_call_is_not_waiting(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=10))
    conversation = await gate.start_conversation("pay")
    await gate.deliver("pay", "wait", {"conversation_key": conversation.key, "data": {"amount": 1}})
    assert await refusal(gate, {"conversation_key": conversation.key, "data": {"amount": 2}}) == "not_waiting"
    assert (await gate.get_conversation(conversation.key)).variables["amount"] == 1
    # The timer that would have fired later does nothing.
    await trio.sleep(20)
    conversation = await gate.get_conversation(conversation.key)
    assert [w.outcome for w in conversation.waits] == ["success"]
    assert gate.stats.resolutions == {("success", "received"): 1}


async def test_many_conversations_each_resolve_exactly_once(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=50))
    conversations = [await gate.start_conversation("pay") for _ in range(200)]

    async def party(index: int) -> None:
        await trio.sleep(index * 0.5)  # half of them arrive after the 50 s deadline
        try:
            await gate.deliver("pay", "wait", {"conversation_key": conversations[index].key})
        except Refused as error:
            assert error.code == "wait_expired"

    async with trio.open_nursery() as nursery:
        for index in range(len(conversations)):
            nursery.start_soon(party, index)
    await trio.sleep(60)
    outcomes = [(await gate.get_conversation(c.key)).waits[0].outcome for c in conversations]
    assert outcomes == ["success"] * 100 + ["failure"] * 100
    assert sum(gate.stats.resolutions.values()) == 200


async def test_wrong_bot_does_not_find_the_conversation(gate: Gate, autojump_clock) -> None:
    await gate.add_bot(webhook_bot(timeout_s=10))
    await gate.add_bot(webhook_bot(timeout_s=10, bot_id="other"))
    conversation = await gate.start_conversation("other")
    assert await refusal(gate, {"conversation_key": conversation.key}) == "unknown_conversation"


async def test_unknown_webhook_and_bot(gate: Gate) -> None:
    await gate.add_bot(webhook_bot())
    assert await refusal(gate, {}, block="ok") == "unknown_webhook"  # a message block is no webhook
    with pytest.raises(Refused, match="unknown_bot"):
        await gate.start_conversation("ghost")
    with pytest.raises(Refused, match="bot_exists"):
        await gate.add_bot(webhook_bot())


async def test_retry_loop_opens_a_second_wait_at_the_same_block(gate: Gate, autojump_clock) -> None:
    from harness.core.bots import load_bot

    from .conftest import BOTS

    await gate.add_bot(load_bot(BOTS / "payment_retry.toml"))
    conversation = await gate.start_conversation("payment_retry", {"price": 20})
    await trio.sleep(61)  # the first wait times out; the bot reminds and waits again
    conversation = await gate.get_conversation(conversation.key)
    assert [w.reason for w in conversation.waits] == ["timeout", None]
    assert "not received your payment yet" in conversation.transcript[-1]["text"]
    # The latest wait at the block is open, so the call is accepted despite the earlier timeout.
    await gate.deliver("payment_retry", "wait_payment", {"conversation_key": conversation.key, "data": {"amount": 25}})
    conversation = await gate.get_conversation(conversation.key)
    assert conversation.transcript[-1]["text"].startswith("Thanks, payment")
    assert (conversation.status, conversation.variables["attempts"]) == ("completed", 2)


def test_scheduler_must_run_before_conversations_start() -> None:
    async def main() -> None:
        gate = Gate(store=MemoryStore())
        await gate.add_bot(webhook_bot())
        with pytest.raises(RuntimeError, match="scheduler is not running"):
            await gate.start_conversation("pay")

    trio.run(main)


async def test_ten_thousand_waits_interleaved_resolve_exactly_once(gate: Gate, autojump_clock) -> None:
    """Callbacks (some duplicated, some late) and deadlines interleave; each wait resolves once."""
    import random

    rng = random.Random(5)
    await gate.add_bot(webhook_bot(timeout_s=60))
    conversations = [await gate.start_conversation("pay") for _ in range(10_000)]
    outcomes: dict[str, list[int]] = {c.key: [] for c in conversations}

    async def party(key: str) -> None:
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            await trio.sleep(rng.uniform(0, 90))
            try:
                await gate.deliver("pay", "wait", {"conversation_key": key})
                outcomes[key].append(200)
            except Refused as error:
                outcomes[key].append({"wait_expired": 410, "not_waiting": 409}[error.code])

    async with trio.open_nursery() as nursery:
        for conversation in conversations:
            nursery.start_soon(party, conversation.key)
    await trio.sleep(61)
    resolved = [(await gate.get_conversation(c.key)).waits for c in conversations]
    assert all(len(waits) == 1 and waits[0].outcome is not None for waits in resolved)
    successes = sum(1 for waits in resolved if waits[0].outcome == "success")
    assert successes == sum(statuses.count(200) for statuses in outcomes.values())
    assert all(statuses.count(200) <= 1 for statuses in outcomes.values())
    assert sum(gate.stats.resolutions.values()) == 10_000 and 0 < successes < 10_000
    assert await gate.open_wait_count() == 0
