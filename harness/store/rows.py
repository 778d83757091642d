"""Conversations as table rows, the same for every SQL store (SQLite, PostgreSQL).

Both stores keep the same tables and columns (``harness delays`` reads either), with times as
unix seconds; a conversation's live object keeps them on trio's clock. These helpers convert
between the two through the gate's :class:`~harness.core.conversations.WallClock`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..core.conversations import Conversation, Wait, WallClock

__all__ = ["state_json", "wait_rows", "open_wait_rows", "conversation_from_rows"]

#: ``waits`` columns in the order :func:`wait_rows` gives them (after ``key, idx``).
WAIT_COLUMNS = "block, opened_at, deadline, timeout_s, outcome, reason, resolved_at, waited_s"


def state_json(conversation: Conversation, clock: WallClock) -> str:
    """The ``conversations.state`` column: everything of a conversation but its waits and late calls."""
    return json.dumps({
        "status": conversation.status,
        "block": conversation.block,
        "url": conversation.url,
        "started_at": clock.unix(conversation.started_at),
        "variables": conversation.variables,
        "transcript": conversation.transcript,
        "error": conversation.error,
    })


def wait_rows(conversation: Conversation, clock: WallClock, first: int = 0) -> list[tuple[Any, ...]]:
    """``(key, idx, block, opened_at, …)`` rows of the conversation's waits from index ``first`` on."""
    unix = clock.unix
    return [
        (conversation.key, index, w.block, unix(w.opened_at), unix(w.deadline), w.timeout_s, w.outcome, w.reason,
         None if w.resolved_at is None else unix(w.resolved_at), w.waited_s)
        for index, w in enumerate(conversation.waits)
        if index >= first
    ]


def open_wait_rows(rows: Iterable[tuple[Any, ...]]) -> int:
    """How many of :func:`wait_rows`' rows are open waits (no outcome)."""
    return sum(1 for row in rows if row[6] is None)


def conversation_from_rows(key: str, bot: str, state_text: str, waits: Iterable[tuple[Any, ...]],
                           late_calls: Iterable[tuple[Any, ...]], clock: WallClock) -> Conversation:
    """A live conversation from its row, its ``waits`` rows (:data:`WAIT_COLUMNS`, by index) and its
    ``late_calls`` rows (``block, at, after_deadline_s``, oldest first)."""
    state: dict[str, Any] = json.loads(state_text)
    trio_time = clock.from_unix
    conversation = Conversation(
        key=key, bot=bot, url=state["url"], started_at=trio_time(state["started_at"]),
        status=state["status"], block=state["block"], variables=state["variables"],
        transcript=state["transcript"], error=state["error"],
    )
    for block, opened_at, deadline, timeout_s, outcome, reason, resolved_at, waited_s in waits:
        conversation.waits.append(Wait(
            block=block, opened_at=trio_time(opened_at), deadline=trio_time(deadline), timeout_s=timeout_s,
            outcome=outcome, reason=reason, resolved_at=None if resolved_at is None else trio_time(resolved_at),
            waited_s=waited_s,
        ))
    conversation.late_calls = [
        {"block": block, "at": trio_time(at), "after_deadline_s": after} for block, at, after in late_calls
    ]
    return conversation
