"""The gate: conversations, waits, deadlines and exactly-once resolution. No HTTP here.

How a wait resolves exactly once
--------------------------------
There is one path per operation, ``async`` throughout (:meth:`Gate.deliver`,
:meth:`Gate.start_conversation`, the timer's resolution), and two ways it stays exactly-once:

* **On the memory store**, whose methods never yield, and with scripts inline (``MockClock``),
  nothing between a call's checks ("is this wait open? has its deadline passed?") and its
  resolution lets another task run; a second call, or the deadline timer, sees the resolved wait
  and is refused or does nothing. In real time the wait is resolved on the live object before the
  flow's scripts are awaited, so the same holds.
* **On a shared store** (SQLite, PostgreSQL) the gate works on its own copy and the store's
  conditional commit is the arbiter. A lost commit is never an answer by itself: the gate re-reads
  the stored conversation and decides from the real state — 410 or 409 if the wait is resolved,
  another try if it is still open (its version moved because of, say, a held early call).

The HTTP adapter reads the whole body *before* calling :meth:`Gate.deliver`.

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

Early calls (SPEC §14.1)
------------------------
A call for a block with ``early_s > 0`` that comes before its conversation ever opened a wait
there is *held* in the store (202). When the flow opens that wait less than ``early_s`` after the
held call, the wait resolves in the same step as ``success``/``received_early`` with the held
payload mapped. Reading shows a held call ``expired`` once its time passed or the conversation
finished; the scheduler's periodic poll writes that down in shared stores (no task per call).

A store that cannot answer raises :class:`~harness.core.store.StoreUnavailable` out of any of
these methods, having changed nothing; the scheduler backs off and retries its timeouts.

Usage::

    gate = Gate(store=MemoryStore(), public_url="http://127.0.0.1:8000")
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.add_bot(load_bot("scenarios/bots/payment.toml"))
        conversation = await gate.start_conversation("payment")
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .bots import Block, Bot, InvalidBot, parse_bot
from .conversations import Conversation, EarlyCall, Outcome, Reason, Wait, WallClock, new_conversation_key
from .errors import Refused
from .flow import advance
from .jsonsafe import UnsafeValue, check_json_value
from .store import Store, StoreUnavailable
from .virtual_time import in_virtual_time

__all__ = ["Gate", "Delivery", "GateStats"]

log = logging.getLogger("harness.gate")

# Timer lateness buckets (seconds) for the metrics histogram.
RECENT = 50
DEFAULT_RETENTION_S = 3600.0
SWEEP_EVERY_S = 30.0
ORPHAN_POLL_S = 1.0
ORPHANS_PER_POLL = 1000
RETRY_AFTER_S = 1.0  # a timeout whose resolution failed (e.g. the database was locked) is retried this soon
CLAIMED_RETRY_S = 0.05  # a deadline met while a call's resolution of the same wait is in flight here
HEALTH_CACHE_S = 0.25  # /healthz probes the store at most this often (a burst of probes costs one)
HEALTH_PROBE_S = 0.5  # a probe that takes longer reports the store as not answering
MAX_ATTEMPTS = 20  # re-reads of a conversation whose stored version keeps moving under a call
EXPIRY_SLICE_S = 0.05  # the scheduler yields to other tasks after expiring waits for this long
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, math.inf)


@dataclass(slots=True)
class Delivery:
    """What an accepted webhook call did: resolved ``wait``, or was ``held`` as an early call."""

    conversation: Conversation
    wait: Wait | None
    mapped: dict[str, Any]
    missing: list[str]
    held: EarlyCall | None = None


class _Lost(Exception):
    """The store's conditional commit lost: the conversation changed since it was read."""


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
    """Holds bots and conversations and decides every webhook call and every timeout.

    ``new_key`` draws conversation keys (default: 192 bits from the OS); an in-process run passes
    one fed by its seed, so its keys repeat with the seed (SPEC §15.5).
    """

    def __init__(self, *, store: Store, public_url: str = "http://127.0.0.1:8000",
                 clock: WallClock | None = None, retention: float = DEFAULT_RETENTION_S,
                 new_key: Callable[[], str] | None = None) -> None:
        if not retention >= 0:
            raise ValueError("retention must be a number of seconds >= 0")
        self.store = store
        self.retention = retention
        self.public_url = public_url.rstrip("/")
        self.clock = clock if clock is not None else WallClock()
        self.new_key = new_key if new_key is not None else new_conversation_key
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
        self._nursery: trio.Nursery | None = None  # timeouts resolved in tasks of their own, in real time
        # Waits whose resolution by a call is in flight in this process (key, index): the timer
        # leaves them to that call (on a shared store its commit would otherwise lose to ours).
        self._resolving: set[tuple[str, int]] = set()
        self._store_down_until = -math.inf  # trio time: the scheduler leaves the store alone until then
        self._health: tuple[float, str | None] = (-math.inf, None)  # (checked at, reason or None)

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
        try:
            for key, index, deadline in await self.store.open_waits():
                self._arm(key, index, deadline)
            task_status.started()
            next_sweep = trio.current_time() + SWEEP_EVERY_S
            next_poll = trio.current_time() + ORPHAN_POLL_S if self.store.shared else math.inf
            async with trio.open_nursery() as self._nursery:
                while True:
                    now = trio.current_time()
                    if now >= self._store_down_until:
                        while await self._expire_due(trio.current_time()):
                            await trio.sleep(0)  # a long batch: let requests in between
                    now = trio.current_time()
                    if now >= next_poll:
                        await self._poll_shared(now)
                        next_poll = now + ORPHAN_POLL_S
                    if now >= next_sweep:
                        await self._sweep(now)
                        next_sweep = now + SWEEP_EVERY_S
                    next_deadline = self._deadlines[0][0] if self._deadlines else math.inf
                    next_deadline = max(next_deadline, self._store_down_until)
                    with trio.move_on_at(min(next_deadline, next_poll, next_sweep)):
                        await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            self._wake = self._nursery = None

    async def open_wait_count(self) -> int:
        """Waits open in the store right now."""
        return await self.store.open_wait_count()

    def _arm(self, key: str, index: int, deadline: float, *, retry: bool = False) -> None:
        """Schedule a wait's deadline: one heap entry, no task."""
        entry = (deadline, next(self._sequence), key, index)
        if not retry:
            self.stats.waits_opened += 1
        heapq.heappush(self._deadlines, entry)
        if self._deadlines[0] is entry and self._wake is not None:
            self._wake.set()  # the scheduler sleeps until a later deadline: wake it up

    def _arm_open_wait(self, conversation: Conversation) -> None:
        wait = conversation.open_wait
        if wait is not None:
            self._arm(conversation.key, len(conversation.waits) - 1, wait.deadline)

    async def _expire_due(self, now: float) -> bool:
        """Expire the waits whose deadline has come; True if it stopped early with more due.

        Under ``MockClock`` each resolves inline (exact virtual time); in real time each in a task
        of its own, so a slow script or store never holds up the other timeouts.
        """
        heap = self._deadlines
        started = time.perf_counter()
        inline = self._nursery is None or in_virtual_time()
        while heap and heap[0][0] <= now and now >= self._store_down_until:
            if time.perf_counter() - started > EXPIRY_SLICE_S:
                return True
            deadline, _, key, index = heapq.heappop(heap)
            if inline:
                await self._time_out(key, index, deadline, now)
            else:
                assert self._nursery is not None
                self._nursery.start_soon(self._time_out, key, index, deadline, now)
        return False

    async def _time_out(self, key: str, index: int, deadline: float, now: float) -> None:
        """Resolve wait ``index`` of ``key`` as ``failure``/``timeout`` if it is still open.

        Any failure rolls back (nothing changed) and the deadline is tried again shortly; a store
        that cannot answer makes the whole scheduler back off for :data:`RETRY_AFTER_S`.
        """
        try:
            for _ in range(MAX_ATTEMPTS):
                if (key, index) in self._resolving:
                    self._arm(key, index, now + CLAIMED_RETRY_S, retry=True)
                    return
                conversation = await self.store.get_conversation(key)
                if conversation is None or index >= len(conversation.waits) or not conversation.waits[index].is_open:
                    return  # resolved by a call already (here or in another process), or forgotten
                if conversation.open_wait is not conversation.waits[index]:
                    return
                if await self._resolve(conversation, index, "failure", "timeout", now):
                    self.stats.observe_lateness(max(0.0, now - deadline))
                    return
            raise StoreUnavailable("the conversation kept changing")
        except StoreUnavailable as error:
            log.warning("store unavailable while resolving a timed-out wait; retrying: %s", error.reason)
            self._store_down_until = trio.current_time() + RETRY_AFTER_S
            self._arm(key, index, now + RETRY_AFTER_S, retry=True)
        except Exception:
            log.exception("could not resolve a timed-out wait; retrying", extra={"block_index": index})
            self._arm(key, index, now + RETRY_AFTER_S, retry=True)

    async def _poll_shared(self, now: float) -> None:
        """Chores of a store shared between processes (see the module docstring): resolve overdue
        waits no live process's timer covers, and write down held early calls that expired.
        A failure is retried at the next poll; it never stops the scheduler.
        """
        try:
            overdue = await self.store.overdue_waits(now, ORPHANS_PER_POLL)
            await self.store.expire_early_calls(now)
        except StoreUnavailable as error:
            log.warning("store unavailable while polling for overdue waits: %s", error.reason)
            self._store_down_until = trio.current_time() + RETRY_AFTER_S
            return
        except Exception:
            log.exception("could not look for orphaned waits; retrying at the next poll")
            return
        inline = self._nursery is None or in_virtual_time()
        for key, index in overdue:
            if now < self._store_down_until:
                return
            if inline:
                await self._time_out(key, index, now, now)
            else:
                assert self._nursery is not None
                self._nursery.start_soon(self._time_out, key, index, now, now)

    def _finished_at(self, conversation: Conversation, now: float) -> None:
        if conversation.finished:
            self._finished.append((now, conversation.key))

    async def _sweep(self, now: float) -> None:
        """Let conversations finished at least ``retention`` seconds ago leave memory."""
        finished = self._finished
        while finished and finished[0][0] + self.retention <= now:
            await self.store.forget(finished.popleft()[1])

    async def health(self) -> str | None:
        """None when the store answers; otherwise why not (for ``/healthz``). Probed at most once
        per :data:`HEALTH_CACHE_S`, and never for longer than :data:`HEALTH_PROBE_S`."""
        checked_at, reason = self._health
        now = time.monotonic()
        if now - checked_at < HEALTH_CACHE_S:
            return reason
        reason = "the store did not answer in time"
        with trio.move_on_after(HEALTH_PROBE_S):
            try:
                await self.store.probe()
                reason = None
            except StoreUnavailable as error:
                reason = error.reason
        self._health = (time.monotonic(), reason)
        return reason

    # -- bots ---------------------------------------------------------------------------------

    async def add_bot(self, bot: Bot) -> Bot:
        """Register ``bot``; refuse an id that is taken (``bot_exists``)."""
        await self.store.add_bot(bot)
        return bot

    async def create_bot(self, document: Any) -> Bot:
        """Validate and register a bot document (``POST /api/bots``).

        Refuses with ``invalid_bot`` listing every problem (in ``problems``), or ``bot_exists``.
        """
        try:
            bot = parse_bot(document)
        except InvalidBot as error:
            problems = [problem.as_dict() for problem in error.problems]
            raise Refused("invalid_bot", f"{len(problems)} problem(s) in the bot", problems=problems) from None
        return await self.add_bot(bot)

    async def get_bot(self, bot_id: str) -> Bot:
        """The bot, or ``unknown_bot``."""
        bot = await self.store.get_bot(bot_id)
        if bot is None:
            raise Refused("unknown_bot", f"no bot with id {bot_id!r}")
        return bot

    def bot_document(self, bot: Bot) -> dict[str, Any]:
        """What the API shows of a bot: its document (secrets redacted) and its webhook URLs."""
        return {**bot.public_dict(), "webhooks": self.webhook_urls(bot)}

    def webhook_urls(self, bot: Bot) -> dict[str, str]:
        return {block: f"{self.public_url}/webhooks/{bot.id}/{block}" for block in bot.webhook_blocks()}

    async def webhook_block(self, bot_id: str, block_id: str) -> Block:
        """The webhook block behind ``/webhooks/{bot_id}/{block_id}``, or ``unknown_webhook``."""
        bot = await self.store.get_bot(bot_id)
        block = bot.blocks.get(block_id) if bot is not None else None
        if block is None or block.type != "webhook":
            raise Refused("unknown_webhook", f"no webhook block {block_id!r} in bot {bot_id!r}")
        return block

    # -- conversations ------------------------------------------------------------------------

    async def start_conversation(self, bot_id: str, variables: dict[str, Any] | None = None) -> Conversation:
        """Start a conversation and run it to its first wait or end.

        ``variables`` (a JSON object of plain data) are set before the start; refused with
        ``invalid_payload`` when they are not an object, nest deeper than 64 levels or hold
        strings that are not valid Unicode.
        """
        bot = await self.get_bot(bot_id)
        if self._wake is None:
            raise RuntimeError("the gate's scheduler is not running: `await nursery.start(gate.run)` first")
        if variables is not None and not isinstance(variables, dict):
            raise Refused("invalid_payload", "variables must be a JSON object")
        try:
            if variables:
                check_json_value(variables)
        except UnsafeValue as error:
            raise Refused("invalid_payload", f"variables: {error}") from None
        now = trio.current_time()
        key = self.new_key()
        url = f"{self.public_url}/c/{key}"
        conversation = Conversation(key=key, bot=bot.id, url=url, started_at=now)
        conversation.variables.update(variables or {})
        conversation.variables.update({"conversation_key": key, "Conversation URL": url})
        await self._run_flow(conversation, bot, bot.start, now)
        await self.store.add_conversation(conversation)
        self._arm_open_wait(conversation)
        self._finished_at(conversation, trio.current_time())
        return conversation

    async def get_conversation(self, key: str) -> Conversation:
        conversation = await self.store.get_conversation(key)
        if conversation is None:
            raise Refused("unknown_conversation", "no conversation has that key")
        return conversation

    async def forget(self, key: str) -> None:
        """Let a conversation go from memory: its owner is done with it (the in-process runner, once
        it has read the outcome and no call to it is left). On the memory store it is then gone
        (404, and a deadline still in the heap is skipped); a store on disk keeps it there.
        """
        await self.store.forget(key)

    async def _run_flow(self, conversation: Conversation, bot: Bot, block_id: str | None, now: float) -> list[Wait]:
        """Run the flow from ``block_id``; a wait it opens where a held early call is pending
        resolves at once with that call (``received_early``) and the flow goes on. Returns the
        waits so resolved. A conversation that finishes lets its pending early calls expire."""
        used: list[Wait] = []
        while True:
            wait = await advance(conversation, bot, block_id, now)
            if wait is None:
                for held in conversation.early_calls:
                    if held.outcome == "pending":
                        held.outcome = "expired"
                return used
            early = conversation.pending_early_call(wait.block, wait.opened_at) if conversation.early_calls else None
            if early is None:
                return used
            block = bot.blocks[wait.block]
            early.outcome = "used"
            now = wait.opened_at
            wait.resolve("success", "received_early", now)
            conversation.variables.update(_mapped(block, early.payload)[0])
            used.append(wait)
            block_id = block.edges["success"]

    async def _resolve(self, conversation: Conversation, index: int, outcome: Outcome, reason: Reason, now: float,
                       mapped: dict[str, Any] | None = None) -> bool:
        """Resolve wait ``index``, run the flow on along its edge, and commit it all as one step.

        Either the store has it all, or — if anything fails on the way, or the store's conditional
        commit loses (then this returns False) — the conversation is exactly as it was: a 5xx
        means nothing changed. The wait is resolved before the first await, so on the memory
        store other tasks see it resolved from then on.
        """
        claim = (conversation.key, index)
        self._resolving.add(claim)
        wait = conversation.waits[index]
        try:
            with conversation.rollback_on_error():
                wait.resolve(outcome, reason, now)
                conversation.variables.update(mapped or {})
                bot = await self.get_bot(conversation.bot)
                early = await self._run_flow(conversation, bot, bot.blocks[wait.block].edges[outcome], now)
                if not await self.store.commit(conversation, resolved_wait=index):
                    raise _Lost
        except _Lost:
            return False
        finally:
            self._resolving.discard(claim)
        self._arm_open_wait(conversation)
        self._finished_at(conversation, trio.current_time())
        for resolved in (wait, *early):
            self._resolved(conversation, resolved, resolved.resolved_at if resolved is not wait else now)
        return True

    def _resolved(self, conversation: Conversation, wait: Wait, now: float | None) -> None:
        """Count, show and log a committed resolution."""
        self.stats.resolutions[(wait.outcome or "", wait.reason or "")] += 1
        self.recent_resolutions.append({  # "at" in trio time: formatted when shown, not per resolution
            "at": now, "bot": conversation.bot, "block": wait.block,
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

    async def deliver(self, bot_id: str, block_id: str, payload: dict[str, Any]) -> Delivery:
        """Decide a webhook call whose body has been read, parsed and (if needed) verified.

        The key is the payload's value at the block's ``key_path``. Refusals, in the contract's
        order: ``unknown_webhook``, ``missing_conversation_key``, ``unknown_conversation``,
        ``wait_expired``, ``not_waiting`` (or ``already_held``); the last four carry the call's key
        as ``Refused.conversation_key``. A refusal changes nothing, except that a ``wait_expired``
        is recorded in the conversation's ``late_calls``. A call that comes before its
        conversation reached a block with ``early_s`` is held (``Delivery.held``).

        The decision is always taken on the stored state: when a shared store's commit loses, the
        conversation is read again and the call decided anew, with its arrival time.
        """
        block = await self.webhook_block(bot_id, block_id)
        found, key = block.key_path.extract(payload)
        if not found or not isinstance(key, str) or not key:
            raise Refused("missing_conversation_key",
                          f"the payload needs a non-empty string at {block.key_path.text!r}")
        now = trio.current_time()
        for _ in range(MAX_ATTEMPTS):
            conversation = await self.store.get_conversation(key)
            if conversation is None or conversation.bot != bot_id:
                raise Refused("unknown_conversation", f"no conversation of bot {bot_id!r} has that key",
                              conversation_key=key)
            latest = conversation.latest_wait_at(block_id)
            if latest is not None and latest.expired_at(now):
                await self._refuse_late(conversation, latest, now)
            wait = conversation.open_wait
            if wait is None or wait.block != block_id:
                if block.early_s > 0 and not conversation.finished and conversation.latest_wait_at(block_id) is None:
                    held = await self._hold(conversation, block, payload, now)
                    if held is None:
                        continue  # the conversation changed meanwhile: decide on its new state
                    return Delivery(conversation=conversation, wait=None, mapped={}, missing=[], held=held)
                where = f"waiting at {wait.block!r}" if wait else conversation.status
                raise Refused("not_waiting", f"the conversation is not waiting at {block_id!r} (it is {where})",
                              conversation_key=key)
            mapped, missing = _mapped(block, payload)
            if await self._resolve(conversation, len(conversation.waits) - 1, "success", "received", now, mapped):
                return Delivery(conversation=conversation, wait=wait, mapped=mapped, missing=missing)
            # Lost to another task or process: read the real state again and decide from it.
        raise StoreUnavailable("the conversation kept changing; try again")

    async def _hold(self, conversation: Conversation, block: Block, payload: dict[str, Any],
                    now: float) -> EarlyCall | None:
        """Hold an early call, or ``already_held``; None when the stored conversation moved on."""
        if conversation.pending_early_call(block.id, now) is not None:
            raise Refused("already_held", f"an early call for {block.id!r} is already held for this conversation",
                          conversation_key=conversation.key)
        early = EarlyCall(block=block.id, at=now, expires_at=now + block.early_s, payload=payload)
        if not await self.store.hold_early_call(conversation, early):
            return None
        return early

    async def _refuse_late(self, conversation: Conversation, latest: Wait, now: float) -> None:
        """``wait_expired``: the latest wait at the block reached its deadline without a valid call.

        The refused call is recorded as a late call: a customer who acted (paid) but was told
        the flow failed.
        """
        block_id = latest.block
        # Never negative: another process's timer may resolve a wait a moment before our clock gets there.
        late = {"block": block_id, "at": now, "after_deadline_s": max(0.0, now - latest.deadline)}
        await self.store.add_late_call(conversation, late)
        self.stats.late_calls += 1
        self.recent_late_calls.append({
            "at": now, "bot": conversation.bot, "block": block_id,
            "conversation": conversation.key[:8] + "…", "after_deadline_s": late["after_deadline_s"],
        })
        raise Refused("wait_expired", f"the wait at {block_id!r} reached its deadline without a valid call",
                      conversation_key=conversation.key)


def _mapped(block: Block, payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The variables a call's payload sets through the block's mappings, and those it leaves unset."""
    mapped: dict[str, Any] = {}
    missing: list[str] = []
    for variable, path in block.mappings:
        found, value = path.extract(payload)
        if found:
            mapped[variable] = value
        else:
            missing.append(variable)
    return mapped, missing
