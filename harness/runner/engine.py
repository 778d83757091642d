"""The runner: drives a scenario's sub-cases through a :class:`~harness.runner.drivers.Driver`.

Each conversation has three roles, played in turn by one event schedule (a heap of
``(time, sequence, step, party)``, not a task per conversation):

1. the *user* starts the conversation at its arrival time; the wait opens before the 201 comes
   back, so delays count from the 201's receipt;
2. the *third party* calls ``delay_s`` later, then makes its other ``calls`` spaced by
   ``call_gap_s`` (each no earlier than the previous answer), with the case's key and signature
   modes; with ``retry``, an answer that matches ``retry.on`` brings another attempt after the
   next delay, counted from that answer, until a 2xx or the delays run out (each of the ``calls``
   has its own chain of retries, as a sender retries each delivery); ``late_calls`` counts this
   party's answers 410;
3. the *observer*, once the party has no call left, waits until the wait is resolved (a 200 naming
   this key) or its deadline has passed, then reads the conversation from the gate: the gate, not
   the runner, says what the outcome was. Its row is written then, and nothing else of the
   conversation is kept: an in-process gate is told to :meth:`~harness.core.gate.Gate.forget` it
   once no other party will call its key either.

In virtual time the schedule runs each step inline (one request at a time: the clock does not
move while anything runs, so concurrency would buy nothing and cost a task each). Against a live
gate each step is its own task, so requests overlap up to the driver's limit, and the schedule
sleeps on the real clock in between.

``resolved_by`` comes from the 200s: the party whose call was accepted for a key resolved that
key's wait. All randomness comes from ``numpy.random.default_rng([seed, case position])``, drawn
for the whole case (all ``n`` values, then the slice a shard runs): the draws do not depend on
the other cases or on how the run is spread, and the sub-cases of a sweep share them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import itertools
import json
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import numpy as np
import trio

from ..core.bots import Block, Bot, parse_bot
from ..core.signing import signature_headers
from ..core.virtual_time import virtual_clock
from .drivers import TRANSPORT_ERRORS, Driver, Observed
from .results import ResultBlock
from .scenario import Party, Scenario, SubCase

__all__ = ["RunError", "RunInterrupted", "Plan", "SeededKeys", "execute", "derangement", "whole_plans"]

CONTENT_TYPES = {"json": "application/json", "form": "application/x-www-form-urlencoded"}
REAL_TIME_MARGIN_S = 0.05  # how long after a deadline a live run first looks for the timeout
LIVE_START_SLOTS = 16  # starts in flight at most against a live gate (of the driver's 64 connections)
MAX_POLL_S = 30.0  # a wait still open this long after its deadline is reported as unresolved
_SENTINEL = "\x00harness-key\x00"
_NONE = -1
FINISHED = ("completed", "errored")  # a conversation in these opens no more waits
NEVER_OPENED = "never_opened"  # the reason of a party whose block's wait never opened (SPEC §14.3)


class SeededKeys:
    """Conversation keys drawn from the run's seed, for an in-process gate's ``new_key`` hook (SPEC §15.5).

    The engine names the conversation it is about to start (:meth:`next_for`); the gate's next
    ``new_key()`` returns a key derived from (seed, scenario, sub-case, conversation): the same
    key whether the run is one process or many shards, and whatever order starts happen in.
    A served gate never uses this; its keys come from the OS's randomness.

    >>> keys = SeededKeys(7, "demo"); keys.next_for(0, 3); first = keys()
    >>> keys.next_for(0, 3); first == keys() and len(first) == 32
    True
    """

    def __init__(self, seed: int, scenario: str) -> None:
        self.prefix = f"{seed}\x00{scenario}\x00".encode()
        self.pending: str | None = None

    def next_for(self, subcase: int, conversation: int) -> None:
        digest = hashlib.blake2b(self.prefix + f"{subcase}\x00{conversation}".encode(), digest_size=24).digest()
        self.pending = base64.urlsafe_b64encode(digest).decode("ascii")

    def __call__(self) -> str:
        key, self.pending = self.pending, None
        if key is None:  # a start the engine did not announce (another client of the gate)
            return base64.urlsafe_b64encode(os.urandom(24)).decode("ascii")
        return key


class RunError(RuntimeError):
    """The run could not proceed (the gate refused the bot, or is unreachable)."""


class RunInterrupted(Exception):
    """Ctrl+C (or SIGTERM, which the CLI turns into one) stopped the run.

    ``finished`` holds the result blocks of the conversations that had finished, so the caller
    can still write and report them (SPEC §16.2).
    """

    def __init__(self, finished: list[ResultBlock]) -> None:
        super().__init__(f"interrupted after {sum(block.length for block in finished)} conversations")
        self.finished = finished


def _is_interrupt(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return any(_is_interrupt(inner) for inner in error.exceptions)
    return isinstance(error, (KeyboardInterrupt, RunInterrupted))


def derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (n >= 2)."""
    indices = np.arange(n)
    while True:  # about e tries on average
        permutation = rng.permutation(n)
        if not np.any(permutation == indices):
            return permutation


