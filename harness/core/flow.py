"""The flow engine: runs a conversation's blocks until it waits or ends.

:func:`advance` is synchronous on purpose. Every block type but ``webhook`` finishes at once
(QuickJS runs in the calling thread within its 0.5 s limit), and a webhook block merely *opens* a
wait and returns it. Because nothing here awaits, the gate can check a call, resolve a wait and
run the flow on to its next stop as one atomic step under trio's cooperative scheduling.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .bots import Block, Bot
from .conversations import Conversation, Wait
from .js import ScriptError, run_script

__all__ = ["MAX_BLOCKS_WITHOUT_WAITING", "advance", "interpolate", "evaluate_condition"]

MAX_BLOCKS_WITHOUT_WAITING = 1000
_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def interpolate(template: str, variables: dict[str, Any]) -> str:
    """Replace ``{{name}}`` with the variable's value; unknown variables become empty.

    >>> interpolate("Thanks, we received {{ amount }}.", {"amount": 42})
    'Thanks, we received 42.'
    """
    return _PLACEHOLDER.sub(lambda match: _as_text(variables.get(match[1])), template)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def evaluate_condition(op: str, actual: Any, expected: Any, present: bool) -> bool:
    """Decide a ``condition`` block.

    ``equals``/``not_equals`` compare numbers as numbers (so the form value ``"42"`` equals
    ``42``) and everything else exactly or by its text; ``gt``/``lt`` need two numbers and are
    false otherwise; ``contains`` is substring for text and membership for lists; ``exists`` is
    true when the variable is set to anything but null.
    """
    if op == "exists":
        return present and actual is not None
    if op in ("equals", "not_equals"):
        left, right = _number(actual), _number(expected)
        if left is not None and right is not None:
            same = left == right
        else:
            same = present and (actual == expected or _as_text(actual) == _as_text(expected))
        return same if op == "equals" else not same
    if op in ("gt", "lt"):
        left, right = _number(actual), _number(expected)
        if left is None or right is None:
            return False
        return left > right if op == "gt" else left < right
    if op == "contains":
        if isinstance(actual, list):
            return expected in actual
        if isinstance(actual, str):
            return _as_text(expected) in actual
        if isinstance(actual, dict):
            return _as_text(expected) in actual
        return False
    raise ValueError(f"unknown condition op {op!r}")


def advance(conversation: Conversation, bot: Bot, block_id: str | None, now: float) -> Wait | None:
    """Run ``conversation`` from ``block_id`` until it waits or ends.

    Returns the newly opened :class:`Wait` when the conversation stopped at a webhook block (the
    caller arms its deadline), or ``None`` when it completed or errored. ``block_id=None`` ends
    the conversation as completed: that is where an edge-less block leads.
    """
    conversation.status = "running"
    steps = 0
    while block_id is not None:
        steps += 1
        if steps > MAX_BLOCKS_WITHOUT_WAITING:
            _fail(conversation, block_id, f"ran more than {MAX_BLOCKS_WITHOUT_WAITING} blocks without waiting")
            return None
        block = bot.blocks[block_id]
        conversation.block = block_id
        if block.type == "webhook":
            wait = Wait(
                block=block_id,
                opened_at=now,
                deadline=now + block.timeout_s,
                timeout_s=block.timeout_s,
            )
            conversation.waits.append(wait)
            conversation.status = "waiting"
            return wait
        if block.type == "end":
            break
        try:
            block_id = _run_block(conversation, block)
        except ScriptError as error:
            if "failure" not in block.edges:
                _fail(conversation, block.id, f"javascript: {error}")
                return None
            block_id = block.edges["failure"]
    conversation.status = "completed"
    return None


def _run_block(conversation: Conversation, block: Block) -> str | None:
    """Execute one immediate block and return the id of the next one (``None``: end)."""
    config, variables = block.config, conversation.variables
    if block.type == "message":
        conversation.transcript.append({"block": block.id, "text": interpolate(config["text"], variables)})
    elif block.type == "set_variable":
        value = config["value"]
        variables[config["name"]] = interpolate(value, variables) if isinstance(value, str) else value
    elif block.type == "javascript":
        updated = run_script(config["code"], variables)
        variables.clear()
        variables.update(updated)
    elif block.type == "condition":
        name = config["variable"]
        taken = evaluate_condition(config["op"], variables.get(name), config.get("value"), name in variables)
        return block.edges["true" if taken else "false"]
    return block.edges.get("next")


def _fail(conversation: Conversation, block_id: str, reason: str) -> None:
    conversation.status = "errored"
    conversation.block = block_id
    conversation.error = {"block": block_id, "reason": reason}
