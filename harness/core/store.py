from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from .bots import Bot
from .conversations import Conversation, WallClock

__all__ = ["Store"]


class Store(Protocol):
    """What the gate needs from storage.

    Every method is synchronous and short: the gate calls them between two awaits, which is what
    makes a check and its resolution atomic within one process. Across processes sharing a
    store, :meth:`commit` is the arbiter: it refuses to resolve a wait that is no longer open.
    """

    #: True when other processes may write the same store: the gate then polls
    #: :meth:`overdue_waits` so no wait outlives its deadline with its own process gone.
    shared: bool

    def bind(self, clock: WallClock) -> None:
        """Called once by the gate: the clock that maps trio time to unix time and back."""
        ...

    def add_bot(self, bot: Bot) -> None: ...

    def get_bot(self, bot_id: str) -> Bot | None: ...

    def bots(self) -> Iterable[Bot]: ...

    def add_conversation(self, conversation: Conversation) -> None:
        """Store a new conversation, with the wait it may have opened."""
        ...

    def get_conversation(self, key: str) -> Conversation | None:
        """The conversation as stored now. Callers may change it and then :meth:`commit` it."""
        ...

    def commit(self, conversation: Conversation, *, resolved_wait: int) -> bool:
        """Persist a conversation whose wait ``resolved_wait`` was just resolved, atomically.

        Returns False, changing nothing, if that wait was already resolved in the store.
        """
        ...

    def add_late_call(self, conversation: Conversation, late_call: dict[str, Any]) -> None:
        """Record a call refused with ``wait_expired`` on the stored ``conversation`` (SPEC §8.3).

        Nothing else of the conversation changes, so this never competes with a resolution.
        """
        ...

    def forget(self, key: str) -> None:
        """Drop a finished conversation from memory (retention). A store on disk keeps it there."""
        ...

    def overdue_waits(self, now: float, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` open waits (conversation key, wait index) whose deadline is at or before
        ``now`` (trio time), whoever opened them. Only needed when :attr:`shared`."""
        ...

    def waiting_conversations(self) -> Iterable[Conversation]:
        """Conversations with an open wait; the gate re-arms them when it starts."""
        ...

    def open_wait_count(self) -> int: ...
