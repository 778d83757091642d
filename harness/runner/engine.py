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
import hashlib
import heapq
import itertools
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import numpy as np
import trio

from ..core.bots import Block, Bot, parse_bot
from ..core.signing import signature_headers
from .drivers import TRANSPORT_ERRORS, Driver, Observed
from .results import ResultBlock
from .scenario import Scenario, SubCase

__all__ = ["RunError", "Plan", "execute", "derangement", "whole_plans"]

CONTENT_TYPES = {"json": "application/json", "form": "application/x-www-form-urlencoded"}
REAL_TIME_MARGIN_S = 0.05  # how long after a deadline a live run first looks for the timeout
MAX_POLL_S = 30.0  # a wait still open this long after its deadline is reported as unresolved
_SENTINEL = "\x00harness-key\x00"
_NONE = -1


class RunError(RuntimeError):
    """The run could not proceed (the gate refused the bot, or is unreachable)."""


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


async def register_bots(scenario: Scenario, subcases: list[SubCase], driver: Driver) -> dict[tuple[str, int], str]:
    """The bot id to use for each (block, effective timeout) the sub-cases need."""
    ids: dict[tuple[str, int], str] = {}
    base_id: str | None = None
    for subcase in subcases:
        slot = (subcase.block, subcase.timeout_s)
        if slot in ids:
            continue
        if not subcase.timeout_overridden:
            if base_id is None:
                base_id = await register_bot(driver, scenario.bot)
            ids[slot] = base_id
            continue
        block_part = "" if subcase.block == scenario.bot.first_webhook() else f".{subcase.block}"
        copy_id = f"{scenario.bot.id}{block_part}.t{subcase.timeout_s}"
        ids[slot] = await register_bot(driver, scenario.bot.with_timeout(subcase.block, subcase.timeout_s, copy_id))
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


class _Party:
    """One conversation in flight: what its user, third party and observer need to remember."""

    __slots__ = ("index", "opened_at", "key", "body", "first_call_s", "statuses", "pending", "next_call",
                 "resolved", "answer", "observe_at", "holds", "waiting", "errors", "done")

    def __init__(self, index: int) -> None:
        self.index = index  # within the sub-case
        self.opened_at = math.nan
        self.key: str | None = None
        self.body: bytes | None = None
        self.first_call_s = math.nan
        self.statuses: list[int] = []
        self.pending = 0  # calls scheduled or in flight
        self.next_call = 0
        self.resolved = False  # a 200 named this conversation's key
        self.answer: Observed | None = None  # live: what that 200 said, when it says enough
        self.observe_at = math.inf  # when the observer is due (inf: not yet scheduled)
        self.holds = 1  # who still needs the conversation in the gate: its observer (+ its caller)
        self.waiting: list[_Party] | None = None  # `other`: parties whose call waits for our key
        self.errors: list[str] | None = None
        self.done = False