def random_key(rng: np.random.Generator) -> str:
    """A well-formed key (192 bits, base64url) that no conversation has."""
    return base64.urlsafe_b64encode(rng.bytes(24)).decode("ascii")


async def register_bot(driver: Driver, bot: Bot) -> str:
    """Make sure the gate has ``bot``; return the id it is known by there.

    An id taken by a bot with other content gets a content-derived id instead
    (``payment.3f2a9c1e``), so the run never uses someone else's flow. The API never shows
    secrets, so a taken plain id is only reused for a bot without secrets; a taken derived id
    is reused when its visible content matches (its name already encodes the secret's hash).
    """
    wanted = bot.to_dict()
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:8]
    for bot_id, reusable in ((bot.id, not bot.has_secrets), (f"{bot.id}.{digest}", True)):
        document = {**wanted, "id": bot_id}
        response = await driver.request("POST", "/api/bots", json=document)
        if response.status_code == 201:
            return bot_id
        if response.status_code == 409:
            existing = await driver.request("GET", f"/api/bots/{bot_id}")
            if reusable and existing.status_code == 200:
                remote = {k: v for k, v in existing.json().items() if k != "webhooks"}
                if remote == parse_bot(document).public_dict():
                    return bot_id
            continue
        raise RunError(f"the gate refused bot {bot_id!r}: {response.status_code} {response.text[:500]}")
    raise RunError(f"bot ids {bot.id} and {bot.id}.{digest} are both taken by bots with other content")


async def register_bots(scenario: Scenario, subcases: list[SubCase],
                        driver: Driver) -> dict[tuple[tuple[tuple[str, int], ...], float], str]:
    """The bot id to use for each bot variant the sub-cases need (:meth:`SubCase.bot_variant`).

    The bot as written where no party overrides a timeout; else a derived copy, e.g.
    ``payment.t30`` (the first webhook block at 30 s) or ``two.wait_captured.t5``; a time-scaled
    run's copy also has its ``early_s`` windows scaled (``two.t3.wait_captured.t3.e0.05``).
    """
    ids: dict[tuple[tuple[tuple[str, int], ...], float], str] = {}
    for subcase in subcases:
        variant = subcase.bot_variant()
        if variant in ids:
            continue
        slot, early_scale = variant
        if not slot and early_scale == 1:
            ids[variant] = await register_bot(driver, scenario.bot)
            continue
        first = scenario.bot.first_webhook()
        copy_id = scenario.bot.id + "".join(f".t{timeout}" if block == first else f".{block}.t{timeout}"
                                            for block, timeout in slot)
        if early_scale != 1:
            copy_id += f".e{early_scale:.4g}"
        if len(copy_id) > 100:  # ids are at most 128 characters; register_bot may add a digest
            copy_id = f"{scenario.bot.id[:80]}.t{hashlib.sha256(repr(variant).encode()).hexdigest()[:8]}"
        ids[variant] = await register_bot(driver, scenario.bot.with_timing(copy_id, dict(slot), early_scale))
    return ids


@dataclass(frozen=True)
class Plan:
    """Conversations ``start <= index < stop`` of sub-case ``subcase`` (a shard may run a slice)."""

    subcase: int  # SubCase.index
    start: int
    stop: int


def whole_plans(scenario: Scenario) -> list[Plan]:
    return [Plan(subcase.index, 0, subcase.conversations) for subcase in scenario.subcases]


