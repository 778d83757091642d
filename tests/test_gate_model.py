"""Model-based property test of the gate's timing contract (SPEC §2, §4.2).

Hypothesis generates a plan — a timeout, some conversations, and calls at chosen instants with
right, unknown or missing keys — and replays it against a fresh gate in its own trio run under a
MockClock. A few lines of reference model say what every call must get and how every wait must
end. Calls at exactly the deadline are generated on purpose.
"""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.errors import Refused
from harness.core.gate import Gate
from harness.store import MemoryStore

from .conftest import webhook_bot

STATUS = {"missing_conversation_key": 422, "unknown_conversation": 404, "wait_expired": 410, "not_waiting": 409}


@st.composite
def plans(draw: st.DrawFn) -> tuple[int, int, list[tuple[float, int | str]]]:
    timeout = draw(st.integers(1, 300))
    conversations = draw(st.integers(1, 6))
    instants = st.one_of(st.floats(0, 400, allow_nan=False), st.just(float(timeout)),
                         st.just(timeout - 1e-6), st.just(0.0))
    targets = st.one_of(st.integers(0, conversations - 1), st.sampled_from(["unknown", "missing"]))
    calls = draw(st.lists(st.tuples(instants, targets), max_size=25))
    return timeout, conversations, sorted(calls, key=lambda call: call[0])  # stable: ties keep their order


def expected(timeout: int, conversations: int, calls: list[tuple[float, int | str]]):
    resolved_at: dict[int, float] = {}
    statuses = []
    for instant, target in calls:
        if target == "missing":
            statuses.append(422)
        elif target == "unknown":
            statuses.append(404)
        elif target in resolved_at:
            statuses.append(409)
        elif instant >= timeout:
            statuses.append(410)
        else:
            resolved_at[target] = instant
            statuses.append(200)
    waits = [("success", "received", resolved_at[i]) if i in resolved_at else ("failure", "timeout", float(timeout))
             for i in range(conversations)]
    return statuses, waits


def replay(timeout: int, conversations: int, calls: list[tuple[float, int | str]]):
    async def main():
        gate = Gate(store=MemoryStore())
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await gate.add_bot(webhook_bot(timeout_s=timeout))
            keys = [(await gate.start_conversation("pay")).key for _ in range(conversations)]
            start = trio.current_time()
            statuses = []
            for instant, target in calls:
                await trio.sleep_until(start + instant)
                payload = {} if target == "missing" else {
                    "conversation_key": "A" * 32 if target == "unknown" else keys[target]}
                try:
                    await gate.deliver("pay", "wait", payload)
                    statuses.append(200)
                except Refused as error:
                    statuses.append(STATUS[error.code])
            await trio.sleep_until(start + timeout + 1)
            waits = [(w.outcome, w.reason, w.waited_s) for w in ((await gate.get_conversation(k)).waits[0] for k in keys)]
            assert sum(gate.stats.resolutions.values()) == conversations  # each wait exactly once
            nursery.cancel_scope.cancel()
            return statuses, waits

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=300, deadline=None)
@given(plan=plans())
def test_every_call_and_every_wait_matches_the_model(plan) -> None:
    timeout, conversations, calls = plan
    statuses, waits = replay(timeout, conversations, calls)
    want_statuses, want_waits = expected(timeout, conversations, calls)
    assert statuses == want_statuses
    for (outcome, reason, waited), (want_outcome, want_reason, want_waited) in zip(waits, want_waits):
        assert (outcome, reason) == (want_outcome, want_reason)
        assert abs(waited - want_waited) < 1e-9 if reason == "received" else waited == want_waited
