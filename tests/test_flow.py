"""The flow engine on its own: no gate, no HTTP."""

from __future__ import annotations

import pytest

from harness.core.bots import load_bot, parse_bot
from harness.core.conversations import Conversation
from harness.core.flow import MAX_BLOCKS_WITHOUT_WAITING, advance, evaluate_condition, interpolate

from .conftest import BOTS


def conversation(**variables) -> Conversation:
    url = "http://gate.test/c/KEY123"
    c = Conversation(key="KEY123", bot="b", url=url, started_at=0.0)
    c.variables.update({"conversation_key": "KEY123", "Conversation URL": url, **variables})
    return c


async def run(blocks: dict, start: str, **variables) -> Conversation:
    bot = parse_bot({"id": "b", "start": start, "blocks": blocks})
    c = conversation(**variables)
    await advance(c, bot, bot.start, now=0.0)
    return c


async def test_seed_snippet_runs_unchanged_and_sets_the_key(autojump_clock: object) -> None:
    bot = load_bot(BOTS / "payment.toml")
    c = conversation()
    c.variables["Conversation URL"] = "http://elsewhere/c/FROM_URL"
    wait = await advance(c, bot, bot.start, now=10.0)
    assert c.variables["conversation_key"] == "FROM_URL"
    assert c.status == "waiting" and c.block == "wait_payment"
    assert wait is not None and (wait.opened_at, wait.deadline) == (10.0, 130.0)
    assert c.transcript == [{"block": "ask", "text": "Please pay here: https://pay.example/checkout?ref=KEY123"}]


def test_interpolation_renders_json_values_and_blanks_unknowns() -> None:
    assert interpolate("{{a}}/{{ b }}/{{c}}/{{missing}}/{{n}}", {"a": 1.5, "b": True, "c": [1], "n": None}) == "1.5/true/[1]//"


async def test_set_variable_interpolates_strings_and_keeps_json_values(autojump_clock: object) -> None:
    c = await run(
        {
            "s1": {"type": "set_variable", "name": "greeting", "value": "hi {{who}}", "next": "s2"},
            "s2": {"type": "set_variable", "name": "items", "value": [1, 2], "next": "m"},
            "m": {"type": "message", "text": "{{greeting}} {{items}}"},
        },
        "s1",
        who="Ada",
    )
    assert c.status == "completed"
    assert c.variables["items"] == [1, 2]
    assert c.transcript[-1]["text"] == "hi Ada [1, 2]"


@pytest.mark.parametrize(
    ("op", "actual", "expected", "result"),
    [
        ("equals", "42", 42, True),
        ("equals", "abc", "abc", True),
        ("not_equals", "abc", "abd", True),
        ("gt", "10", 9, True),
        ("lt", 3, 9.5, True),
        ("gt", "ten", 9, False),
        ("contains", "hello world", "world", True),
        ("contains", ["a", "b"], "b", True),
        ("contains", 5, "5", False),
    ],
)
def test_condition_ops(op: str, actual, expected, result: bool) -> None:
    assert evaluate_condition(op, actual, expected, present=True) is result


def test_exists_is_false_for_unset_and_null() -> None:
    assert evaluate_condition("exists", None, None, present=False) is False
    assert evaluate_condition("exists", None, None, present=True) is False
    assert evaluate_condition("exists", 0, None, present=True) is True


async def test_javascript_error_takes_failure_edge_without_partial_changes(autojump_clock: object) -> None:
    c = await run(
        {
            "js": {"type": "javascript", "code": "wn.setConversationVariable('x', 1); throw new Error('no')",
                   "next": "ok", "failure": "bad"},
            "ok": {"type": "message", "text": "ok"},
            "bad": {"type": "message", "text": "bad"},
        },
        "js",
    )
    assert c.transcript[-1]["text"] == "bad" and "x" not in c.variables


async def test_javascript_error_without_failure_edge_errors_the_conversation(autojump_clock: object) -> None:
    c = await run({"js": {"type": "javascript", "code": "while (true) {}", "next": "m"}, "m": {"type": "end"}}, "js")
    assert c.status == "errored"
    assert c.error == {"block": "js", "reason": "javascript: time limit of 0.5 s exceeded"}


async def test_a_loop_without_waiting_is_stopped(autojump_clock: object) -> None:
    c = await run(
        {
            "a": {"type": "set_variable", "name": "n", "value": 1, "next": "b"},
            "b": {"type": "condition", "variable": "n", "op": "exists", "true": "a", "false": "a"},
        },
        "a",
    )
    assert c.status == "errored"
    assert f"more than {MAX_BLOCKS_WITHOUT_WAITING} blocks" in c.error["reason"]


async def test_edgeless_block_completes(autojump_clock: object) -> None:
    c = await run({"m": {"type": "message", "text": "bye"}}, "m")
    assert (c.status, c.block) == ("completed", "m")