class BodyTemplate:
    """The body a third party sends, with the key written at the block's ``key_path`` (SPEC §8.1).

    The payload is encoded once with a placeholder at the key's place; each call then only
    encodes its key, which gives the very bytes that encoding the merged document would.
    Nested tables on the way are created; a form's key is the field named by the path.
    """

    def __init__(self, payload: dict[str, Any], block: Block, encoding: str) -> None:
        self.encoding = encoding
        self.without_key = _encode(payload, encoding)
        if encoding == "form":
            document = {**payload, block.key_path.text: _SENTINEL}
            placeholder = quote_plus(_SENTINEL)
        else:
            document = _with_value_at(payload, block.key_path.steps, _SENTINEL)
            placeholder = json.dumps(_SENTINEL)
        self.prefix, _, self.suffix = _encode(document, encoding).partition(placeholder.encode())

    def render(self, key: Any, *, missing: bool = False) -> bytes:
        if missing:
            return self.without_key
        text = quote_plus(str(key)) if self.encoding == "form" else json.dumps(key)
        return self.prefix + text.encode() + self.suffix


def _with_value_at(document: Any, steps: tuple[str | int, ...], value: Any) -> Any:
    """A copy of ``document`` with ``value`` at ``steps`` (tables created, lists padded)."""
    if not steps:
        return value
    step, rest = steps[0], steps[1:]
    if isinstance(step, int):
        items = list(document) if isinstance(document, list) else []
        items.extend([None] * (step + 1 - len(items)))
        items[step] = _with_value_at(items[step], rest, value)
        return items
    table = dict(document) if isinstance(document, dict) else {}
    table[step] = _with_value_at(table.get(step), rest, value)
    return table


def _encode(document: dict[str, Any], encoding: str) -> bytes:
    """The body a third party sends: JSON, or a form where a list becomes a repeated field."""
    if encoding == "json":
        return json.dumps(document).encode()
    fields = {name: [_form_text(v) for v in value] if isinstance(value, list) else _form_text(value)
              for name, value in document.items()}
    return urlencode(fields, doseq=True).encode()


def _form_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)  # true/false, as JSON would say


class _Conversation:
    """One conversation in flight: its key, when its 201 came, and who still needs it in the gate."""

    __slots__ = ("index", "key", "opened_at", "started", "calls", "holds", "rows_left", "waiting")

    def __init__(self, index: int) -> None:
        self.index = index  # within the sub-case
        self.key: str | None = None
        self.opened_at = math.nan
        self.started = False  # its start has returned (201 or refusal): its key is known
        self.calls: list[_Call] = []  # one per party, once started
        # Who still needs the conversation in the gate: each party's observer, and each `other`
        # caller carrying its key. May dip below 0 before the start adds its count.
        self.holds = 0
        self.rows_left = 0
        self.waiting: list[_Call] | None = None  # `other` callers waiting for this conversation's key


class _Call:
    """One party of one conversation: its calls so far and what its observer needs."""

    __slots__ = ("run", "conversation", "body", "first_call_s", "statuses", "pending", "next_call", "resolved",
                 "answer", "observe_at", "errors", "done")

    def __init__(self, run: _PartyRun, conversation: _Conversation) -> None:
        self.run = run
        self.conversation = conversation
        self.body: bytes | None = None
        self.first_call_s = math.nan
        self.statuses: list[int] = []
        self.pending = 0  # calls scheduled or in flight
        self.next_call = 0
        self.resolved = False  # a 200 named this conversation's key at this party's block
        self.answer: Observed | None = None  # live: what that 200 said, when it says enough
        self.observe_at = math.inf  # when the observer is due (inf: not yet scheduled)
        self.errors: list[str] | None = None
        self.done = False


