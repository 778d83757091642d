"""The runner: drives a scenario's sub-cases through a :class:`~harness.runner.drivers.Driver`.

Per conversation, one trio task plays both sides:

1. the *user* starts the conversation (``POST /api/bots/{bot}/conversations``) at its arrival
   time; the wait opens before the 201 comes back, so delays count from the 201's receipt;
2. the *third party* sleeps ``delay_s``, then makes ``calls`` calls spaced by ``call_gap_s``
   with the case's key and signature modes;
3. the *observer* waits until the wait is resolved (a 200 naming this key) or its deadline has
   passed, then reads the conversation back (``GET /api/conversations/{key}``): the gate, not
   the runner, says what the outcome was.

``resolved_by`` comes from the 200s: the party whose call was accepted for a key resolved that
key's wait. All randomness comes from ``numpy.random.default_rng([seed, case position])``: the
draws do not depend on the other cases, and the sub-cases of a sweep share them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import trio

from ..core.bots import Bot, parse_bot
from ..core.signing import HEADER, sign
from .drivers import Driver
from .progress import current as current_progress
from .scenario import Scenario, SubCase

__all__ = ["RunError", "execute", "derangement"]

CONTENT_TYPES = {"json": "application/json", "form": "application/x-www-form-urlencoded"}
REAL_TIME_MARGIN_S = 0.05  # how long after a deadline a live run first looks for the timeout
MAX_POLL_S = 30.0  # a wait still open this long after its deadline is reported as unresolved


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


async def register_bots(scenario: Scenario, driver: Driver) -> dict[tuple[str, int], str]:
    """The bot id to use for each (block, effective timeout) the sub-cases need."""
    ids: dict[tuple[str, int], str] = {}
    base_id: str | None = None
    for subcase in scenario.subcases:
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


@dataclass
class _SubCaseState:
    """What the conversations of one sub-case share while they run."""

    keys: list[str | None]
    key_ready: list[trio.Event]
    resolved_by: list[int | None]
    resolved: list[trio.Event]


async def execute(
    scenario: Scenario,
    driver: Driver,
    *,
    on_conversation_done: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every sub-case of ``scenario`` concurrently; return one row per conversation."""
    try:
        bot_ids = await register_bots(scenario, driver)
    except httpx.HTTPError as error:
        raise RunError(f"cannot reach the gate at {driver.client.base_url}: {error}") from None
    rows: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        for subcase in scenario.subcases:
            bot_id = bot_ids[(subcase.block, subcase.timeout_s)]
            nursery.start_soon(_run_subcase, scenario, subcase, bot_id, driver, rows, on_conversation_done)
    order = {subcase.index: position for position, subcase in enumerate(scenario.subcases)}
    rows.sort(key=lambda row: (order[row["_subcase"]], row["conversation"]))
    for row in rows:
        del row["_subcase"]
    return rows


async def _run_subcase(
    scenario: Scenario,
    subcase: SubCase,
    bot_id: str,
    driver: Driver,
    rows: list[dict[str, Any]],
    on_done: Callable[[], None] | None,
) -> None:
    # Common random numbers: every sub-case of a case draws the same stream, so a sweep compares
    # its settings on the same callbacks instead of on fresh noise.
    rng = np.random.default_rng([scenario.seed, subcase.case_index])
    n = subcase.conversations
    delays = subcase.delay.sample(rng, n)
    if subcase.arrival_rate is None:
        starts = np.zeros(n)
    else:
        starts = np.cumsum(rng.exponential(1.0 / subcase.arrival_rate, n))
    targets: list[int | None]
    if subcase.key == "correct":
        targets = list(range(n))
    elif subcase.key == "other":
        targets = [int(t) for t in derangement(rng, n)]
    else:
        targets = [None] * n
    unknown_keys = [random_key(rng) for _ in range(n)] if subcase.key == "random" else []
    secret = scenario.bot.blocks[subcase.block].secret
    state = _SubCaseState(
        keys=[None] * n,
        key_ready=[trio.Event() for _ in range(n)],
        resolved_by=[None] * n,
        resolved=[trio.Event() for _ in range(n)],
    )
    base_time = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(n):
            conversation = _Conversation(
                scenario, subcase, bot_id, driver, state, index,
                base_time=base_time,
                start_offset=float(starts[index]),
                delay_s=float(delays[index]),
                target=targets[index],
                unknown_key=unknown_keys[index] if unknown_keys else None,
                secret=secret,
            )
            nursery.start_soon(conversation.run, rows, on_done)


