"""The Store protocol: what the gate needs from storage, and how a store says it cannot answer.

Every method that may touch storage is ``async``. The rules that keep the gate exactly-once:

* **A store in one process (memory)** never yields inside a method (no checkpoint, no await of
  anything that could switch tasks): a call's state checks and its resolution then run with no
  task switch in between, under real time and under ``trio.testing.MockClock`` alike. It hands
  out its live objects; :meth:`Store.commit` has nothing to arbitrate and returns True.
* **A store shared between processes (SQLite, PostgreSQL)** hands out copies the caller owns and
  arbitrates in :meth:`Store.commit` with a conditional write (claim the wait ``WHERE outcome IS
  NULL`` and the conversation ``WHERE version = <read version>``). Its blocking calls run in a
  worker thread in real time (``trio.to_thread.run_sync``: a lock never holds up the event loop)
  and inline under ``MockClock`` (a thread would let virtual time jump while it works).
* A store that cannot answer (database stopped, file locked past the busy timeout, disk error)
  raises :class:`StoreUnavailable` and has changed nothing. The web layer answers 503
  ``store_unavailable`` with ``Retry-After``; ``/healthz`` reports ``degraded``.

Times passed in and out are trio-clock floats; a store on disk maps them to unix seconds through
the :class:`~harness.core.conversations.WallClock` it is bound to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .bots import Bot
from .conversations import Conversation, EarlyCall, WallClock

__all__ = ["Store", "StoreUnavailable", "OpenWait"]


class StoreUnavailable(Exception):
    """The store cannot answer now; nothing was changed. ``reason`` is short and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OpenWait:
    """An open wait as the live page lists it (times on trio's clock)."""

    key: str
    index: int
    bot: str
    block: str
    opened_at: float
    deadline: float
    timeout_s: int


class Store(Protocol):
    """Storage of bots, conversations, waits, late and early calls. See the module docstring."""

    #: True when other processes may write the same store: the gate then polls
    #: :meth:`overdue_waits` so no wait outlives its deadline with its own process gone.
    shared: bool

    def bind(self, clock: WallClock) -> None:
        """Called once by the gate's constructor (no I/O): the clock mapping trio time to unix time."""
        ...

    async def probe(self) -> None:
        """Cheaply check that the store can take a write now; raise :class:`StoreUnavailable` if not."""
        ...

    async def close(self) -> None: ...

    # -- bots

    async def add_bot(self, bot: Bot) -> None:
        """Store a new bot; ``Refused("bot_exists")`` if the id is taken."""
        ...

    async def get_bot(self, bot_id: str) -> Bot | None: ...

    async def bots(self) -> list[Bot]:
        """Every bot, in the order they were added."""
        ...

    # -- conversations

    async def add_conversation(self, conversation: Conversation) -> None:
        """Store a new conversation with its waits (sets ``conversation.version``)."""
        ...

    async def get_conversation(self, key: str) -> Conversation | None:
        """The conversation as stored now, ``version`` set. A shared store returns a copy the
        caller owns; the memory store its live object."""
        ...

    async def commit(self, conversation: Conversation, *, resolved_wait: int) -> bool:
        """Persist, atomically, a conversation whose wait ``resolved_wait`` was just resolved:
        that wait's resolution, its new state, every wait after ``resolved_wait`` (opened, and
        possibly resolved at once by a held early call), and the outcome of each early call that
        is no longer ``pending`` in ``conversation.early_calls``.

        Returns False, changing nothing, when the stored wait is no longer open or the stored
        conversation's version is not ``conversation.version`` (another task or process changed
        it since it was read); the caller re-reads and decides from the real state. On success
        ``conversation.version`` is the new stored version.
        """
        ...

    async def add_late_call(self, conversation: Conversation, late_call: dict[str, Any]) -> None:
        """Record a call refused with ``wait_expired`` (SPEC §8.3, §17.5): kept while the
        conversation holds fewer than :data:`~harness.core.conversations.MAX_LATE_CALLS`, counted
        always. Updates ``conversation.late_calls``/``late_calls_total``; leaves its version alone,
        so it never competes with a resolution. ``late_call`` is ``{"block", "at" (trio time),
        "after_deadline_s"}``."""
        ...

    async def hold_early_call(self, conversation: Conversation, early: EarlyCall) -> bool:
        """Record a held early call (SPEC §14.1) if the stored conversation is still at
        ``conversation.version``; bump that version (so a resolution committed from an older read
        loses and re-reads, then finds the held call). Sets ``early.id``, appends it to
        ``conversation.early_calls``. False, changing nothing, if the version moved."""
        ...

    async def expire_early_calls(self, now: float) -> None:
        """Write ``expired`` on pending early calls whose ``expires_at`` is at or before ``now``
        (bulk, indexed; reading already shows them expired, this keeps the table honest)."""
        ...

    async def forget(self, key: str) -> None:
        """Drop a finished conversation from memory (retention). A store on disk keeps it there."""
        ...

    # -- waits

    async def open_waits(self) -> list[tuple[str, int, float]]:
        """Every open wait as (conversation key, wait index, deadline): re-armed when the gate starts."""
        ...

    async def overdue_waits(self, now: float, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` open waits (key, index) whose deadline is at or before ``now``, whoever
        opened them. Only needed when :attr:`shared`."""
        ...

    async def soonest_open_waits(self, limit: int) -> list[OpenWait]:
        """The ``limit`` open waits with the earliest deadlines, soonest first; its cost must not
        grow with the number of open waits beyond a logarithm (an index, a heap)."""
        ...

    async def open_wait_count(self) -> int:
        """Open waits in the store, from a maintained counter (never a scan)."""
        ...