class _PartyRun:
    """One party of a plan: its random draws, how it calls, and its result columns."""

    def __init__(self, sub: _SubCaseRun, scenario: Scenario, position: int, party: Party,
                 rng: np.random.Generator, draw_starts: Callable[[], None]) -> None:
        self.sub, self.party, self.position = sub, party, position
        n, window = sub.subcase.conversations, sub.window
        self.delays = party.delay.sample(rng, n)[window].astype(float) * sub.subcase.time_scale
        draw_starts()  # the first party's stream draws the arrivals here: rows as before parties existed
        self.targets: np.ndarray | None = None
        if party.key == "other":
            self.targets = derangement(rng, n)[window]  # `other` is never sliced: its keys depend on each other
        self.unknown_keys = [random_key(rng) for _ in range(n)][window] if party.key == "random" else None
        block = scenario.bot.blocks[party.block]
        self.block = block
        self.body = BodyTemplate(party.payload, block, party.encoding)
        self.content_type = CONTENT_TYPES[party.encoding]
        self.signed = bool(block.secret)
        self.answer_suffices = (party.expect is None or party.expect.variables is None) and not _reenters(scenario.bot, block.id)
        self.same_block = [p for p, other in enumerate(sub.subcase.parties) if other.block == party.block]
        count = sub.count
        self.statuses_text: dict[tuple[int, ...], str] = {}  # one string object per distinct pattern
        self.first_call = np.full(count, np.nan)
        self.statuses: list[str] = [""] * count
        self.first_status = np.zeros(count, dtype=np.int64)
        self.late_calls = np.zeros(count, dtype=np.int64)
        self.outcome: list[str | None] = [None] * count
        self.reason: list[str | None] = [None] * count
        self.waited = np.full(count, np.nan)
        self.resolved_by = np.full(count, _NONE, dtype=np.int64)
        self.held_by = np.full(count, _NONE, dtype=np.int64)  # whose held (202) call this conversation's block got
        self.conversation_status: list[str | None] = [None] * count
        self.passed = np.full(count, _NONE, dtype=np.int8)
        self.failure: list[str | None] = [None] * count
        self.error: list[str | None] = [None] * count
        self.finished = np.zeros(count, dtype=bool)  # rows written (an interrupted run keeps only these)

    # -- the third party -----------------------------------------------------------------------

    def _key_for(self, call: _Call) -> tuple[bool, Any]:
        """``(ready, key)``: the key this party sends, or not ready while its conversation's start is in flight."""
        mode = self.party.key
        slot = call.conversation.index - self.sub.first
        if mode == "correct":
            return True, call.conversation.key
        if mode == "other":
            assert self.targets is not None
            target = self.sub.conversation(int(self.targets[slot]))
            if not target.started:  # not started, or its 201 not in yet: a call never goes out without it
                if target.waiting is None:
                    target.waiting = []
                target.waiting.append(call)
                return False, None
            return True, target.key  # None: it failed to start
        if mode == "random":
            assert self.unknown_keys is not None
            return True, self.unknown_keys[slot]
        return True, {"missing": None, "empty": "", "wrong_type": 12345}[mode]

    def target_of(self, call: _Call) -> int:
        index = call.conversation.index
        return index if self.targets is None else int(self.targets[index - self.sub.first])

    async def call(self, call: _Call, retry: int = -1) -> None:
        """One call of the party: the next scheduled one, or (``retry >= 0``) a retry attempt."""
        if call.done:
            return
        if call.body is None:
            ready, key = self._key_for(call)
            if not ready:
                return  # re-queued when the key's conversation has started
            call.body = self.body.render(key, missing=self.party.key == "missing")
        body = call.body
        engine = self.sub.engine
        now = trio.current_time()
        headers = {"Content-Type": self.content_type}
        if self.signed:
            block = self.block
            headers.update(signature_headers(block.signature_scheme, block.secret, body, unix_time=engine.driver.unix_time(),
                                             mode=self.party.signature, header_name=block.signature_header))
        conversation = call.conversation
        if math.isnan(call.first_call_s):
            call.first_call_s = now - conversation.opened_at
        try:
            status, accepted = await engine.driver.call(self.sub.bot_id, self.party.block, body, headers,
                                                        owner=conversation.key)
        except TRANSPORT_ERRORS as error:
            self.sub.fail(call, _problem(error))
            return
        call.statuses.append(status)
        now = trio.current_time()
        if status in (200, 202) and self.party.key in ("correct", "other"):
            target = self.target_of(call)
            if status == 200:
                self.sub.resolved(self, target, conversation.index, accepted)
            elif self.held_by[target - self.sub.first] == _NONE:
                self.held_by[target - self.sub.first] = conversation.index
        party = self.party
        policy = party.retry
        next_retry = retry + 1
        if policy is not None and next_retry < len(policy.delays_s) and policy.matches(status):
            call.pending += 1
            engine.push(now + policy.delays_s[next_retry], self.call, call, next_retry)
        if retry < 0:
            call.next_call += 1
            if call.next_call < party.calls:
                call.pending += 1
                due = (conversation.opened_at + float(self.delays[conversation.index - self.sub.first])
                       + call.next_call * party.call_gap_s)
                engine.push(max(now, due), self.call, call)
        call.pending -= 1
        if call.pending == 0:
            self.calls_done(call)

    def calls_done(self, call: _Call) -> None:
        """The party will call no more: its observer is due; the key it called may be let go."""
        if self.targets is not None:
            self.sub.release(self.sub.conversation(int(self.targets[call.conversation.index - self.sub.first])))
        if call.resolved:
            self.observe_at(call, trio.current_time())
        else:
            margin = 0.0 if self.sub.engine.driver.virtual else REAL_TIME_MARGIN_S
            self.observe_at(call, max(trio.current_time(), call.conversation.opened_at + self.party.timeout_s + margin))

    # -- the observer --------------------------------------------------------------------------

    def observe_at(self, call: _Call, when: float) -> None:
        call.observe_at = when
        self.sub.engine.push(when, self.observe, call, when)

    async def observe(self, call: _Call, due: float) -> None:
        """Read the conversation: done when this party's first wait at its block is resolved or
        can no longer open (the conversation ended); else look again when its open wait is due."""
        if call.done or due != call.observe_at:
            return  # finished, or brought forward by a resolution: this one is stale
        if call.answer is not None:
            self.finish(call, call.answer)
            return
        conversation = call.conversation
        assert conversation.key is not None
        driver = self.sub.engine.driver
        give_up_at = conversation.opened_at + self.sub.horizon_s
        spins = 0
        while True:
            try:
                observed, problem = await driver.read(conversation.key)
            except TRANSPORT_ERRORS as error:
                observed, problem = None, _problem(error)
            if observed is None:
                self.sub.fail(call, problem or "not read")
                return
            wait = _first_wait(observed, self.party.block)
            now = trio.current_time()
            if (wait is not None and wait[1] is not None) or observed.status in FINISHED or now >= give_up_at:
                break
            if driver.virtual and spins < 3:
                spins += 1
                await trio.sleep(0)  # the deadline is now: let the gate's timer run first
                continue
            # The wait is open (or has not opened yet: the conversation waits elsewhere first):
            # look again when the open wait is due, or shortly (live: the timer may lag).
            due_in = observed.open_deadline_in
            later = driver.poll_interval_s if due_in is None or due_in <= 0 else due_in
            if not driver.virtual:
                later = max(driver.poll_interval_s, later + (REAL_TIME_MARGIN_S if due_in else 0.0))
            self.observe_at(call, now + later)
            return
        self.finish(call, observed)

    # -- results ---------------------------------------------------------------------------------

    def finish(self, call: _Call, observed: Observed | None) -> None:
        """Write the row of this conversation and party; keep nothing else of it."""
        if call.done:
            return
        call.done = True
        slot = call.conversation.index - self.sub.first
        self.finished[slot] = True
        statuses = tuple(call.statuses)
        text = self.statuses_text.get(statuses)
        if text is None:
            text = self.statuses_text[statuses] = ",".join(map(str, statuses))
        self.statuses[slot] = text
        if statuses:
            self.first_status[slot] = statuses[0]
            self.late_calls[slot] = statuses.count(410)
        self.first_call[slot] = call.first_call_s
        wait = _first_wait(observed, self.party.block) if observed is not None else None
        if wait is not None:
            self.outcome[slot], self.reason[slot], self.waited[slot] = wait[1], wait[2], wait[3]
            if wait[2] == "received_early":
                self.resolved_by[slot] = self.held_by[slot]
        elif observed is not None and observed.status in FINISHED:
            self.reason[slot] = NEVER_OPENED
        if observed is not None:
            self.conversation_status[slot] = observed.status
        error = "; ".join(call.errors) if call.errors else None
        self.error[slot] = error
        if self.party.expect is not None:
            problems = _unmet(self.party.expect, error, self.outcome[slot], statuses[0] if statuses else None, observed)
            self.passed[slot] = 0 if problems else 1
            self.failure[slot] = "; ".join(problems) or None
        self.sub.row_done(call.conversation)

    def result(self, scenario: Scenario) -> ResultBlock:
        subcase, party = self.sub.subcase, self.party
        expect = party.expect
        constants = {
            "scenario": scenario.name, "case": subcase.case, "variant": subcase.variant, "party": self.position,
            "bot": self.sub.bot_id, "block": party.block, "conversations": subcase.conversations,
            "timeout_s": party.timeout_s, "key": party.key, "calls": party.calls, "call_gap_s": party.call_gap_s,
            "signature": party.signature if self.signed else None, "arrival_rate": subcase.arrival_rate,
            "expected_outcome": expect.outcome if expect else None,
            "expected_status": expect.status if expect else None,
            "thresholds": "; ".join(t.text for t in party.thresholds) or None,
        }
        sub = self.sub
        columns = {
            "conversation": np.arange(sub.first, sub.first + sub.count), "conversation_key": sub.keys,
            "delay_s": self.delays, "started_at_s": sub.starts, "first_call_s": self.first_call,
            "statuses": self.statuses, "first_status": self.first_status, "held": self.first_status == 202,
            "late_calls": self.late_calls, "outcome": self.outcome, "reason": self.reason, "waited_s": self.waited,
            "resolved_by": self.resolved_by, "conversation_status": self.conversation_status, "passed": self.passed,
            "failure": self.failure, "error": self.error,
        }
        return ResultBlock(sub.count, constants, columns, sort_key=(subcase.index, self.position, sub.first))

    def finished_result(self, scenario: Scenario) -> ResultBlock:
        """:meth:`result` restricted to the conversations whose row was written."""
        block, kept = self.result(scenario), np.flatnonzero(self.finished)
        block.columns = {name: np.asarray(values)[kept] if isinstance(values, np.ndarray) else [values[i] for i in kept]
                         for name, values in block.columns.items()}
        block.length = len(kept)
        return block


