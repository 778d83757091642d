"""The flow engine: runs a conversation's blocks until it waits or ends.

One *step* is one call of :func:`advance`: from a start or a wait's resolution to the next wait
or end. Every block type but ``webhook`` and ``javascript`` finishes at once; a webhook block
merely *opens* a wait and returns it.

The engine itself is a generator (:func:`_step`) that yields each script it wants run and
receives the :class:`~harness.core.js.ScriptRun`; :func:`advance` feeds it through
:func:`~harness.core.js.run_script_async`, which runs a script inline under ``MockClock`` (no
thread touches virtual time, nothing yields: the gate's check, resolution and step stay atomic)
and off the event loop in real time (``/healthz`` and every other request keep being answered
while scripts run; the conversation is ``running`` meanwhile).

Budget: all scripts of one step share :data:`STEP_BUDGET_S` of wall time (``perf_counter``,
never trio's clock, which may be virtual); each script's limit is the smaller of its own 0.5 s
and what is left. A step whose budget runs out ends the conversation ``errored``, whatever
``failure`` edges exist: the budget protects the server, not the flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import trio

from .bots import Block, Bot
from .conversations import Conversation, Wait
from .js import PLACEHOLDER, TIME_LIMIT_S, ScriptRun, as_text, run_script_async
from .virtual_time import in_virtual_time

__all__ = ["MAX_BLOCKS_WITHOUT_WAITING", "STEP_BUDGET_S", "advance", "interpolate",
           "evaluate_condition"]

MAX_BLOCKS_WITHOUT_WAITING = 1000
STEP_BUDGET_S = 1.0
# Below this much budget left, a script is not started: it could not do anything useful.
_MIN_SCRIPT_S = 0.005


def interpolate(template: str, variables: dict[str, Any]) -> str:
    """Replace ``{{name}}`` with the variable's value; unknown variables become empty.

    >>> interpolate("Thanks, we received {{ amount }}.", {"amount": 42})
    'Thanks, we received 42.'
    """
    return PLACEHOLDER.sub(lambda match: as_text(variables.get(match[1])), template)


def _number(value: Any) -> int | float | Decimal | None:
    """``value`` as an exact number, or None when it is not one.

    Exact, never ``float()``: a 400-digit integer is valid JSON, and converting it to a float
    overflows (SPEC §17.4). Ints stay ints, text becomes a :class:`~decimal.Decimal`; Python
    compares ints, floats and Decimals with each other exactly. Non-finite values (``"inf"``,
    ``"NaN"``) are not numbers here: they compare as text.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
        try:
            number = Decimal(value)
        except ArithmeticError:  # decimal.InvalidOperation: not a number
            return None
        return number if number.is_finite() else None
    return None


def _as_comparable(left: Any, right: Any) -> tuple[Any, Any]:
    """Two numbers made comparable: exact, unless one is a float — then both at float precision
    (so the form value ``"42.1"`` equals the JSON ``42.1``), an int too large for a float
    becoming an infinity of its sign instead of raising ``OverflowError``."""
    if isinstance(left, float) or isinstance(right, float):
        return _as_float(left), _as_float(right)
    return left, right


def _as_float(number: Any) -> float | None:
    if number is None:
        return None
    try:
        return float(number)
    except OverflowError:  # only an int can overflow; Decimals become infinities by themselves
        return math.inf if number > 0 else -math.inf


# Longer text is not taken for a number (a JSON body cannot carry a longer integer anyway: Python
# refuses to parse one of more than 4300 digits).
_MAX_NUMBER_TEXT = 5000


def evaluate_condition(op: str, actual: Any, expected: Any, present: bool) -> bool:
    """Decide a ``condition`` block; never raises for the values' sake.

    ``equals``/``not_equals`` compare numbers as numbers (so the form value ``"42"`` equals
    ``42``, and ``10**400`` is greater than ``1e308``) and everything else exactly or by its
    text; ``gt``/``lt`` need two numbers and are false otherwise; ``contains`` is substring for
    text and membership for lists; ``exists`` is true when the variable is set to anything but
    null.

    >>> evaluate_condition("gt", 10**400, "1e308", True), evaluate_condition("equals", "1e400", 10**400, True)
    (True, True)
    """
    if op == "exists":
        return present and actual is not None
    if op in ("equals", "not_equals"):
        left, right = _as_comparable(_number(actual), _number(expected))
        if left is not None and right is not None:
            same = left == right
        else:
            same = present and (actual == expected or as_text(actual) == as_text(expected))
        return same if op == "equals" else not same
    if op in ("gt", "lt"):
        left, right = _as_comparable(_number(actual), _number(expected))
        if left is None or right is None:
            return False
        return left > right if op == "gt" else left < right
    if op == "contains":
        if isinstance(actual, list):
            return expected in actual
        if isinstance(actual, str):
            return as_text(expected) in actual
        if isinstance(actual, dict):
            return as_text(expected) in actual
        return False
    raise ValueError(f"unknown condition op {op!r}")