class _Conversation:
    """One simulated conversation: user, third party and observer."""

    def __init__(self, scenario: Scenario, subcase: SubCase, bot_id: str, driver: Driver, state: _SubCaseState,
                 index: int, *, base_time: float, start_offset: float, delay_s: float, target: int | None, unknown_key: str | None,
                 secret: str) -> None:
        self.scenario, self.subcase, self.bot_id, self.driver, self.state = scenario, subcase, bot_id, driver, state
        self.index, self.delay_s, self.target = index, delay_s, target
        self.start_offset, self.start_at = start_offset, base_time + start_offset
        self.unknown_key, self.secret = unknown_key, secret
        self.statuses: list[int] = []
        self.first_call_s: float | None = None  # when the first call actually went out, from the 201
        self.errors: list[str] = []

    async def run(self, rows: list[dict[str, Any]], on_done: Callable[[], None] | None) -> None:
        conversation: dict[str, Any] | None = None
        try:
            opened_at = await self._start()
            if opened_at is not None:
                if not math.isnan(self.delay_s):
                    await self._call(opened_at)
                conversation = await self._observe(opened_at)
        except httpx.HTTPError as error:
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            self.state.key_ready[self.index].set()  # never leave an `other` party waiting on us
        rows.append(self._row(conversation))
        if on_done is not None:
            on_done()

    async def _start(self) -> float | None:
        await trio.sleep_until(self.start_at)
        response = await self.driver.request("POST", f"/api/bots/{self.bot_id}/conversations")
        if response.status_code != 201:
            self.errors.append(f"starting the conversation: {response.status_code} {response.text[:200]}")
            return None
        opened_at = trio.current_time()
        self.state.keys[self.index] = response.json()["conversation_key"]
        self.state.key_ready[self.index].set()
        current_progress().started()
        return opened_at

    async def _key_to_send(self) -> Any:
        mode = self.subcase.key
        if mode == "correct":
            return self.state.keys[self.index]
        if mode == "other":
            assert self.target is not None
            await self.state.key_ready[self.target].wait()  # its conversation may start later
            return self.state.keys[self.target] or self.unknown_key
        return {"missing": None, "empty": "", "wrong_type": 12345, "random": self.unknown_key}[mode]

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": CONTENT_TYPES[self.subcase.encoding]}
        mode = self.subcase.signature
        if not self.secret or mode == "missing":
            return headers
        now = self.driver.unix_time()
        if mode == "valid":
            headers[HEADER] = sign(body, self.secret, unix_time=now)
        elif mode == "wrong":
            headers[HEADER] = sign(body, "wrong-" + self.secret, unix_time=now)
        else:  # stale: signed ten minutes ago, twice the tolerance
            headers[HEADER] = sign(body, self.secret, unix_time=now - 600)
        return headers

    async def _call(self, opened_at: float) -> None:
        subcase = self.subcase
        url = f"/webhooks/{self.bot_id}/{subcase.block}"
        for attempt in range(subcase.calls):
            await trio.sleep_until(opened_at + self.delay_s + attempt * subcase.call_gap_s)
            key = await self._key_to_send()
            document = dict(subcase.payload)
            if subcase.key != "missing":
                document["conversation_key"] = key
            body = _encode(document, subcase.encoding)
            if self.first_call_s is None:
                self.first_call_s = trio.current_time() - opened_at
            response = await self.driver.request("POST", url, content=body, headers=self._headers(body))
            self.statuses.append(response.status_code)
            if response.status_code == 200 and self.target is not None:
                self.state.resolved_by[self.target] = self.index
                self.state.resolved[self.target].set()

    async def _observe(self, opened_at: float) -> dict[str, Any] | None:
        """Wait for resolution or the deadline, then read the conversation from the gate."""
        margin = 0.0 if self.driver.virtual else REAL_TIME_MARGIN_S
        with trio.move_on_at(opened_at + self.subcase.timeout_s + margin):
            await self.state.resolved[self.index].wait()
        give_up_at = opened_at + self.subcase.timeout_s + MAX_POLL_S
        key = self.state.keys[self.index]
        while True:
            response = await self.driver.request("GET", f"/api/conversations/{key}")
            if response.status_code != 200:
                self.errors.append(f"reading the conversation: {response.status_code}")
                return None
            conversation = response.json()
            wait = _first_wait(conversation, self.subcase.block)
            if wait is None or wait["outcome"] is not None or trio.current_time() >= give_up_at:
                return conversation
            await trio.sleep(self.driver.poll_interval_s)  # the timer has not fired yet

    def _row(self, conversation: dict[str, Any] | None) -> dict[str, Any]:
        subcase = self.subcase
        wait = _first_wait(conversation, subcase.block) if conversation else None
        expect = subcase.expect
        first_status = self.statuses[0] if self.statuses else None
        row: dict[str, Any] = {
            "_subcase": subcase.index,
            "scenario": self.scenario.name,
            "case": subcase.case,
            "variant": subcase.variant,
            "conversation": self.index,
            "conversation_key": self.state.keys[self.index],
            "bot": self.bot_id,
            "block": subcase.block,
            "conversations": subcase.conversations,
            "timeout_s": subcase.timeout_s,
            "delay_s": self.delay_s,
            "key": subcase.key,
            "calls": subcase.calls,
            "call_gap_s": subcase.call_gap_s,
            "signature": subcase.signature if self.secret else None,
            "arrival_rate": subcase.arrival_rate,
            "started_at_s": self.start_offset,
            "first_call_s": self.first_call_s,
            "statuses": ",".join(str(s) for s in self.statuses),
            "first_status": first_status,
            "outcome": wait["outcome"] if wait else None,
            "reason": wait["reason"] if wait else None,
            "waited_s": wait["waited_s"] if wait else None,
            "resolved_by": self.state.resolved_by[self.index],
            "conversation_status": conversation["status"] if conversation else None,
            "expected_outcome": expect.outcome if expect else None,
            "expected_status": expect.status if expect else None,
            "passed": None,
            "failure": None,
            "thresholds": "; ".join(t.text for t in subcase.thresholds) or None,
            "error": "; ".join(self.errors) or None,
        }
        if expect is not None:
            problems = _unmet(expect, row, conversation)
            row["passed"] = not problems
            row["failure"] = "; ".join(problems) or None
        return row