class _SubCaseRun:
    """The conversations of one plan (a sub-case or a slice of it) and their results."""

    def __init__(self, engine: _Engine, scenario: Scenario, subcase: SubCase, plan: Plan, bot_id: str) -> None:
        self.engine, self.subcase, self.bot_id = engine, subcase, bot_id
        self.first, self.count = plan.start, plan.stop - plan.start
        # Common random numbers: every sub-case of a case draws the same stream, and a slice takes
        # its part of the whole case's draws, so rows do not depend on how the run is spread.
        rng = np.random.default_rng([scenario.seed, subcase.case_index])
        n = subcase.conversations
        window = slice(plan.start, plan.stop)
        self.delays = subcase.delay.sample(rng, n)[window].astype(float)
        if subcase.arrival_rate is None:
            self.starts = np.zeros(self.count)
        else:
            self.starts = np.cumsum(rng.exponential(1.0 / subcase.arrival_rate, n))[window]
        self.targets: np.ndarray | None = None
        if subcase.key == "other":
            self.targets = derangement(rng, n)[window]  # `other` is never sliced: its keys depend on each other
        self.unknown_keys = [random_key(rng) for _ in range(n)][window] if subcase.key == "random" else None
        block = scenario.bot.blocks[subcase.block]
        self.block = block
        self.body = BodyTemplate(subcase.payload, block, subcase.encoding)
        self.content_type = CONTENT_TYPES[subcase.encoding]
        self.signed = bool(block.secret)
        self.answer_suffices = subcase.expect is None or subcase.expect.variables is None
        self.answer_suffices &= not _reenters(scenario.bot, block.id)
        self.parties: dict[int, _Party] = {}  # in flight only
        self.started = np.zeros(self.count, dtype=bool)
        self.statuses_text: dict[tuple[int, ...], str] = {}  # one string object per distinct pattern
        count = self.count
        self.keys: list[str | None] = [None] * count
        self.first_call = np.full(count, np.nan)
        self.statuses: list[str] = [""] * count
        self.first_status = np.zeros(count, dtype=np.int64)
        self.late_calls = np.zeros(count, dtype=np.int64)
        self.outcome: list[str | None] = [None] * count
        self.reason: list[str | None] = [None] * count
        self.waited = np.full(count, np.nan)
        self.resolved_by = np.full(count, _NONE, dtype=np.int64)
        self.conversation_status: list[str | None] = [None] * count
        self.passed = np.full(count, _NONE, dtype=np.int8)
        self.failure: list[str | None] = [None] * count
        self.error: list[str | None] = [None] * count

    # -- the user ---------------------------------------------------------------------------------

    def schedule_starts(self, base_time: float) -> None:
        push = self.engine.push
        for offset in range(self.count):
            push(base_time + float(self.starts[offset]), self.start, self.first + offset)

    async def start(self, index: int) -> None:
        party = self.parties.get(index)  # an `other` caller may have left a placeholder with its wait
        if party is None:
            party = self.parties[index] = _Party(index)
        self.started[index - self.first] = True
        driver = self.engine.driver
        try:
            key, problem = await driver.start(self.bot_id)
        except TRANSPORT_ERRORS as error:
            key, problem = None, f"{type(error).__name__}: {error}"
        if self.engine.on_started is not None:
            self.engine.on_started()
        now = trio.current_time()
        party.key = self.keys[index - self.first] = key
        if key is None:
            self._fail(party, problem or "not started")
        else:
            party.opened_at = now
            if self.targets is not None:
                party.holds = 2  # another party calls our key; we stay in the gate until it is done
            if not math.isnan(self.delays[index - self.first]):
                party.pending = 1
                self.engine.push(now + float(self.delays[index - self.first]), self.call, party)
            else:
                self._calls_done(party)
        for caller in party.waiting or ():
            self.engine.push(now, self.call, caller)  # their call waited for our key
        party.waiting = None

    # -- the third party -----------------------------------------------------------------------

    def _key_for(self, party: _Party) -> tuple[bool, Any]:
        """``(ready, key)``: the key this party sends, or not ready when it is a later start's."""
        mode = self.subcase.key
        if mode == "correct":
            return True, party.key
        if mode == "other":
            assert self.targets is not None
            target_index = int(self.targets[party.index - self.first])
            target = self.parties.get(target_index)
            if not self.started[target_index - self.first]:  # its conversation starts later: wait for it
                if target is None:
                    target = self.parties[target_index] = _Party(target_index)
                if target.waiting is None:
                    target.waiting = []
                target.waiting.append(party)
                return False, None
            return True, target.key if target is not None else None  # None: it failed to start
        if mode == "random":
            assert self.unknown_keys is not None
            return True, self.unknown_keys[party.index - self.first]
        return True, {"missing": None, "empty": "", "wrong_type": 12345}[mode]

    async def call(self, party: _Party, retry: int = -1) -> None:
        """One call of the party: the next scheduled one, or (``retry >= 0``) a retry attempt."""
        if party.done:
            return
        if party.body is None:
            ready, key = self._key_for(party)
            if not ready:
                return  # re-queued when the key's conversation starts
            party.body = self.body.render(key, missing=self.subcase.key == "missing")
        body = party.body
        now = trio.current_time()
        headers = {"Content-Type": self.content_type}
        if self.signed:
            block = self.block
            headers.update(signature_headers(block.signature_scheme, block.secret, body, unix_time=self.engine.driver.unix_time(),
                                             mode=self.subcase.signature, header_name=block.signature_header))
        if math.isnan(party.first_call_s):
            party.first_call_s = now - party.opened_at
        try:
            status, accepted = await self.engine.driver.call(self.bot_id, self.subcase.block, body, headers,
                                                             owner=party.key)
        except TRANSPORT_ERRORS as error:
            self._fail(party, f"{type(error).__name__}: {error}")
            return
        party.statuses.append(status)
        now = trio.current_time()
        if status == 200 and self.subcase.key in ("correct", "other"):
            self._resolved(self._target_of(party), party.index, accepted)
        subcase = self.subcase
        policy = subcase.retry
        next_retry = retry + 1
        if policy is not None and next_retry < len(policy.delays_s) and policy.matches(status):
            party.pending += 1
            self.engine.push(now + policy.delays_s[next_retry], self.call, party, next_retry)
        if retry < 0:
            party.next_call += 1
            if party.next_call < subcase.calls:
                party.pending += 1
                due = party.opened_at + float(self.delays[party.index - self.first]) + party.next_call * subcase.call_gap_s
                self.engine.push(max(now, due), self.call, party)
        party.pending -= 1
        if party.pending == 0:
            self._calls_done(party)

    def _target_of(self, party: _Party) -> int:
        return party.index if self.targets is None else int(self.targets[party.index - self.first])

    def _resolved(self, target_index: int, by: int, accepted: dict[str, Any] | None) -> None:
        """A 200 named ``target_index``'s key: its wait is resolved; its observer need not wait.

        Against a live gate, the 200's answer (``waited_s``, ``conversation_status``) already says
        what the observer would read, when the conversation cannot come back to this block (its
        first wait there is the one resolved) and no variables are expected: one request less.
        """
        self.resolved_by[target_index - self.first] = by
        target = self.parties.get(target_index)
        if target is None or target.done:
            return
        target.resolved = True
        if accepted is not None and self.answer_suffices and {"waited_s", "conversation_status"} <= accepted.keys():
            target.answer = Observed(accepted["conversation_status"],
                                     [(self.subcase.block, "success", "received", accepted["waited_s"])], {})
        if target.pending == 0 and target.observe_at > trio.current_time():
            self._observe_at(target, trio.current_time())

    def _calls_done(self, party: _Party) -> None:
        """The party will call no more: its observer is due; the key it called may be let go."""
        if self.targets is not None:
            target = self.parties.get(int(self.targets[party.index - self.first]))
            if target is not None:
                self._release(target)
        if party.resolved:
            self._observe_at(party, trio.current_time())
        else:
            margin = 0.0 if self.engine.driver.virtual else REAL_TIME_MARGIN_S
            self._observe_at(party, max(trio.current_time(), party.opened_at + self.subcase.timeout_s + margin))

    # -- the observer --------------------------------------------------------------------------

    def _observe_at(self, party: _Party, when: float) -> None:
        party.observe_at = when
        self.engine.push(when, self.observe, party, when)

    async def observe(self, party: _Party, due: float) -> None:
        if party.done or due != party.observe_at:
            return  # finished, or brought forward by a resolution: this one is stale
        if party.answer is not None:
            self._finish(party, party.answer)
            return
        assert party.key is not None
        driver = self.engine.driver
        give_up_at = party.opened_at + self.subcase.timeout_s + MAX_POLL_S
        spins = 0
        while True:
            try:
                observed, problem = await driver.read(party.key)
            except TRANSPORT_ERRORS as error:
                observed, problem = None, f"{type(error).__name__}: {error}"
            if observed is None:
                self._fail(party, problem or "not read")
                return
            wait = _first_wait(observed, self.subcase.block)
            now = trio.current_time()
            if wait is None or wait[1] is not None or now >= give_up_at:
                break
            if driver.virtual and spins < 3:
                spins += 1
                await trio.sleep(0)  # the deadline is now: let the gate's timer run first
                continue
            # The timer has not fired yet (live), or the wait opened after the start (a bot that
            # waits elsewhere first): look again shortly.
            self._observe_at(party, now + driver.poll_interval_s)
            return
        self._finish(party, observed)

    # -- results ---------------------------------------------------------------------------------

    def _fail(self, party: _Party, problem: str) -> None:
        if party.errors is None:
            party.errors = []
        party.errors.append(problem)
        if party.key is not None:
            self._release(party)
        self._finish(party, None)

    def _release(self, party: _Party) -> None:
        party.holds -= 1
        if party.holds == 0 and party.key is not None:
            self.engine.driver.forget(party.key)
            if party.done:
                del self.parties[party.index]

    def _finish(self, party: _Party, observed: Observed | None) -> None:
        """Write the conversation's row; keep nothing else of it."""
        if party.done:
            return
        party.done = True
        slot = party.index - self.first
        subcase = self.subcase
        statuses = tuple(party.statuses)
        text = self.statuses_text.get(statuses)
        if text is None:
            text = self.statuses_text[statuses] = ",".join(map(str, statuses))
        self.statuses[slot] = text
        if statuses:
            self.first_status[slot] = statuses[0]
            self.late_calls[slot] = statuses.count(410)
        self.first_call[slot] = party.first_call_s
        wait = _first_wait(observed, subcase.block) if observed is not None else None
        if wait is not None:
            self.outcome[slot], self.reason[slot], self.waited[slot] = wait[1], wait[2], wait[3]
        if observed is not None:
            self.conversation_status[slot] = observed.status
        error = "; ".join(party.errors) if party.errors else None
        self.error[slot] = error
        if subcase.expect is not None:
            problems = _unmet(subcase.expect, error, self.outcome[slot], statuses[0] if statuses else None, observed)
            self.passed[slot] = 0 if problems else 1
            self.failure[slot] = "; ".join(problems) or None
        if observed is not None:
            self._release(party)
        if party.holds <= 0 or party.key is None:
            self.parties.pop(party.index, None)
        if self.engine.on_done is not None:
            self.engine.on_done()

    def result(self, scenario: Scenario) -> ResultBlock:
        subcase = self.subcase
        expect = subcase.expect
        constants = {
            "scenario": scenario.name, "case": subcase.case, "variant": subcase.variant, "bot": self.bot_id,
            "block": subcase.block, "conversations": subcase.conversations, "timeout_s": subcase.timeout_s,
            "key": subcase.key, "calls": subcase.calls, "call_gap_s": subcase.call_gap_s,
            "signature": subcase.signature if self.signed else None, "arrival_rate": subcase.arrival_rate,
            "expected_outcome": expect.outcome if expect else None,
            "expected_status": expect.status if expect else None,
            "thresholds": "; ".join(t.text for t in subcase.thresholds) or None,
        }
        columns = {
            "conversation": np.arange(self.first, self.first + self.count), "conversation_key": self.keys,
            "delay_s": self.delays, "started_at_s": self.starts, "first_call_s": self.first_call,
            "statuses": self.statuses, "first_status": self.first_status, "late_calls": self.late_calls,
            "outcome": self.outcome, "reason": self.reason, "waited_s": self.waited, "resolved_by": self.resolved_by,
            "conversation_status": self.conversation_status, "passed": self.passed, "failure": self.failure,
            "error": self.error,
        }
        return ResultBlock(self.count, constants, columns, sort_key=(subcase.index, self.first))