@dataclass(frozen=True, slots=True)
class _Script:
    """A script the engine wants run: its code, the variables it sees, its time limit."""

    code: str
    variables: dict[str, Any]
    time_limit_s: float


async def advance(conversation: Conversation, bot: Bot, block_id: str | None, now: float) -> Wait | None:
    """Run ``conversation`` from ``block_id`` until it waits or ends.

    Returns the newly opened :class:`Wait` when the conversation stopped at a webhook block (the
    caller arms its deadline), or ``None`` when it completed or errored. ``block_id=None`` ends
    the conversation as completed: that is where an edge-less block leads.

    Under ``MockClock`` (:func:`~harness.core.virtual_time.in_virtual_time`) scripts run inline and
    nothing here yields: the caller's check, resolution and this step are one atomic step. In
    real time each script runs off the event loop, so a runaway script never holds it; the
    conversation is ``running`` meanwhile, and a wait opens when its block is reached.
    """
    inline = in_virtual_time()
    engine = _step(conversation, bot, block_id, (lambda: now) if inline else trio.current_time)
    if inline:
        return await _drive(engine, copy_variables=False)
    # Shielded: a step cut short (a client hanging up) would leave the conversation `running`
    # for good; the step budget bounds how long the shield can hold.
    with trio.CancelScope(shield=True):
        wait = await _drive(engine, copy_variables=True)
    return wait


async def _drive(engine: Generator[_Script, ScriptRun, Wait | None], *, copy_variables: bool) -> Wait | None:
    """Feed the engine each script's run until the step ends; return what it returns."""
    try:
        script = next(engine)
        while True:
            variables = dict(script.variables) if copy_variables else script.variables  # a thread reads a copy
            script = engine.send(await run_script_async(script.code, variables, time_limit_s=script.time_limit_s))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _step(conversation: Conversation, bot: Bot, block_id: str | None,
          clock: Callable[[], float]) -> Generator[_Script, ScriptRun, Wait | None]:
    """The engine: one flow step, yielding each script to run and receiving its result.

    ``clock`` gives trio's time when a webhook block opens its wait.
    """
    conversation.status = "running"
    steps = 0
    spent = 0.0  # wall seconds the step's scripts took
    while block_id is not None:
        steps += 1
        if steps > MAX_BLOCKS_WITHOUT_WAITING:
            _fail(conversation, block_id, f"ran more than {MAX_BLOCKS_WITHOUT_WAITING} blocks without waiting")
            return None
        block = bot.blocks[block_id]
        conversation.block = block_id
        if block.type == "webhook":
            now = clock()
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
        if block.type != "javascript":
            block_id = _run_block(conversation, block)
            continue
        left = STEP_BUDGET_S - spent
        if left < _MIN_SCRIPT_S:
            _fail(conversation, block.id, _BUDGET_SPENT)
            return None
        limit = min(TIME_LIMIT_S, left)
        result = yield _Script(block.config["code"], conversation.variables, limit)
        spent += result.elapsed_s
        if result.error is None:
            assert result.variables is not None
            conversation.variables.clear()
            conversation.variables.update(result.variables)
            block_id = block.edges.get("next")
        elif result.error.timed_out and limit < TIME_LIMIT_S:
            _fail(conversation, block.id, _BUDGET_SPENT)  # stopped by the step's budget, not its own
            return None
        elif "failure" in block.edges:
            block_id = block.edges["failure"]
        else:
            _fail(conversation, block.id, f"javascript: {result.error}")
            return None
    conversation.status = "completed"
    return None


_BUDGET_SPENT = f"javascript: the step's scripts ran out of their {STEP_BUDGET_S:g} s budget"


def _run_block(conversation: Conversation, block: Block) -> str | None:
    """Execute one immediate non-script block and return the id of the next one (``None``: end)."""
    config, variables = block.config, conversation.variables
    if block.type == "message":
        conversation.transcript.append({"block": block.id, "text": interpolate(config["text"], variables)})
    elif block.type == "set_variable":
        value = config["value"]
        variables[config["name"]] = interpolate(value, variables) if isinstance(value, str) else value
    elif block.type == "condition":
        name = config["variable"]
        taken = evaluate_condition(config["op"], variables.get(name), config.get("value"), name in variables)
        return block.edges["true" if taken else "false"]
    return block.edges.get("next")


def _fail(conversation: Conversation, block_id: str, reason: str) -> None:
    conversation.status = "errored"
    conversation.block = block_id
    conversation.error = {"block": block_id, "reason": reason}
