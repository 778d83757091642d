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

The same task does two periodic chores, on trio's clock too:

* **Retention** (every :data:`SWEEP_EVERY_S`): conversations that finished (``completed`` or
  ``errored``) at least ``retention`` seconds ago leave memory — so a finished conversation is gone
  between ``retention`` and ``retention + 30`` s after it finished. The memory store forgets them
  (404 from then on); the SQLite store keeps them on disk and loads them again on demand.
* **Orphaned deadlines** (every :data:`ORPHAN_POLL_S`, only for a store shared between processes):
  waits whose deadline passed but that nobody resolved — their process was killed or stopped —
  are found with one indexed query and resolved as ``failure``/``timeout`` through the same
  compare-and-set commit, so two live processes never both resolve one.

Usage::

    gate = Gate(store=MemoryStore(), public_url="http://127.0.0.1:8000")
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

from .bots import Block, Bot, InvalidBot, parse_bot
from .conversations import Conversation, Outcome, Reason, Wait, WallClock, new_conversation_key
from .errors import Refused
from .flow import advance, advance_async, scripts_run_inline
from .jsonsafe import UnsafeValue, check_json_value
from .store import Store

__all__ = ["Gate", "Delivery", "GateStats"]

log = logging.getLogger("harness.gate")

# Timer lateness buckets (seconds) for the metrics histogram.
RECENT = 50
DEFAULT_RETENTION_S = 3600.0
SWEEP_EVERY_S = 30.0
ORPHAN_POLL_S = 1.0
ORPHANS_PER_POLL = 1000
RETRY_AFTER_S = 1.0  # a timeout whose resolution failed (e.g. the database was locked) is retried this soon
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

    def __init__(self, *, store: Store, public_url: str = "http://127.0.0.1:8000",
                 clock: WallClock | None = None, retention: float = DEFAULT_RETENTION_S) -> None:
        if not retention >= 0:
            raise ValueError("retention must be a number of seconds >= 0")
        self.store = store
        self.retention = retention
        self.public_url = public_url.rstrip("/")
        self.clock = clock if clock is not None else WallClock()
        self.store.bind(self.clock)
        self.stats = GateStats()
        # (deadline, tie-breaker, conversation key, index of the wait in conversation.waits)
        self._deadlines: list[tuple[float, int, str, int]] = []
        self._sequence = itertools.count()
        self._wake: trio.Event | None = None
        # (finished at, key), oldest first: finish times only grow, so the sweep pops from the left.
        self._finished: deque[tuple[float, str]] = deque()
        # What the live page shows: the latest resolutions and late calls, newest last.
        self.recent_resolutions: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.recent_late_calls: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._nursery: trio.Nursery | None = None  # flows continued after a timeout, in real time

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
        next_sweep = trio.current_time() + SWEEP_EVERY_S
        next_poll = trio.current_time() + ORPHAN_POLL_S if self.store.shared else math.inf
        try:
            async with trio.open_nursery() as self._nursery:
                while True:
                    while self._expire_due(trio.current_time()):
                        await trio.sleep(0)  # a long batch (slow scripts): let requests in between
                    now = trio.current_time()
                    if now >= next_poll:
                        self._resolve_orphans(now)
                        next_poll = now + ORPHAN_POLL_S
                    if now >= next_sweep:
                        self._sweep(now)
                        next_sweep = now + SWEEP_EVERY_S
                    next_deadline = self._deadlines[0][0] if self._deadlines else math.inf
                    with trio.move_on_at(min(next_deadline, next_poll, next_sweep)):
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

    def _expire_due(self, now: float) -> bool:
        """Expire the waits whose deadline has come; True if it stopped early with more due."""
        heap = self._deadlines
        started = time.perf_counter()
        while heap and heap[0][0] <= now:
            if time.perf_counter() - started > EXPIRY_SLICE_S:
                return True
            deadline, _, key, index = heapq.heappop(heap)
            try:
                conversation = self.store.get_conversation(key)
                if conversation is None or not conversation.waits[index].is_open:
                    continue  # resolved by a call already (here or in another process)
                self._time_out(conversation, index, now)
            except Exception:
                self._retry_later(key, index, now)
                continue
            self.stats.observe_lateness(now - deadline)
        return False

    def _time_out(self, conversation: Conversation, index: int, now: float) -> None:
        """Resolve an overdue wait as ``failure``/``timeout`` and run its flow on.

        In real time the flow's scripts run off the event loop, so the resolution continues in a
        task of its own; until it commits, the passed deadline already refuses calls (410).
        """
        if self._nursery is not None and not scripts_run_inline():
            self._nursery.start_soon(self._time_out_async, conversation, index, now)
        else:
            self._resolve(conversation, index, "failure", "timeout", now)

    async def _time_out_async(self, conversation: Conversation, index: int, now: float) -> None:
        try:
            await self._resolve_async(conversation, index, "failure", "timeout", now)
        except Exception:
            self._retry_later(conversation.key, index, now)

    def _retry_later(self, key: str, index: int, now: float) -> None:
        """A timeout's resolution failed and rolled back (nothing changed): try again shortly.

        Keeps the scheduler alive for every other wait instead of losing this one's deadline.
        """
        log.exception("could not resolve a timed-out wait; retrying", extra={"block_index": index})
        heapq.heappush(self._deadlines, (now + RETRY_AFTER_S, next(self._sequence), key, index))
        if self._wake is not None:
            self._wake.set()

    def _resolve_orphans(self, now: float) -> None:
        """Resolve overdue waits that no live process's timer covers (see the module docstring).

        A failure (say, the file is locked for longer than SQLite's busy timeout) rolls back and
        is retried at the next poll; it never stops the scheduler.
        """
        try:
            overdue = self.store.overdue_waits(now, ORPHANS_PER_POLL)
        except Exception:
            log.exception("could not look for orphaned waits; retrying at the next poll")
            return
        for key, index in overdue:
            try:
                conversation = self.store.get_conversation(key)
                if conversation is None or index >= len(conversation.waits):
                    continue
                wait = conversation.waits[index]
                # Re-checked on trio's clock: the query compared unix seconds, which may round.
                if not (wait.is_open and wait.deadline <= now and conversation.open_wait is wait):
                    continue
                self._time_out(conversation, index, now)
            except Exception:
                log.exception("could not resolve an orphaned wait; retrying at the next poll")
                continue
            self.stats.observe_lateness(now - wait.deadline)

    def _finished_at(self, conversation: Conversation, now: float) -> None:
        if conversation.status in ("completed", "errored"):
            self._finished.append((now, conversation.key))

    def _sweep(self, now: float) -> None:
        """Let conversations finished at least ``retention`` seconds ago leave memory."""
        finished = self._finished
        while finished and finished[0][0] + self.retention <= now:
            self.store.forget(finished.popleft()[1])

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
        strings that are not valid Unicode. Its scripts run inline, holding the caller up to the
        step's 1 s budget; a server uses :meth:`start_conversation_async`.
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
        return bot, conversation

    def _started(self, conversation: Conversation) -> Conversation:
        self.store.add_conversation(conversation)
        if conversation.open_wait is not None:
            self._arm(conversation)
        self._finished_at(conversation, trio.current_time())
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
        self.store.forget(key)

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
        return True

    async def _resolve_async(self, conversation: Conversation, index: int, outcome: Outcome, reason: Reason,
                             now: float, mapped: dict[str, Any] | None = None) -> bool:
        """:meth:`_resolve` whose scripts, in real time, run off the event loop.

        The wait is resolved before the first await, so from then on calls find it resolved; the
        conversation is ``running`` until its step ends.
        """
        wait = conversation.waits[index]
        bot = self.get_bot(conversation.bot)
        with conversation.rollback_on_error():
            wait.resolve(outcome, reason, now)
            conversation.variables.update(mapped or {})
            await advance_async(conversation, bot, bot.blocks[wait.block].edges[outcome], now)
            if not self.store.commit(conversation, resolved_wait=index):
                return False
        self._resolved(conversation, wait, now)
        return True

    def _resolved(self, conversation: Conversation, wait: Wait, now: float) -> None:
        """Count, show and log a committed resolution; arm the wait the flow opened next, if any."""
        if conversation.open_wait is not None:
            self._arm(conversation)
        self._finished_at(conversation, trio.current_time())
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
        ``wait_expired`` is recorded in the conversation's ``late_calls``. The flow's scripts run
        inline; a server uses :meth:`deliver_async`.
        """
        delivery, now = self._check_call(bot_id, block_id, payload)
        index = len(delivery.conversation.waits) - 1
        resolved = self._resolve(delivery.conversation, index, "success", "received", now, delivery.mapped)
        return self._settled(delivery, resolved, now)

    async def deliver_async(self, bot_id: str, block_id: str, payload: dict[str, Any]) -> Delivery:
        """:meth:`deliver` whose scripts, in real time, run off the event loop.

        The checks and the resolution still happen with no await between them (atomically); only
        the flow after the resolution awaits its scripts, the conversation ``running`` meanwhile.
        Under ``MockClock`` it *is* :meth:`deliver`.
        """
        if scripts_run_inline():
            return self.deliver(bot_id, block_id, payload)
        delivery, now = self._check_call(bot_id, block_id, payload)
        index = len(delivery.conversation.waits) - 1
        resolved = await self._resolve_async(delivery.conversation, index, "success", "received", now, delivery.mapped)
        return self._settled(delivery, resolved, now)

    def _settled(self, delivery: Delivery, resolved: bool, now: float) -> Delivery:
        if not resolved:
            # Another process sharing the store resolved this wait between our read and our write.
            block_id = delivery.wait.block
            self._refuse_if_expired(self.get_conversation(delivery.conversation.key), block_id, now)
            raise Refused("not_waiting", f"the conversation is not waiting at {block_id!r} (resolved elsewhere)")
        return delivery

    def _check_call(self, bot_id: str, block_id: str, payload: dict[str, Any]) -> tuple[Delivery, float]:
        """Every refusal check of a call, in the contract's order; the mapping it would apply."""
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
        return Delivery(conversation=conversation, wait=wait, mapped=mapped, missing=missing), now

    def _refuse_if_expired(self, conversation: Conversation, block_id: str, now: float) -> None:
        """``wait_expired`` when the latest wait at the block reached its deadline without a valid call.

        The refused call is recorded as a late call: a customer who acted (paid) but was told
        the flow failed.
        """
        latest = conversation.latest_wait_at(block_id)
        if latest is None or not latest.expired_at(now):
            return
        # Never negative: another process's timer may resolve a wait a moment before our clock gets there.
        late = {"block": block_id, "at": now, "after_deadline_s": max(0.0, now - latest.deadline)}
        self.store.add_late_call(conversation, late)
        self.stats.late_calls += 1
        self.recent_late_calls.append({
            "at": self.clock.iso(now), "bot": conversation.bot, "block": block_id,
            "conversation": conversation.key[:8] + "…", "after_deadline_s": late["after_deadline_s"],
        })
        raise Refused("wait_expired", f"the wait at {block_id!r} reached its deadline without a valid call")