class _Engine:
    """The event schedule shared by every plan of a run."""

    def __init__(self, driver: Driver, on_started: Callable[[], None] | None,
                 on_done: Callable[[], None] | None) -> None:
        self.driver, self.on_started, self.on_done = driver, on_started, on_done
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
            while heap:
                when, _, step, args = heapq.heappop(heap)
                if when > trio.current_time():
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


async def execute(
    scenario: Scenario,
    driver: Driver,
    *,
    plans: list[Plan] | None = None,
    on_conversation_started: Callable[[], None] | None = None,
    on_conversation_done: Callable[[], None] | None = None,
) -> list[ResultBlock]:
    """Run ``plans`` (default: every sub-case whole) concurrently; return their results.

    ``on_conversation_started`` is called when a conversation's start returns (201 or not),
    ``on_conversation_done`` when its row is written.
    """
    plans = whole_plans(scenario) if plans is None else plans
    by_index = {subcase.index: subcase for subcase in scenario.subcases}
    subcases = [by_index[index] for index in dict.fromkeys(plan.subcase for plan in plans)]
    try:
        bot_ids = await register_bots(scenario, subcases, driver)
    except TRANSPORT_ERRORS as error:
        raise RunError(f"cannot reach the gate at {driver.client.base_url}: {error}") from None
    engine = _Engine(driver, on_conversation_started, on_conversation_done)
    runs = []
    base_time = trio.current_time()
    for plan in plans:
        subcase = by_index[plan.subcase]
        run = _SubCaseRun(engine, scenario, subcase, plan, bot_ids[(subcase.block, subcase.timeout_s)])
        run.schedule_starts(base_time)
        runs.append(run)
    await engine.run()
    return [run.result(scenario) for run in runs]


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
