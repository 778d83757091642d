from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..core.bots import Bot
from ..core.conversations import Conversation

__all__ = ["Store"]


class Store(Protocol):
    """What the gate needs from storage. Every method is synchronous and quick."""

    def add_bot(self, bot: Bot) -> None: ...

    def get_bot(self, bot_id: str) -> Bot | None: ...

    def bots(self) -> Iterable[Bot]: ...

    def add_conversation(self, conversation: Conversation) -> None: ...

    def get_conversation(self, key: str) -> Conversation | None: ...

    def save_conversation(self, conversation: Conversation) -> None:
        """Called after every change of a conversation (a no-op for memory)."""
        ...

    def waiting_conversations(self) -> Iterable[Conversation]:
        """Conversations with an open wait; the gate re-arms them when it starts."""
        ...
