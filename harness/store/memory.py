from __future__ import annotations

import heapq
from typing import Any

from ..core.bots import Bot
from ..core.conversations import MAX_LATE_CALLS, Conversation, EarlyCall, WallClock
from ..core.errors import Refused
from ..core.store import OpenWait

__all__ = ["MemoryStore"]


class MemoryStore:
    """Bots and conversations in dicts, as live objects; lost when the process ends.

    Its methods are ``async`` for the protocol's sake but never yield, so the gate's check and
    resolution of a call stay one uninterrupted step. There is one process and the gate changes
    the live objects itself, so :meth:`commit` has nothing to arbitrate; for the same reason no
    other process can leave an overdue wait behind (:attr:`shared` is False).

    Open waits are counted as they open and resolve, and kept in a heap by deadline (resolved
    ones are dropped lazily), so the live page's "soonest N" and count cost the same however
    many waits are open.
    """

    shared = False

    def __init__(self) -> None:
        self._bots: dict[str, Bot] = {}
        self._conversations: dict[str, Conversation] = {}
        self._open = 0
        # (deadline, key, wait index); entries of resolved or forgotten waits are skipped and
        # swept out when they outnumber the live ones.
        self._deadlines: list[tuple[float, str, int]] = []
        self._early_ids = 0

    def bind(self, clock: WallClock) -> None:
        pass  # times stay on trio's clock in memory

    async def probe(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add_bot(self, bot: Bot) -> None:
        if bot.id in self._bots:
            raise Refused("bot_exists", f"a bot with id {bot.id!r} already exists")
        self._bots[bot.id] = bot

    async def get_bot(self, bot_id: str) -> Bot | None:
        return self._bots.get(bot_id)

    async def bots(self) -> list[Bot]:
        return list(self._bots.values())

    async def add_conversation(self, conversation: Conversation) -> None:
        self._conversations[conversation.key] = conversation
        self._opened(conversation, 0)

    async def get_conversation(self, key: str) -> Conversation | None:
        return self._conversations.get(key)

    async def commit(self, conversation: Conversation, *, resolved_wait: int) -> bool:
        # The dict holds the live object, already changed: only the bookkeeping is left.
        self._open -= 1
        self._opened(conversation, resolved_wait + 1)
        return True

    def _opened(self, conversation: Conversation, first: int) -> None:
        for index in range(first, len(conversation.waits)):
            wait = conversation.waits[index]
            if wait.is_open:
                self._open += 1
                heapq.heappush(self._deadlines, (wait.deadline, conversation.key, index))
        if len(self._deadlines) > 2 * self._open + 1024:
            self._deadlines = [entry for entry in self._deadlines if self._is_open(entry[1], entry[2])]
            heapq.heapify(self._deadlines)

    def _is_open(self, key: str, index: int) -> bool:
        conversation = self._conversations.get(key)
        return conversation is not None and index < len(conversation.waits) and conversation.waits[index].is_open

    async def add_late_call(self, conversation: Conversation, late_call: dict[str, Any]) -> None:
        if len(conversation.late_calls) < MAX_LATE_CALLS:
            conversation.late_calls.append(late_call)
        conversation.late_calls_total += 1

    async def hold_early_call(self, conversation: Conversation, early: EarlyCall) -> bool:
        self._early_ids += 1
        early.id = self._early_ids
        conversation.early_calls.append(early)
        return True

    async def expire_early_calls(self, now: float) -> None:
        pass  # live objects: a pending call reads `expired` once its time has passed

    async def forget(self, key: str) -> None:
        conversation = self._conversations.pop(key, None)  # gone for good: later reads answer 404
        if conversation is not None and conversation.open_wait is not None:
            self._open -= 1

    async def open_waits(self) -> list[tuple[str, int, float]]:
        return [(key, index, deadline) for deadline, key, index in self._deadlines if self._is_open(key, index)]

    async def overdue_waits(self, now: float, limit: int) -> list[tuple[str, int]]:
        return []  # the gate's own deadline heap covers every wait of a memory store

    async def soonest_open_waits(self, limit: int) -> list[OpenWait]:
        # Walk the heap as a tree, smallest first: O(limit · log limit) plus the stale entries met.
        heap, found = self._deadlines, list[OpenWait]()
        frontier = [(heap[0], 0)] if heap else []
        while frontier and len(found) < limit:
            (deadline, key, index), position = heapq.heappop(frontier)
            if self._is_open(key, index):
                conversation = self._conversations[key]
                wait = conversation.waits[index]
                found.append(OpenWait(key=key, index=index, bot=conversation.bot, block=wait.block,
                                      opened_at=wait.opened_at, deadline=deadline, timeout_s=wait.timeout_s))
            for child in (2 * position + 1, 2 * position + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return found

    async def open_wait_count(self) -> int:
        return self._open