def _encode(document: dict[str, Any], encoding: str) -> bytes:
    """The body a third party sends: JSON, or a form where a list becomes a repeated field."""
    if encoding == "json":
        return json.dumps(document).encode()
    fields = {name: [_form_text(v) for v in value] if isinstance(value, list) else _form_text(value)
              for name, value in document.items()}
    return urlencode(fields, doseq=True).encode()


def _form_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)  # true/false, as JSON would say


def _first_wait(conversation: dict[str, Any] | None, block: str) -> dict[str, Any] | None:
    """The conversation's first wait at ``block``: the one the simulated party targets."""
    for wait in (conversation or {}).get("waits", []):
        if wait["block"] == block:
            return wait
    return None


def _unmet(expect: Any, row: dict[str, Any], conversation: dict[str, Any] | None) -> list[str]:
    problems = []
    if row["error"]:
        problems.append(f"error: {row['error']}")
    if expect.outcome is not None and row["outcome"] != expect.outcome:
        problems.append(f"outcome {row['outcome']} != {expect.outcome}")
    if expect.status is not None and row["first_status"] != expect.status:
        problems.append(f"status {row['first_status']} != {expect.status}")
    variables = (conversation or {}).get("variables", {})
    for name, value in (expect.variables or {}).items():
        if name not in variables:
            problems.append(f"variable {name} unset != {value!r}")
        elif variables[name] != value:
            problems.append(f"variable {name} {variables[name]!r} != {value!r}")
    return problems