class _SubCaseRun:
    """The conversations of one plan (a sub-case or a slice of it): its users, and one
    :class:`_PartyRun` per third party."""

    def __init__(self, engine: _Engine, scenario: Scenario, subcase: SubCase, plan: Plan, bot_id: str) -> None:
        self.engine, self.subcase, self.bot_id = engine, subcase, bot_id
        self.first, self.count = plan.start, plan.stop - plan.start
        self.window = slice(plan.start, plan.stop)
        n = subcase.conversations
        self.starts = np.zeros(self.count)
        # Common random numbers: every sub-case of a case draws the same streams (one per party; the
        # first party's is the case's own, which also draws the arrivals), and a slice takes its part
        # of the whole case's draws, so rows do not depend on how the run is spread.

        def draw_starts(rng: np.random.Generator) -> None:
            if subcase.arrival_rate is not None:
                self.starts = np.cumsum(rng.exponential(1.0 / subcase.arrival_rate, n))[self.window]

        def no_starts() -> None:
            pass

        self.parties: list[_PartyRun] = []
        for position, party in enumerate(subcase.parties):
            rng = np.random.default_rng([scenario.seed, subcase.case_index] + ([position] if position else []))
            self.parties.append(_PartyRun(self, scenario, position, party, rng,
                                          functools.partial(draw_starts, rng) if position == 0 else no_starts))
        self.holds_per_conversation = len(self.parties) + sum(p.targets is not None for p in self.parties)
        # How long after its start a conversation is looked at, at most: every wait it may pass through.
        timeouts = dict(subcase.timeouts())
        self.horizon_s = sum(timeouts.get(block, scenario.bot.blocks[block].timeout_s)
                             for block in scenario.bot.webhook_blocks()) + MAX_POLL_S
        self.conversations: dict[int, _Conversation] = {}  # in flight only
        self.keys: list[str | None] = [None] * self.count

    def conversation(self, index: int) -> _Conversation:
        conversation = self.conversations.get(index)
        if conversation is None:
            conversation = self.conversations[index] = _Conversation(index)
        return conversation

    # -- the user ---------------------------------------------------------------------------------

    def schedule_starts(self, base_time: float) -> None:
        push = self.engine.push
        for offset in range(self.count):
            push(base_time + float(self.starts[offset]), self.start, self.first + offset)

    async def start(self, index: int) -> None:
        conversation = self.conversation(index)
        engine = self.engine
        driver = engine.driver
        if engine.keys is not None:
            engine.keys.next_for(self.subcase.index, index)
        try:
            if engine.start_slots is None:
                key, problem = await driver.start(self.bot_id)
            else:
                async with engine.start_slots:
                    key, problem = await driver.start(self.bot_id)
        except TRANSPORT_ERRORS as error:
            key, problem = None, _problem(error)
        now = trio.current_time()
        conversation.key = self.keys[index - self.first] = key
        conversation.opened_at = now
        conversation.started = True  # only now: an `other` call carrying this key may go out
        conversation.holds += self.holds_per_conversation
        conversation.rows_left = len(self.parties)
        if engine.on_started is not None:
            engine.on_started()
        conversation.calls = [_Call(run, conversation) for run in self.parties]
        for run, call in zip(self.parties, conversation.calls):
            if key is None:
                self.fail(call, problem or "not started")
                if run.targets is not None:  # its caller will never call: let its key's conversation go
                    self.release(self.conversation(int(run.targets[index - self.first])))
                continue
            delay = float(run.delays[index - self.first])
            if math.isnan(delay):
                run.calls_done(call)
            else:
                call.pending = 1
                engine.push(now + delay, run.call, call)
        for caller in conversation.waiting or ():
            engine.push(now, caller.run.call, caller)  # their call waited for our key
        conversation.waiting = None

    # -- resolutions and bookkeeping -------------------------------------------------------------

    def resolved(self, run: _PartyRun, target_index: int, by: int, accepted: dict[str, Any] | None) -> None:
        """A 200 named ``target_index``'s key at ``run``'s block: that wait is resolved, and the
        observers of the parties waiting there need not wait.

        Against a live gate, the 200's answer (``waited_s``, ``conversation_status``) already says
        what the observer would read, when the conversation cannot come back to this block (its
        first wait there is the one resolved) and no variables are expected: one request less.
        """
        for position in run.same_block:
            other = self.parties[position]
            other.resolved_by[target_index - self.first] = by
            target = self.conversations.get(target_index)
            if target is None or not target.calls or target.calls[position].done:
                continue
            call = target.calls[position]
            call.resolved = True
            if (accepted is not None and other.answer_suffices
                    and {"waited_s", "conversation_status"} <= accepted.keys()):
                call.answer = Observed(accepted["conversation_status"],
                                       [(run.party.block, "success", "received", accepted["waited_s"])], {})
            if call.pending == 0 and call.observe_at > trio.current_time():
                other.observe_at(call, trio.current_time())
        # The flow moved on: a later block's wait may have opened and used a held early call at
        # once. Parties that are done calling look now instead of at their own deadline.
        target = self.conversations.get(target_index)
        now = trio.current_time()
        for call in target.calls if target is not None else ():
            if call.run.party.block != run.party.block and call.pending == 0 and not call.done and call.observe_at > now:
                call.run.observe_at(call, now)

    def fail(self, call: _Call, problem: str) -> None:
        if call.errors is None:
            call.errors = []
        call.errors.append(problem)
        call.run.finish(call, None)

    def row_done(self, conversation: _Conversation) -> None:
        conversation.rows_left -= 1
        if conversation.rows_left == 0 and self.engine.on_done is not None:
            self.engine.on_done()
        self.release(conversation)

    def release(self, conversation: _Conversation) -> None:
        conversation.holds -= 1
        if conversation.holds == 0 and conversation.started:
            if conversation.key is not None:
                self.engine.driver.forget(conversation.key)
            del self.conversations[conversation.index]

    def result(self, scenario: Scenario) -> list[ResultBlock]:
        return [run.result(scenario) for run in self.parties]


