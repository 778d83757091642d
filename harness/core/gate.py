"""The gate: conversations, waits, deadlines and exactly-once resolution. No HTTP here.

How a wait resolves exactly once, without locks
-----------------------------------------------
Trio switches tasks only at an ``await``. Every method of :class:`Gate` that changes state is
synchronous, so a call's checks ("is this wait open? has its deadline passed?") and its
resolution happen in one uninterrupted step; a second call, or the deadline timer, sees the
resolved wait and is refused or does nothing. The HTTP adapter reads the whole body *before*
calling :meth:`Gate.deliver`, so no await sits between the check and the change.

How deadlines fire
------------------
One scheduler task (:meth:`Gate.run`) owns a heap of ``(deadline, seq, conversation, wait)``.
It sleeps until the earliest deadline (or until an earlier one is armed), then expires every
wait whose deadline has come. A wait costs one heap entry, not a task. Deadlines are on trio's
clock, so under ``trio.testing.MockClock(autojump_threshold=0)`` a 300 s wait costs nothing.

The deadline decides, not the timer: a call at or after the deadline is refused with
``wait_expired`` even when the scheduler has not run yet, and the timer then resolves the wait as
``failure``/``timeout`` with ``waited_s`` exactly ``timeout_s``.

Usage::

    gate = Gate(public_url="http://127.0.0.1:8000")
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        gate.add_bot(load_bot("scenarios/bots/payment.toml"))
        conversation = gate.start_conversation("payment")
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from ..store import MemoryStore, Store
from .bots import Block, Bot
from .conversations import Conversation, Wait, WallClock, new_conversation_key
from .errors import Refused
from .flow import advance, advance_async, scripts_run_inline

__all__ = ["Gate", "Delivery", "GateStats"]

log = logging.getLogger("harness.gate")

# Timer lateness buckets (seconds) for the metrics histogram.
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, math.inf)


@dataclass(slots=True)
class Delivery:
    """What an accepted webhook call did."""

    conversation: Conversation
    wait: Wait
    mapped: dict[str, Any]
    missing: list[str]


@dataclass
class GateStats:
    """Counters the gate keeps for ``/metrics``."""

    waits_opened: int = 0
    resolutions: Counter[tuple[str, str]] = field(default_factory=Counter)
    lateness_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS))
    lateness_sum: float = 0.0
    lateness_count: int = 0

    def observe_lateness(self, seconds: float) -> None:
        for index, bound in enumerate(LATENESS_BUCKETS):
            if seconds <= bound:
                self.lateness_buckets[index] += 1
        self.lateness_sum += seconds
        self.lateness_count += 1


class Gate:
    """Holds bots and conversations and decides every webhook call and every timeout."""

    def __init__(self, *, store: Store | None = None, public_url: str = "http://127.0.0.1:8000",
                 clock: WallClock | None = None) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        self.public_url = public_url.rstrip("/")
        self.clock = clock if clock is not None else WallClock()
        self.store.bind(self.clock)
        self.stats = GateStats()
        # (deadline, tie-breaker, conversation key, index of the wait in conversation.waits)
        self._deadlines: list[tuple[float, int, str, int]] = []
        self._sequence = itertools.count()
        self._wake: trio.Event | None = None
        self._nursery: trio.Nursery | None = None  # for flows continued after a timeout in real time

    # -- the deadline scheduler ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._wake is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire deadlines until cancelled. Start it with ``await nursery.start(gate.run)``.

        On start it re-arms the open waits the store holds (after a restart, with their original
        deadlines); those whose deadline passed while nothing was running resolve at once as
        ``failure``/``timeout`` and take the failure edge.
        """
        if self._wake is not None:
            raise RuntimeError("Gate.run() is already running")
        self._wake = trio.Event()
        for conversation in self.store.waiting_conversations():
            if conversation.open_wait is not None:
                self._arm(conversation)
        task_status.started()
        try:
            async with trio.open_nursery() as self._nursery:
                while True:
                    self._expire_due(trio.current_time())
                    next_deadline = self._deadlines[0][0] if self._deadlines else math.inf
                    with trio.move_on_at(next_deadline):
                        await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            self._wake = self._nursery = None

    def open_wait_count(self) -> int:
        """Waits open in the store right now."""
        return self.store.open_wait_count()

    def _arm(self, conversation: Conversation) -> None:
        """Schedule the deadline of the conversation's open wait (its last one)."""
        index = len(conversation.waits) - 1
        entry = (conversation.waits[index].deadline, next(self._sequence), conversation.key, index)
        self.stats.waits_opened += 1
        heapq.heappush(self._deadlines, entry)
        if self._deadlines[0] is entry and self._wake is not None:
            self._wake.set()  # the scheduler sleeps until a later deadline: wake it up

    def _expire_due(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, key, index = heapq.heappop(heap)
            conversation = self.store.get_conversation(key)
            if conversation is None or not conversation.waits[index].is_open:
                continue  # resolved by a call already (here or in another process)
            self.stats.observe_lateness(now - deadline)
            wait = conversation.waits[index]
            wait.resolve("failure", "timeout", now)
            bot = self.get_bot(conversation.bot)
            failure = bot.blocks[wait.block].edges["failure"]
            if self._nursery is not None and not scripts_run_inline():
                # Real time: the flow may run scripts, which must not hold up the other deadlines.
                self._nursery.start_soon(self._continue_async, conversation, bot, failure, now, index)
            else:
                self._continue(conversation, bot, failure, now, resolved=index)

    # -- bots ---------------------------------------------------------------------------------

    def add_bot(self, bot: Bot) -> Bot:
        """Register ``bot``; refuse an id that is taken (``bot_exists``)."""
        if self.store.get_bot(bot.id) is not None:
            raise Refused("bot_exists", f"a bot with id {bot.id!r} already exists")
        self.store.add_bot(bot)
        return bot

    def get_bot(self, bot_id: str) -> Bot:
        """The bot, or ``unknown_bot``."""
        bot = self.store.get_bot(bot_id)
        if bot is None:
            raise Refused("unknown_bot", f"no bot with id {bot_id!r}")
        return bot

    def webhook_urls(self, bot: Bot) -> dict[str, str]:
        return {block: f"{self.public_url}/webhooks/{bot.id}/{block}" for block in bot.webhook_blocks()}

    def webhook_block(self, bot_id: str, block_id: str) -> Block:
        """The webhook block behind ``/webhooks/{bot_id}/{block_id}``, or ``unknown_webhook``."""
        bot = self.store.get_bot(bot_id)
        block = bot.blocks.get(block_id) if bot is not None else None
        if block is None or block.type != "webhook":
            raise Refused("unknown_webhook", f"no webhook block {block_id!r} in bot {bot_id!r}")
        return block

    # -- conversations ------------------------------------------------------------------------

    def start_conversation(self, bot_id: str, variables: dict[str, Any] | None = None) -> Conversation:
        """Start a conversation and run it to its first wait or end.

        Its scripts run inline, holding the caller up to the step's 1 s budget; a server uses
        :meth:`start_conversation_async`.
        """
        bot, conversation = self._new_conversation(bot_id, variables)
        advance(conversation, bot, bot.start, conversation.started_at)
        return self._started(conversation)

    async def start_conversation_async(self, bot_id: str, variables: dict[str, Any] | None = None) -> Conversation:
        """:meth:`start_conversation` whose scripts, in real time, run off the event loop.

        Under ``MockClock`` it *is* :meth:`start_conversation` (no thread may touch virtual time).
        """
        if scripts_run_inline():
            return self.start_conversation(bot_id, variables)
        bot, conversation = self._new_conversation(bot_id, variables)
        await advance_async(conversation, bot, bot.start, conversation.started_at)
        return self._started(conversation)

    def _new_conversation(self, bot_id: str, variables: dict[str, Any] | None) -> tuple[Bot, Conversation]:
        bot = self.get_bot(bot_id)
        if self._wake is None:
            raise RuntimeError("the gate's scheduler is not running: `await nursery.start(gate.run)` first")
        now = trio.current_time()
        key = new_conversation_key()
        url = f"{self.public_url}/c/{key}"
        conversation = Conversation(key=key, bot=bot.id, url=url, started_at=now)
        conversation.variables.update(variables or {})
        conversation.variables.update({"conversation_key": key, "Conversation URL": url})
        return bot, conversation

    def _started(self, conversation: Conversation) -> Conversation:
        self.store.add_conversation(conversation)
        if conversation.open_wait is not None:
            self._arm(conversation)
        return conversation

    def get_conversation(self, key: str) -> Conversation:
        conversation = self.store.get_conversation(key)
        if conversation is None:
            raise Refused("unknown_conversation", "no conversation has that key")
        return conversation

    def _continue(self, conversation: Conversation, bot: Bot, block_id: str | None, now: float,
                  resolved: int) -> bool:
        """Run the flow on after wait ``resolved`` and commit it all as one store transaction.

        Returns False when the store refuses because another process resolved that wait first;
        the in-memory copy is then stale and must be dropped.
        """
        advance(conversation, bot, block_id, now)
        return self._commit(conversation, resolved)

    async def _continue_async(self, conversation: Conversation, bot: Bot, block_id: str | None, now: float,
                              resolved: int) -> bool:
        """:meth:`_continue` whose scripts, in real time, run off the event loop."""
        await advance_async(conversation, bot, block_id, now)
        return self._commit(conversation, resolved)

    def _commit(self, conversation: Conversation, resolved: int) -> bool:
        if not self.store.commit(conversation, resolved_wait=resolved):
            return False
        self._resolved(conversation, conversation.waits[resolved])
        if conversation.open_wait is not None:
            self._arm(conversation)
        return True

    def _resolved(self, conversation: Conversation, wait: Wait) -> None:
        self.stats.resolutions[(wait.outcome or "", wait.reason or "")] += 1
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "wait resolved",
            extra={
                "bot": conversation.bot,
                "conversation": conversation.key[:6] + "…",  # never the whole key in logs
                "block": wait.block,
                "outcome": wait.outcome,
                "reason": wait.reason,
                "waited_s": wait.waited_s,
            },
        )

    # -- webhook calls ------------------------------------------------------------------------

    def deliver(self, bot_id: str, block_id: str, payload: dict[str, Any]) -> Delivery:
        """Decide a webhook call whose body has been read, parsed and (if needed) verified.

        Refusals, in the contract's order: ``unknown_webhook``, ``missing_conversation_key``,
        ``unknown_conversation``, ``wait_expired``, ``not_waiting``. A refusal changes nothing.
        The flow's scripts run inline; a server uses :meth:`deliver_async`.
        """
        delivery = self._accept(bot_id, block_id, payload)
        self._settle(delivery, self._continue(*self._continuation(delivery)))
        return delivery

    async def deliver_async(self, bot_id: str, block_id: str, payload: dict[str, Any]) -> Delivery:
        """:meth:`deliver` whose scripts, in real time, run off the event loop.

        The checks and the resolution still happen without an await (atomically); only the flow
        that follows may await its scripts, with the conversation ``running`` meanwhile.
        Under ``MockClock`` it *is* :meth:`deliver`.
        """
        if scripts_run_inline():
            return self.deliver(bot_id, block_id, payload)
        delivery = self._accept(bot_id, block_id, payload)
        self._settle(delivery, await self._continue_async(*self._continuation(delivery)))
        return delivery

    def _continuation(self, delivery: Delivery) -> tuple[Conversation, Bot, str | None, float, int]:
        """The arguments of :meth:`_continue` for a just-accepted call (its wait is the last one)."""
        conversation, wait = delivery.conversation, delivery.wait
        assert wait.resolved_at is not None
        bot = self.get_bot(conversation.bot)
        return (conversation, bot, bot.blocks[wait.block].edges["success"], wait.resolved_at,
                len(conversation.waits) - 1)

    def _settle(self, delivery: Delivery, committed: bool) -> None:
        if not committed:
            # Another process sharing the store resolved this wait between our read and our write.
            key, block_id, now = delivery.conversation.key, delivery.wait.block, delivery.wait.resolved_at
            assert now is not None
            _refuse_if_expired(self.get_conversation(key), block_id, now)
            raise Refused("not_waiting", f"the conversation is not waiting at {block_id!r} (resolved elsewhere)")

    def _accept(self, bot_id: str, block_id: str, payload: dict[str, Any]) -> Delivery:
        """Every check and the resolution of the wait, with no await: one atomic step."""
        block = self.webhook_block(bot_id, block_id)
        key = payload.get("conversation_key")
        if not isinstance(key, str) or not key:
            raise Refused("missing_conversation_key", "the payload needs a non-empty string conversation_key")
        conversation = self.store.get_conversation(key)
        if conversation is None or conversation.bot != bot_id:
            raise Refused("unknown_conversation", f"no conversation of bot {bot_id!r} has that key")

        now = trio.current_time()
        _refuse_if_expired(conversation, block_id, now)
        wait = conversation.open_wait
        if wait is None or wait.block != block_id:
            where = f"waiting at {wait.block!r}" if wait else conversation.status
            raise Refused("not_waiting", f"the conversation is not waiting at {block_id!r} (it is {where})")

        mapped: dict[str, Any] = {}
        missing: list[str] = []
        for variable, path in block.mappings:
            found, value = path.extract(payload)
            if found:
                mapped[variable] = value
            else:
                missing.append(variable)
        wait.resolve("success", "received", now)
        conversation.variables.update(mapped)
        return Delivery(conversation=conversation, wait=wait, mapped=mapped, missing=missing)


def _refuse_if_expired(conversation: Conversation, block_id: str, now: float) -> None:
    """``wait_expired`` when the latest wait at the block reached its deadline without a valid call."""
    latest = conversation.latest_wait_at(block_id)
    if latest is not None and latest.expired_at(now):
        raise Refused("wait_expired", f"the wait at {block_id!r} reached its deadline without a valid call")
