"""Conversations and their waits: the state the gate owns.

Times are kept as floats on trio's clock (``trio.current_time()``), so that durations are exact
differences on the clock the run uses — real or virtual. They become ISO 8601 wall timestamps only
when a conversation is shown (:meth:`Conversation.as_dict` with a :class:`WallClock`).
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import trio

from .virtual_time import in_virtual_time

__all__ = [
    "Status",
    "Outcome",
    "Reason",
    "Wait",
    "EarlyCall",
    "EarlyOutcome",
    "Conversation",
    "MAX_LATE_CALLS",
    "WallClock",
    "new_conversation_key",
    "iso_timestamp",
]

Status = Literal["running", "waiting", "completed", "errored"]
Outcome = Literal["success", "failure"]
Reason = Literal["received", "received_early", "timeout"]
EarlyOutcome = Literal["pending", "used", "expired"]

MAX_LATE_CALLS = 100  # late_calls entries a conversation keeps (SPEC §17.5); late_calls_total counts them all

KEY_BYTES = 24  # 192 bits from the OS's CSPRNG; 32 base64url characters


def new_conversation_key() -> str:
    """A fresh conversation key: base64url alphabet, 192 bits from :mod:`secrets`."""
    return secrets.token_urlsafe(KEY_BYTES)


def iso_timestamp(unix_seconds: float) -> str:
    """``2026-11-24T21:40:00.123456Z``: UTC with microseconds, as SPEC §3 asks."""
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WallClock:
    """Maps trio's clock onto wall time.

    The mapping is fixed at the first reading, so under a virtual clock the wall time moves with
    the virtual one: a 300 s virtual wait spans 300 s of timestamps, and signatures made with
    :meth:`unix` are never stale however far virtual time has jumped.
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._offset: float | None = None

    def _fixed_offset(self) -> float:
        if self._offset is None:
            self._offset = self._wall() - trio.current_time()
        return self._offset

    def unix(self, trio_time: float) -> float:
        """Unix seconds for a reading of trio's clock."""
        return self._fixed_offset() + trio_time

    def from_unix(self, unix_seconds: float) -> float:
        """The trio-clock reading for a unix time (e.g. a deadline read back from storage)."""
        return unix_seconds - self._fixed_offset()

    def iso(self, trio_time: float | None) -> str | None:
        return None if trio_time is None else iso_timestamp(self.unix(trio_time))

    def signing_time(self) -> float:
        """Unix seconds to judge a signature's freshness by (SPEC §17.8).

        In real time the wall clock as it is now — read at each call, so a stepped system clock
        counts at once; under trio's ``MockClock`` the run's fixed mapping, so virtual time never
        makes a signature stale.
        """
        if in_virtual_time():
            return self.unix(trio.current_time())
        return self._wall()


@dataclass(slots=True, eq=False)
class Wait:
    """One stay of a conversation at a webhook block; resolves exactly once."""

    block: str
    opened_at: float
    deadline: float
    timeout_s: int
    outcome: Outcome | None = None
    reason: Reason | None = None
    resolved_at: float | None = None
    waited_s: float | None = None

    @property
    def is_open(self) -> bool:
        return self.outcome is None

    def copy(self) -> Wait:
        # Explicit, not copy.copy: this runs for every wait of every resolution (rollback snapshot).
        return Wait(self.block, self.opened_at, self.deadline, self.timeout_s, self.outcome, self.reason,
                    self.resolved_at, self.waited_s)

    def expired_at(self, now: float) -> bool:
        """True once the deadline has passed without a valid call, fired timer or not."""
        if self.outcome is None:
            return now >= self.deadline
        return self.reason == "timeout"

    def resolve(self, outcome: Outcome, reason: Reason, now: float) -> None:
        if self.outcome is not None:
            raise RuntimeError(f"wait at {self.block!r} resolved twice")
        self.outcome, self.reason, self.resolved_at = outcome, reason, now
        # A timed-out wait lasted exactly its timeout, whenever the timer task got to run.
        self.waited_s = float(self.timeout_s) if reason == "timeout" else now - self.opened_at

    def as_dict(self, clock: WallClock) -> dict[str, Any]:
        return {
            "block": self.block,
            "opened_at": clock.iso(self.opened_at),
            "deadline": clock.iso(self.deadline),
            "timeout_s": self.timeout_s,
            "outcome": self.outcome,
            "reason": self.reason,
            "resolved_at": clock.iso(self.resolved_at),
            "waited_s": self.waited_s,
        }