class _Engine:
    """The event schedule shared by every plan of a run."""

    def __init__(self, driver: Driver, on_started: Callable[[], None] | None,
                 on_done: Callable[[], None] | None, keys: SeededKeys | None = None) -> None:
        self.driver, self.on_started, self.on_done, self.keys = driver, on_started, on_done, keys
        # Live: a burst of starts must not queue the third parties' calls behind it (a call that
        # waits for a free connection arrives late): starts get a few connections, calls the rest.
        self.start_slots = None if driver.virtual else trio.Semaphore(LIVE_START_SLOTS)
        self.heap: list[tuple[float, int, Callable[..., Awaitable[None]], tuple[Any, ...]]] = []
        self.sequence = itertools.count()
        self.wake: trio.Event | None = None  # live: set when an event earlier than the sleep's is pushed
        self.sleeping_until = math.inf
        self.in_flight = 0

    def push(self, when: float, step: Callable[..., Awaitable[None]], *args: Any) -> None:
        heapq.heappush(self.heap, (when, next(self.sequence), step, args))
        if self.wake is not None and when < self.sleeping_until:
            self.wake.set()

    async def run(self) -> None:
        heap = self.heap
        if self.driver.virtual:
            jump = _jump_if_alone()
            while heap:
                when, _, step, args = heapq.heappop(heap)
                if not jump(when):
                    await trio.sleep_until(when)
                await step(*args)
            return
        async with trio.open_nursery() as nursery:
            while heap or self.in_flight:
                self.wake = trio.Event()
                self.sleeping_until = heap[0][0] if heap else math.inf
                if self.sleeping_until > trio.current_time():
                    with trio.move_on_at(self.sleeping_until):
                        await self.wake.wait()
                    continue
                when, _, step, args = heapq.heappop(heap)
                self.in_flight += 1
                nursery.start_soon(self._step, step, args)

    async def _step(self, step: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        try:
            await step(*args)
        finally:
            self.in_flight -= 1
            if self.wake is not None:
                self.wake.set()


JUMPS_BETWEEN_CHECKPOINTS = 1000


def _jump_if_alone() -> Callable[[float], bool]:
    """``jump(when)``: under ``MockClock``, move virtual time straight to ``when`` when no other
    task could run before it (none runnable, no deadline up to ``when``) and say True; else False
    (then sleep until ``when``, letting the gate's timers run first). Same times, same order as
    sleeping — the clock would autojump there — without a cancel scope and a scheduler pass per
    event. A checkpoint every :data:`JUMPS_BETWEEN_CHECKPOINTS` jumps keeps the run cancellable.
    """
    clock = virtual_clock()
    if clock is None:
        return lambda when: when <= trio.current_time()
    statistics = trio.lowlevel.current_statistics
    jumps = 0

    def jump(when: float) -> bool:
        nonlocal jumps
        now = clock.current_time()
        if when <= now:
            return True
        if jumps >= JUMPS_BETWEEN_CHECKPOINTS:
            jumps = 0
            return False
        state = statistics()
        if state.tasks_runnable or now + state.seconds_to_next_deadline <= when:
            return False
        jumps += 1
        clock.jump(when - now)
        return True

    return jump


async def execute(
    scenario: Scenario,
    driver: Driver,
    *,
    plans: list[Plan] | None = None,
    on_conversation_started: Callable[[], None] | None = None,
    on_conversation_done: Callable[[], None] | None = None,
    keys: SeededKeys | None = None,
) -> list[ResultBlock]:
    """Run ``plans`` (default: every sub-case whole) concurrently; return their results.

    ``on_conversation_started`` is called when a conversation's start returns (201 or not),
    ``on_conversation_done`` when its rows (one per party) are written. ``keys``: the in-process
    gate's ``new_key`` hook, told which conversation starts next (seeded keys, SPEC §15.5).
    """
    plans = whole_plans(scenario) if plans is None else plans
    by_index = {subcase.index: subcase for subcase in scenario.subcases}
    subcases = [by_index[index] for index in dict.fromkeys(plan.subcase for plan in plans)]
    try:
        bot_ids = await register_bots(scenario, subcases, driver)
    except TRANSPORT_ERRORS as error:
        raise RunError(f"cannot reach the gate at {driver.client.base_url}: {_problem(error)}") from None
    engine = _Engine(driver, on_conversation_started, on_conversation_done, keys)
    runs = []
    base_time = trio.current_time()
    for plan in plans:
        subcase = by_index[plan.subcase]
        run = _SubCaseRun(engine, scenario, subcase, plan, bot_ids[subcase.bot_variant()])
        run.schedule_starts(base_time)
        runs.append(run)
    try:
        await engine.run()
    except BaseException as error:
        if _is_interrupt(error):
            raise RunInterrupted([party.finished_result(scenario) for run in runs for party in run.parties]) from None
        raise
    return [block for run in runs for block in run.result(scenario)]


def _problem(error: BaseException) -> str:
    """A transport error as a row's ``error`` text; a timeout says what it waited for."""
    text = str(error) or ("no answer in time (the gate is overloaded or unreachable)"
                          if isinstance(error, trio.TooSlowError) else "")
    return f"{type(error).__name__}: {text}"


def _reenters(bot: Bot, block_id: str) -> bool:
    """Whether a conversation can come back to ``block_id`` after leaving it (a loop)."""
    seen: set[str] = set()
    pending = list(bot.blocks[block_id].edges.values())
    while pending:
        current = pending.pop()
        if current == block_id:
            return True
        if current not in seen:
            seen.add(current)
            pending.extend(bot.blocks[current].edges.values())
    return False


def _first_wait(observed: Observed | None, block: str) -> tuple[str, str | None, str | None, float | None] | None:
    """The conversation's first wait at ``block``: the one the simulated party targets."""
    for wait in observed.waits if observed is not None else ():
        if wait[0] == block:
            return wait
    return None


def _unmet(expect: Any, error: str | None, outcome: str | None, first_status: int | None,
           observed: Observed | None) -> list[str]:
    problems = []
    if error:
        problems.append(f"error: {error}")
    if expect.outcome is not None and outcome != expect.outcome:
        problems.append(f"outcome {outcome} != {expect.outcome}")
    if expect.status is not None and first_status != expect.status:
        problems.append(f"status {first_status} != {expect.status}")
    variables = observed.variables if observed is not None else {}
    for name, value in (expect.variables or {}).items():
        if name not in variables:
            problems.append(f"variable {name} unset != {value!r}")
        elif variables[name] != value:
            problems.append(f"variable {name} {variables[name]!r} != {value!r}")
    return problems
