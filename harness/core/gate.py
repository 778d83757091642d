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
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import trio

from ..store import MemoryStore, Store
from .bots import Block, Bot, InvalidBot, parse_bot
from .conversations import Conversation, Outcome, Reason, Wait, WallClock, new_conversation_key
from .errors import Refused
from .flow import advance
from .jsonsafe import UnsafeValue, check_json_value

__all__ = ["Gate", "Delivery", "GateStats"]

log = logging.getLogger("harness.gate")

# Timer lateness buckets (seconds) for the metrics histogram.
RECENT = 50
EXPIRY_SLICE_S = 0.05  # the scheduler yields to other tasks after expiring waits for this long
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
    late_calls: int = 0

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
        # What the live page shows: the latest resolutions and late calls, newest last.
        self.recent_resolutions: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.recent_late_calls: deque[dict[str, Any]] = deque(maxlen=RECENT)

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
            while True:
                while self._expire_due(trio.current_time()):
                    await trio.sleep(0)  # a long batch (slow scripts): let requests in between
                next_deadline = self._deadlines[0][0] if self._deadlines else math.inf
                with trio.move_on_at(next_deadline):
                    await self._wake.wait()
                self._wake = trio.Event()
        finally:
            self._wake = None

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

    def _expire_due(self, now: float) -> bool:
        """Expire the waits whose deadline has come; True if it stopped early with more due."""
        heap = self._deadlines
        started = time.perf_counter()
        while heap and heap[0][0] <= now:
            if time.perf_counter() - started > EXPIRY_SLICE_S:
                return True
            deadline, _, key, index = heapq.heappop(heap)
            conversation = self.store.get_conversation(key)
            if conversation is None or not conversation.waits[index].is_open:
                continue  # resolved by a call already (here or in another process)
            self.stats.observe_lateness(now - deadline)
            self._resolve(conversation, index, "failure", "timeout", now)
        return False

    # -- bots ---------------------------------------------------------------------------------

    def add_bot(self, bot: Bot) -> Bot:
        """Register ``bot``; refuse an id that is taken (``bot_exists``)."""
        if self.store.get_bot(bot.id) is not None:
            raise Refused("bot_exists", f"a bot with id {bot.id!r} already exists")
        self.store.add_bot(bot)
        return bot

    def create_bot(self, document: Any) -> Bot:
        """Validate and register a bot document (``POST /api/bots``).

        Refuses with ``invalid_bot`` listing every problem (in ``problems``), or ``bot_exists``.
        """
        try:
            bot = parse_bot(document)
        except InvalidBot as error:
            problems = [problem.as_dict() for problem in error.problems]
            raise Refused("invalid_bot", f"{len(problems)} problem(s) in the bot", problems=problems) from None
        return self.add_bot(bot)

    def get_bot(self, bot_id: str) -> Bot:
        """The bot, or ``unknown_bot``."""
        bot = self.store.get_bot(bot_id)
        if bot is None:
            raise Refused("unknown_bot", f"no bot with id {bot_id!r}")
        return bot

    def bot_document(self, bot: Bot) -> dict[str, Any]:
        """What the API shows of a bot: its document (secrets redacted) and its webhook URLs."""
        return {**bot.public_dict(), "webhooks": self.webhook_urls(bot)}

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

        ``variables`` (a JSON object of plain data) are set before the start; refused with
        ``invalid_payload`` when they are not an object, nest deeper than 64 levels or hold
        strings that are not valid Unicode.
        """
        bot = self.get_bot(bot_id)
        if self._wake is None:
            raise RuntimeError("the gate's scheduler is not running: `await nursery.start(gate.run)` first")
        if variables is not None and not isinstance(variables, dict):
            raise Refused("invalid_payload", "variables must be a JSON object")
        try:
            check_json_value(variables or {})
        except UnsafeValue as error:
            raise Refused("invalid_payload", f"variables: {error}") from None
        now = trio.current_time()
        key = new_conversation_key()
        url = f"{self.public_url}/c/{key}"
        conversation = Conversation(key=key, bot=bot.id, url=url, started_at=now)
        conversation.variables.update(variables or {})
        conversation.variables.update({"conversation_key": key, "Conversation URL": url})
        advance(conversation, bot, bot.start, now)
        self.store.add_conversation(conversation)
        if conversation.open_wait is not None:
            self._arm(conversation)
        return conversation

    def get_conversation(self, key: str) -> Conversation:
        conversation = self.store.get_conversation(key)
        if conversation is None:
            raise Refused("unknown_conversation", "no conversation has that key")
        return conversation

    def forget(self, key: str) -> None:
        """Let a conversation go from memory: its owner is done with it (the in-process runner, once
        it has read the outcome and no call to it is left). On the memory store it is then gone
        (404, and a deadline still in the heap is skipped); a store on disk keeps it there.
        """
        self.store.forget_conversation(key)

    def _resolve(self, conversation: Conversation, index: int, outcome: Outcome, reason: Reason, now: float,
                 mapped: dict[str, Any] | None = None) -> bool:
        """Resolve wait ``index``, run the flow on along its edge, and commit it all as one step.

        Either the store has it all, or — if anything fails on the way, or the store refuses
        because another process resolved that wait first (then this returns False) — the
        conversation is exactly as it was: a 5xx means nothing changed.
        """
        wait = conversation.waits[index]
        bot = self.get_bot(conversation.bot)
        with conversation.rollback_on_error():
            wait.resolve(outcome, reason, now)
            conversation.variables.update(mapped or {})
            advance(conversation, bot, bot.blocks[wait.block].edges[outcome], now)
            if not self.store.commit(conversation, resolved_wait=index):
                return False
        self._resolved(conversation, wait, now)
        if conversation.open_wait is not None:
            self._arm(conversation)
        return True

    def _resolved(self, conversation: Conversation, wait: Wait, now: float) -> None:
        self.stats.resolutions[(wait.outcome or "", wait.reason or "")] += 1
        self.recent_resolutions.append({
            "at": self.clock.iso(now), "bot": conversation.bot, "block": wait.block,
            "conversation": conversation.key[:8] + "…", "outcome": wait.outcome, "reason": wait.reason,
            "waited_s": wait.waited_s,
        })
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

        The key is the payload's value at the block's ``key_path``. Refusals, in the contract's
        order: ``unknown_webhook``, ``missing_conversation_key``, ``unknown_conversation``,
        ``wait_expired``, ``not_waiting``. A refusal changes nothing, except that a
        ``wait_expired`` is recorded in the conversation's ``late_calls``.
        """
        block = self.webhook_block(bot_id, block_id)
        found, key = block.key_path.extract(payload)
        if not found or not isinstance(key, str) or not key:
            raise Refused("missing_conversation_key",
                          f"the payload needs a non-empty string at {block.key_path.text!r}")
        conversation = self.store.get_conversation(key)
        if conversation is None or conversation.bot != bot_id:
            raise Refused("unknown_conversation", f"no conversation of bot {bot_id!r} has that key")

        now = trio.current_time()
        self._refuse_if_expired(conversation, block_id, now)
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
        if not self._resolve(conversation, len(conversation.waits) - 1, "success", "received", now, mapped):
            # Another process sharing the store resolved this wait between our read and our write.
            self._refuse_if_expired(self.get_conversation(key), block_id, now)
            raise Refused("not_waiting", f"the conversation is not waiting at {block_id!r} (resolved elsewhere)")
        return Delivery(conversation=conversation, wait=wait, mapped=mapped, missing=missing)

    def _refuse_if_expired(self, conversation: Conversation, block_id: str, now: float) -> None:
        """``wait_expired`` when the latest wait at the block reached its deadline without a valid call.

        The refused call is recorded as a late call: a customer who acted (paid) but was told
        the flow failed.
        """
        latest = conversation.latest_wait_at(block_id)
        if latest is None or not latest.expired_at(now):
            return
        late = {"block": block_id, "at": now, "after_deadline_s": now - latest.deadline}
        self.store.add_late_call(conversation, late)
        self.stats.late_calls += 1
        self.recent_late_calls.append({
            "at": self.clock.iso(now), "bot": conversation.bot, "block": block_id,
            "conversation": conversation.key[:8] + "…", "after_deadline_s": late["after_deadline_s"],
        })
        raise Refused("wait_expired", f"the wait at {block_id!r} reached its deadline without a valid call")