@dataclass(slots=True, eq=False)
class EarlyCall:
    """A call held because it came before its conversation reached the block (SPEC §14.1).

    ``at`` and ``expires_at`` are trio times; ``id`` is the store's handle for the record.
    """

    block: str
    at: float
    expires_at: float
    payload: dict[str, Any]
    outcome: EarlyOutcome = "pending"
    id: int = 0

    def state(self, now: float, finished: bool) -> EarlyOutcome:
        """What it is as of ``now``: a pending call reads ``expired`` past its time or once the
        conversation finished, whether or not the store has written that down yet."""
        if self.outcome == "pending" and (finished or now >= self.expires_at):
            return "expired"
        return self.outcome


@dataclass(slots=True, eq=False)
class Conversation:
    key: str
    bot: str
    url: str
    started_at: float
    status: Status = "running"
    block: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    transcript: list[dict[str, str]] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    error: dict[str, str] | None = None
    # Calls refused with wait_expired: {"block", "at" (trio time), "after_deadline_s"} (SPEC §8.3).
    # Only the first MAX_LATE_CALLS are kept; late_calls_total counts every one (SPEC §17.5).
    late_calls: list[dict[str, Any]] = field(default_factory=list)
    late_calls_total: int = 0
    early_calls: list[EarlyCall] = field(default_factory=list)
    # The stored version this copy was read at (stores that arbitrate between processes use it).
    version: int = 0

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "errored")

    def clone(self) -> Conversation:
        """A copy that shares nothing mutable with this one (variable values are never changed
        in place, so they are shared)."""
        return Conversation(
            key=self.key, bot=self.bot, url=self.url, started_at=self.started_at, status=self.status,
            block=self.block, variables=dict(self.variables), transcript=list(self.transcript),
            waits=[wait.copy() for wait in self.waits], error=self.error, late_calls=list(self.late_calls),
            late_calls_total=self.late_calls_total, early_calls=[copy.copy(early) for early in self.early_calls],
            version=self.version,
        )

    def pending_early_call(self, block: str, now: float) -> EarlyCall | None:
        """The held call at ``block`` that is still usable at ``now``, if any."""
        for early in self.early_calls:
            if early.block == block and early.state(now, self.finished) == "pending":
                return early
        return None

    @contextmanager
    def rollback_on_error(self) -> Iterator[None]:
        """Changes made inside the block are undone if it raises: a failure half-way changes nothing.

        The snapshot copies waits one level deep (they change when resolved) and shares variable
        values, as nothing changes them in place.
        """
        saved = (self.status, self.block, dict(self.variables), list(self.transcript),
                 [wait.copy() for wait in self.waits], self.error, list(self.late_calls),
                 self.late_calls_total, [copy.copy(early) for early in self.early_calls])
        try:
            yield
        except BaseException:
            (self.status, self.block, self.variables, self.transcript, self.waits, self.error,
             self.late_calls, self.late_calls_total, self.early_calls) = saved
            raise

    @property
    def open_wait(self) -> Wait | None:
        """The wait the conversation sits in now, if any."""
        if self.status == "waiting" and self.waits and self.waits[-1].is_open:
            return self.waits[-1]
        return None

    def latest_wait_at(self, block: str) -> Wait | None:
        for wait in reversed(self.waits):
            if wait.block == block:
                return wait
        return None

    def as_dict(self, clock: WallClock, now: float | None = None) -> dict[str, Any]:
        """The conversation as the API shows it; ``now`` (trio time, default: the current time)
        decides whether a held early call still reads ``pending``."""
        if now is None:
            now = trio.current_time()
        return {
            "conversation_key": self.key,
            "conversation_url": self.url,
            "bot": self.bot,
            "status": self.status,
            "block": self.block,
            "started_at": clock.iso(self.started_at),
            "variables": dict(self.variables),
            "transcript": list(self.transcript),
            "waits": [wait.as_dict(clock) for wait in self.waits],
            "error": self.error,
            "late_calls": [
                {"block": late["block"], "at": clock.iso(late["at"]), "after_deadline_s": late["after_deadline_s"]}
                for late in self.late_calls[:MAX_LATE_CALLS]
            ],
            "late_calls_total": max(self.late_calls_total, len(self.late_calls)),
            "early_calls": [
                {"block": early.block, "at": clock.iso(early.at), "outcome": early.state(now, self.finished)}
                for early in self.early_calls
            ],
        }
