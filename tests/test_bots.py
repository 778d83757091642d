from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.core.bots import InvalidBot, load_bot, parse_bot

from .conftest import BOTS


def problems_of(document: dict) -> list[str]:
    with pytest.raises(InvalidBot) as caught:
        parse_bot(document)
    return [str(problem) for problem in caught.value.problems]


def wait_block(**overrides):
    block = {"type": "webhook", "timeout_s": 30, "success": "done", "failure": "done"}
    block.update(overrides)
    return block


def bot(**blocks):
    return {"id": "b", "start": next(iter(blocks)), "blocks": {**blocks, "done": {"type": "end"}}}


@pytest.mark.parametrize("path", sorted(BOTS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_bots_are_valid(path: Path) -> None:
    assert load_bot(path).webhook_blocks()


def test_toml_and_json_give_the_same_bot(tmp_path: Path) -> None:
    from_toml = load_bot(BOTS / "payment.toml")
    json_file = tmp_path / "payment.json"
    json_file.write_text(json.dumps(from_toml.to_dict()))
    assert load_bot(json_file).to_dict() == from_toml.to_dict()


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "id": "b",
            "start": "w",
            "blocks": {
                "w": wait_block(timeout_s=0, success="nowhere", failure=None),
                "x": {"type": "teleport"},
                "m": {"type": "message", "text": "hi", "next": "ghost"},
            },
        }
    )
    assert problems == [
        "blocks.w.success: dangling edge: no block 'nowhere'",
        "blocks.w.failure: missing edge",
        "blocks.w.timeout_s: must be an integer from 1 to 300, got 0",
        "blocks.x.type: unknown type 'teleport'; one of message, set_variable, javascript, webhook, condition, end",
        "blocks.m.next: dangling edge: no block 'ghost'",
    ]


@pytest.mark.parametrize("timeout", [0, 301, -5, 1.5, "30", True, None])
def test_timeout_outside_range_or_not_integer(timeout) -> None:
    block = wait_block(timeout_s=timeout)
    problems = problems_of(bot(w=block))
    assert any(p.startswith("blocks.w.timeout_s") for p in problems), problems


@pytest.mark.parametrize("timeout", [1, 300])
def test_timeout_bounds_are_inclusive(timeout: int) -> None:
    assert parse_bot(bot(w=wait_block(timeout_s=timeout))).blocks["w"].timeout_s == timeout


def test_at_most_fifty_mappings() -> None:
    fifty = {f"v{i}": f"data.f{i}" for i in range(50)}
    assert len(parse_bot(bot(w=wait_block(mappings=fifty))).blocks["w"].mappings) == 50
    problems = problems_of(bot(w=wait_block(mappings={**fifty, "v50": "x"})))
    assert problems == ["blocks.w.mappings: 51 mappings; at most 50"]


@pytest.mark.parametrize("path", ["", "a..b", "a[x]", "a[0", "[0]", "a.", "a]"])
def test_mapping_path_that_does_not_parse(path: str) -> None:
    problems = problems_of(bot(w=wait_block(mappings={"v": path})))
    assert len(problems) == 1 and problems[0].startswith("blocks.w.mappings.v: path does not parse")


def test_empty_variable_names() -> None:
    problems = problems_of(
        bot(
            s={"type": "set_variable", "name": " ", "value": 1, "next": "c"},
            c={"type": "condition", "variable": "", "op": "exists", "true": "w", "false": "w"},
            w=wait_block(mappings={"": "data.x"}),
        )
    )
    assert problems == [
        "blocks.s.name: empty variable name",
        "blocks.c.variable: empty variable name",
        "blocks.w.mappings: empty variable name",
    ]


def test_unknown_fields_and_bad_ops_are_named() -> None:
    problems = problems_of(
        bot(
            c={"type": "condition", "variable": "v", "op": "matches", "value": 1, "true": "w", "false": "w"},
            w=wait_block(timout_s=5),
        )
    )
    assert "blocks.c.op: unknown op 'matches'; one of equals, not_equals, exists, gt, lt, contains" in problems
    assert "blocks.w.timout_s: unknown field for a webhook block" in problems


def test_missing_start_and_ids() -> None:
    problems = problems_of({"blocks": {"a": {"type": "end"}}})
    assert problems == ["id: required; 1-128 characters from A-Z a-z 0-9 _ . -", "start: required; the id of the first block"]


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("id = ")
    with pytest.raises(InvalidBot) as caught:
        load_bot(broken)
    assert "broken.toml" in str(caught.value) and "does not parse" in str(caught.value)


def test_first_webhook_is_found_breadth_first() -> None:
    loaded = load_bot(BOTS / "payment.toml")
    assert loaded.first_webhook() == "wait_payment"


def test_derived_copy_changes_only_id_and_timeout() -> None:
    loaded = load_bot(BOTS / "payment.toml")
    copy = loaded.with_timeout("wait_payment", 30, "payment.t30")
    assert copy.id == "payment.t30" and copy.blocks["wait_payment"].timeout_s == 30
    assert loaded.blocks["wait_payment"].timeout_s == 120
