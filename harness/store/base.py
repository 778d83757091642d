from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ..core.bots import Bot
from ..core.conversations import Conversation, WallClock

__all__ = ["Store"]


class Store(Protocol):
    """What the gate needs from storage.

    Every method is synchronous and short: the gate calls them between two awaits, which is what
    makes a check and its resolution atomic within one process. Across processes sharing a
    store, :meth:`commit` is the arbiter: it refuses to resolve a wait that is no longer open.
    """

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

    def forget_conversation(self, key: str) -> None:
        """Drop the conversation from memory; a store on disk keeps it readable there."""
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

    def waiting_conversations(self) -> Iterable[Conversation]:
        """Conversations with an open wait; the gate re-arms them when it starts."""
        ...

    def open_wait_count(self) -> int: ...
