from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..core.bots import Bot
from ..core.conversations import Conversation, WallClock

__all__ = ["MemoryStore"]


class MemoryStore:
    """Bots and conversations in dicts, as live objects; lost when the process ends.

    There is one process and no await inside the gate's state changes, so :meth:`commit` has
    nothing to arbitrate: the gate has already checked that the wait was open. For the same
    reason no other process can leave an overdue wait behind (:attr:`shared` is False).
    """

    shared = False

    def __init__(self) -> None:
        self._bots: dict[str, Bot] = {}
        self._conversations: dict[str, Conversation] = {}

    def bind(self, clock: WallClock) -> None:
        pass  # times stay on trio's clock in memory

    def add_bot(self, bot: Bot) -> None:
        self._bots[bot.id] = bot

    def get_bot(self, bot_id: str) -> Bot | None:
        return self._bots.get(bot_id)

    def bots(self) -> Iterable[Bot]:
        return list(self._bots.values())

    def add_conversation(self, conversation: Conversation) -> None:
        self._conversations[conversation.key] = conversation

    def get_conversation(self, key: str) -> Conversation | None:
        return self._conversations.get(key)

    def commit(self, conversation: Conversation, *, resolved_wait: int) -> bool:
        return True  # the dict holds the live object, already changed

    def add_late_call(self, conversation: Conversation, late_call: dict[str, Any]) -> None:
        conversation.late_calls.append(late_call)

    def forget(self, key: str) -> None:
        self._conversations.pop(key, None)  # gone for good: later reads answer 404

    def overdue_waits(self, now: float, limit: int) -> list[tuple[str, int]]:
        return []  # the gate's own deadline heap covers every wait of a memory store

    def waiting_conversations(self) -> Iterable[Conversation]:
        return [c for c in self._conversations.values() if c.open_wait is not None]

    def open_wait_count(self) -> int:
        return sum(1 for c in self._conversations.values() if c.open_wait is not None)
