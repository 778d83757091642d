"""The webhook calls the gate answered, as a processor's dashboard lists them (SPEC §16.3).

Someone wiring up a payment processor needs to see the calls that were *refused* — a wrong
secret, a key at the wrong path — as plainly as the accepted ones. This web-layer record keeps
the last deliveries of both kinds for the live page and logs every refused call at ``info`` as one
JSON line: status, error, bot, block and the key's first characters — never the body, a secret or
a signature.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from ..core.gate import Gate

__all__ = ["Deliveries", "KEY_SHOWN", "RECENT"]

log = logging.getLogger("harness.web.deliveries")

RECENT = 50  # deliveries and refusals kept for the page
KEY_SHOWN = 6  # characters of a refused call's key in the log and the refused list
# Refusals that name a conversation the gate has: the page may link to it.
ABOUT_A_CONVERSATION = {"wait_expired", "not_waiting", "already_held"}


class Deliveries:
    """The last accepted and refused webhook calls, and how many of each there were."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)  # accepted and refused, oldest first
        self.refused: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.accepted_total = 0
        self.refused_total = 0

    def _now(self) -> str:
        return self.gate.clock.iso(trio.current_time()) or ""

    def accepted(self, bot: str | None, block: str | None, status: int, answer: dict[str, Any]) -> None:
        self.accepted_total += 1
        key = answer.get("conversation_key")
        self.recent.append({"at": self._now(), "bot": bot, "block": block, "status": status, "error": None,
                            "outcome": answer.get("status", "accepted"), "conversation_key": key,
                            "key": key[:KEY_SHOWN] if isinstance(key, str) else None})

    def refused_call(self, bot: str | None, block: str | None, status: int, error: str, key: str | None) -> None:
        """Record and log a 4xx answer to a webhook call (``key``: the call's key, when it had one)."""
        self.refused_total += 1
        prefix = key[:KEY_SHOWN] if key else None
        entry = {"at": self._now(), "bot": bot, "block": block, "status": status, "error": error}
        self.refused.append(entry)
        linkable = key if error in ABOUT_A_CONVERSATION else None  # the conversation exists: the page links it
        self.recent.append({**entry, "outcome": "refused", "conversation_key": linkable, "key": prefix})
        log.info("webhook call refused", extra={"status": status, "error": error, "bot": bot, "block": block,
                                                 "key": prefix})
