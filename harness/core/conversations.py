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

__all__ = [
    "Status",
    "Outcome",
    "Reason",
    "Wait",
    "Conversation",
    "WallClock",
    "new_conversation_key",
    "iso_timestamp",
]

Status = Literal["running", "waiting", "completed", "errored"]
Outcome = Literal["success", "failure"]
Reason = Literal["received", "timeout"]

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
    late_calls: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def rollback_on_error(self) -> Iterator[None]:
        """Changes made inside the block are undone if it raises: a failure half-way changes nothing.

        The snapshot copies waits one level deep (they change when resolved) and shares variable
        values, as nothing changes them in place.
        """
        saved = (self.status, self.block, dict(self.variables), list(self.transcript),
                 [copy.copy(wait) for wait in self.waits], self.error, list(self.late_calls))
        try:
            yield
        except BaseException:
            (self.status, self.block, self.variables, self.transcript, self.waits, self.error,
             self.late_calls) = saved
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

    def as_dict(self, clock: WallClock) -> dict[str, Any]:
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
                for late in self.late_calls
            ],
        }
