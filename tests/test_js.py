"""JavaScript you can trust: limits that hold, values that can be kept, placeholders that stay data.

Runaway scripts run with a short limit where the point is *that* they stop, not *when*; the CPU
time they used is the sharp measure (the engine's limit is CPU time), the wall time only a loose
bound against a hang.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import trio

from harness.core.bots import load_bot, parse_bot
from harness.core.conversations import Conversation
from harness.core.flow import STEP_BUDGET_S, advance
from harness.core.gate import Gate
from harness.core.js import TIME_LIMIT_S, render_code, run_script
from harness.store import MemoryStore

from .conftest import BOTS, PUBLIC_URL


def conversation(**variables: Any) -> Conversation:
    url = "http://gate.test/c/KEY123"
    c = Conversation(key="KEY123", bot="b", url=url, started_at=0.0)
    c.variables.update({"conversation_key": "KEY123", "Conversation URL": url, **variables})
    return c


def js_bot(code: str, *, failure: bool = False, bot_id: str = "b") -> dict[str, Any]:
    """A bot that runs ``code`` then says "ok" (or "bad" on its failure edge, if given)."""
    block: dict[str, Any] = {"type": "javascript", "code": code, "next": "ok"}
    if failure:
        block["failure"] = "bad"
    return {"id": bot_id, "start": "js", "blocks": {
        "js": block, "ok": {"type": "message", "text": "ok"}, "bad": {"type": "message", "text": "bad"}}}


async def run_flow(bot: dict[str, Any], **variables: Any) -> Conversation:
    parsed = parse_bot(bot)
    c = conversation(**variables)
    await advance(c, parsed, parsed.start, now=0.0)
    return c


# -- everything a script causes is inside its limit --------------------------------------------

RUNAWAYS = {
    "loop": "while (true) {}",
    "catastrophic regex": "/(a+)+$/.test('a'.repeat(40) + 'b')",
    "looping toJSON": "wn.setConversationVariable('x', {toJSON() { while (true) {} }})",
    "looping getter": "wn.setConversationVariable('x', {get y() { while (true) {} }})",
    "thrown value whose text loops": "throw {toString() { while (true) {} }}",
    "thrown value whose message loops": "throw {get name() { while (true) {} }, get message() { while (true) {} }}",
    "thrown proxy": "throw new Proxy({}, {get() { while (true) {} }})",
    "error text tampered, then a loop": "Error.prototype.toString = function () { while (true) {} };"
    " Object.prototype[Symbol.toPrimitive] = function () { while (true) {} }; while (true) {}",
    "error stack tampered, then a loop": "Object.defineProperty(Error.prototype, 'stack', {get() { while (true) {} }});"
    " Error.prepareStackTrace = () => ({toString() { while (true) {} }}); while (true) {}",
    "loop in finally": "try { while (true) {} } finally { while (true) {} }",
}


@pytest.mark.parametrize("code", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_a_runaway_script_stops_at_its_limit(code: str) -> None:
    cpu = time.process_time()
    run = run_script(code, {"a": 1}, time_limit_s=0.1)
    cpu = time.process_time() - cpu
    assert run.error is not None and run.error.timed_out
    assert str(run.error) == "time limit of 0.1 s exceeded"
    assert run.variables is None
    assert cpu < 0.1 + 0.05
    assert run.elapsed_s < 2.0  # a loose bound: a busy machine stretches CPU time, a hang would not end


@pytest.mark.parametrize("code", [RUNAWAYS["loop"], RUNAWAYS["catastrophic regex"]], ids=["loop", "regex"])
def test_the_default_limit_is_half_a_second(code: str) -> None:
    cpu = time.process_time()
    run = run_script(code, {})
    cpu = time.process_time() - cpu
    assert run.error is not None and str(run.error) == f"time limit of {TIME_LIMIT_S} s exceeded"
    assert 0.3 < cpu < TIME_LIMIT_S + 0.05


def test_a_memory_bomb_stops_at_the_memory_limit() -> None:
    run = run_script("let a = []; while (true) { a.push('x'.repeat(1 << 20) + a.length) }", {})
    assert run.error is not None and not run.error.timed_out
    assert str(run.error) == "memory limit of 32 MiB exceeded"


# -- what a script writes must be storable and answerable ------------------------------------

UNSTORABLE = {
    "5,000-deep object": "let o = {}; for (let i = 0; i < 5000; i++) o = {o}; wn.setConversationVariable('x', o)",
    "100,000-deep object": "let o = {}; for (let i = 0; i < 100000; i++) o = {o}; wn.setConversationVariable('x', o)",
    "65-deep object": "let o = 1; for (let i = 0; i < 65; i++) o = [o]; wn.setConversationVariable('x', o)",
    "lone surrogate": "wn.setConversationVariable('x', 'a\\ud800b')",
    "lone surrogate in a name": "wn.setConversationVariable('\\udfff', 1)",
    "BigInt": "wn.setConversationVariable('x', 10n)",
    "toJSON hiding everything": "Object.prototype.toJSON = function () { return undefined }",
}


@pytest.mark.parametrize("code", UNSTORABLE.values(), ids=UNSTORABLE.keys())
async def test_an_unstorable_value_fails_the_block(code: str) -> None:
    c = await run_flow(js_bot(code, failure=True), a=1)
    assert (c.status, c.transcript[-1]["text"]) == ("completed", "bad")
    assert "x" not in c.variables and c.variables["a"] == 1

    c = await run_flow(js_bot(code))
    assert c.status == "errored"
    assert c.error is not None and c.error["block"] == "js" and c.error["reason"].startswith("javascript: ")


async def test_the_reason_says_why_a_value_could_not_be_kept() -> None:
    c = await run_flow(js_bot("wn.setConversationVariable('x', '\\ud800')"))
    assert c.error == {"block": "js", "reason": "javascript: a variable cannot be stored: "
                       "a string at x is not valid Unicode (lone surrogate)"}
    c = await run_flow(js_bot("let o = 1; for (let i = 0; i < 65; i++) o = [o]; wn.setConversationVariable('x', o)"))
    assert c.error is not None and "nested deeper than 64 levels" in c.error["reason"]


def test_error_text_is_valid_unicode_and_bounded() -> None:
    run = run_script("throw new Error('\\ud800' + 'x'.repeat(100000))", {})
    assert run.error is not None
    text = str(run.error)
    text.encode("utf-8")  # no lone surrogate left
    assert text.startswith("Error: \\ud800x") and len(text) <= 300


def test_names_are_own_properties_only() -> None:
    run = run_script("wn.setConversationVariable('__proto__', 5);"
                     " wn.setConversationVariable('t', typeof wn.getConversationVariable('toString'))", {})
    assert run.variables == {"__proto__": 5, "t": "undefined"}


def test_replacing_builtins_cannot_change_how_variables_are_read_back() -> None:
    run = run_script("JSON.stringify = () => { while (true) {} }; wn.setConversationVariable('x', 1)", {"a": 1})
    assert run.variables == {"a": 1, "x": 1}


# -- the step budget ---------------------------------------------------------------------------


async def test_a_condition_looped_chain_of_legal_scripts_is_stopped_by_the_step_budget() -> None:
    near_limit = "const t = Date.now(); while (Date.now() - t < 300) {} wn.setConversationVariable('n', 1)"
    bot = parse_bot({"id": "b", "start": "js", "blocks": {
        "js": {"type": "javascript", "code": near_limit, "next": "again", "failure": "again"},
        "again": {"type": "condition", "variable": "n", "op": "exists", "true": "js", "false": "js"},
    }})
    c = conversation()
    started = time.perf_counter()
    await advance(c, bot, bot.start, now=0.0)
    elapsed = time.perf_counter() - started
    assert c.status == "errored"
    assert c.error == {"block": "js", "reason": f"javascript: the step's scripts ran out of their {STEP_BUDGET_S:g} s budget"}
    assert elapsed < STEP_BUDGET_S + 1.0  # before the budget: 1,000 blocks, minutes


async def test_the_budget_is_per_step() -> None:
    """Two 0.3 s scripts, then a wait, then two more: each step stays within its own budget."""
    script = "const t = Date.now(); while (Date.now() - t < 300) {}"
    bot = parse_bot({"id": "b", "start": "a", "blocks": {
        "a": {"type": "javascript", "code": script, "next": "b"},
        "b": {"type": "javascript", "code": script, "next": "wait"},
        "wait": {"type": "webhook", "timeout_s": 5, "success": "c", "failure": "c"},
        "c": {"type": "javascript", "code": script, "next": "d"},
        "d": {"type": "javascript", "code": script},
    }})
    c = conversation()
    assert await advance(c, bot, bot.start, now=0.0) is not None
    c.waits[-1].resolve("success", "received", 1.0)
    await advance(c, bot, "c", now=1.0)
    assert c.status == "completed"


# -- {{variables}} in code (SPEC §8.5) ---------------------------------------------------------


async def test_the_pasted_seed_snippet_sets_the_key() -> None:
    bot = load_bot(BOTS / "payment.toml")
    assert 'const conversation_url = "{{Conversation URL}}";' in bot.blocks["extract_key"].config["code"]
    c = conversation()
    c.variables["Conversation URL"] = "http://elsewhere/c/FROM_URL"
    await advance(c, bot, bot.start, now=0.0)
    assert (c.status, c.variables["conversation_key"]) == ("waiting", "FROM_URL")


HOSTILE = ['"; while(true){} "', "'; while(true){} '", "` + (() => { while(true){} })() + `",
           "${(() => { while (true) {} })()}", "back\\slash\\", "line\nbreak\r\n", "end\\", "\u2028\u2029",
           "*/ while(true){} /*", "</script>", "\\u0041", "é ✓ 😀", ""]


@pytest.mark.parametrize("quote", ['"', "'", "`"], ids=["double", "single", "template"])
@pytest.mark.parametrize("value", HOSTILE)
def test_a_value_in_a_string_literal_stays_text(quote: str, value: str) -> None:
    code = f"wn.setConversationVariable('out', {quote}[{{{{v}}}}]{quote})"
    run = run_script(code, {"v": value}, time_limit_s=0.2)
    assert run.error is None, run.error
    assert run.variables is not None and run.variables["out"] == f"[{value}]"


@pytest.mark.parametrize("value", [42, -1, 1.5, True, None, "text", [1, {"a": "b"}], {"k": [None]}])
def test_a_value_in_code_is_a_json_literal(value: Any) -> None:
    run = run_script("const v = {{v}}; wn.setConversationVariable('out', v); wn.setConversationVariable('neg', -{{v}})",
                     {"v": value})
    assert run.error is None, run.error
    assert run.variables is not None and run.variables["out"] == value


def test_unknown_variables_are_empty_text_in_strings_and_undefined_in_code() -> None:
    run = run_script("wn.setConversationVariable('s', 'a{{nope}}b');"
                     " wn.setConversationVariable('t', typeof {{nope}});"
                     " wn.setConversationVariable('n', `{{gone}}`)", {})
    assert run.variables == {"s": "ab", "t": "undefined", "n": ""}


def test_the_scanner_follows_comments_regexes_and_templates() -> None:
    code = (
        "// it's a comment with {{v}} and a quote\n"
        "/* another ' one {{v}} */\n"
        "const r = /'[/\"]{{v}}/;  // a regex holding quotes and a placeholder\n"
        "const half = 10 / 2; const s = 'x{{v}}';\n"
        "const t = `a${ {k: '{{v}}'}.k }b${`{{v}}`}c`;\n"
        "wn.setConversationVariable('out', [r.test(\"'/a.b*\"), r.test(\"'/aXb*\"), half, s, t]);"
    )
    run = run_script(code, {"v": "a.b*"})
    assert run.error is None, run.error
    assert run.variables is not None and run.variables["out"] == [True, False, 5, "xa.b*", "aa.b*ba.b*c"]


def test_placeholders_in_comments_are_left_alone() -> None:
    code = "// {{v}}\nwn.setConversationVariable('ok', 1)"
    assert render_code(code, {"v": "\nwhile (true) {}"}) == code


# -- the server stays responsive ----------------------------------------------------------------


async def test_in_real_time_a_scripts_run_does_not_hold_the_event_loop() -> None:
    gate = Gate(store=MemoryStore(), public_url=PUBLIC_URL)
    await gate.add_bot(parse_bot(js_bot("while (true) {}", bot_id="runaway")))
    gaps: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        nursery.start_soon(ticker)
        started = await gate.start_conversation("runaway")
        done.set()
        nursery.cancel_scope.cancel()
    assert started.status == "errored" and "time limit" in started.error["reason"]
    assert max(gaps) < 0.25  # inline, one gap would be the script's whole run


async def test_a_step_whose_caller_gives_up_still_runs_to_its_end() -> None:
    """A client hanging up mid-step must not leave the conversation `running` for good."""
    script = "const t = Date.now(); while (Date.now() - t < 100) {}"
    gate = Gate(store=MemoryStore(), public_url=PUBLIC_URL)
    await gate.add_bot(parse_bot({"id": "b", "start": "wait", "blocks": {
        "wait": {"type": "webhook", "timeout_s": 30, "success": "one", "failure": "one"},
        "one": {"type": "javascript", "code": script, "next": "two"},
        "two": {"type": "javascript", "code": script, "next": "bye"},
        "bye": {"type": "message", "text": "bye"},
    }}))
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        key = (await gate.start_conversation("b")).key
        with trio.move_on_after(0.05):
            await gate.deliver("b", "wait", {"conversation_key": key})
        nursery.cancel_scope.cancel()
    c = await gate.get_conversation(key)
    assert (c.status, c.transcript[-1]["text"]) == ("completed", "bye")


async def test_in_virtual_time_scripts_run_inline_and_waits_open_exactly(autojump_clock: trio.testing.MockClock) -> None:
    gate = Gate(store=MemoryStore(), public_url=PUBLIC_URL)
    await gate.add_bot(load_bot(BOTS / "payment.toml"))
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await trio.sleep(12.5)
        now = trio.current_time()
        c = await gate.start_conversation("payment")
        nursery.cancel_scope.cancel()
    assert c.status == "waiting" and c.variables["conversation_key"] == c.key
    assert (c.waits[0].opened_at, c.waits[0].deadline) == (now, now + 120)


CHAIN = "const t = Date.now(); while (Date.now() - t < 300) {}"


@pytest.mark.slow
@pytest.mark.parametrize(("bot_id", "code", "looped", "reason"), [
    ("js_loop", RUNAWAYS["loop"], False, "time limit of 0.5 s exceeded"),
    ("js_regex", RUNAWAYS["catastrophic regex"], False, "time limit of 0.5 s exceeded"),
    ("js_tojson", RUNAWAYS["looping toJSON"], False, "time limit of 0.5 s exceeded"),
    ("js_chain", CHAIN, True, "budget"),
], ids=["loop", "regex", "toJSON", "condition-looped chain"])
def test_healthz_answers_within_a_second_while_a_script_runs_away(server: str, bot_id: str, code: str, looped: bool,
                                                                   reason: str) -> None:
    bot = js_bot(code, bot_id=bot_id)
    if looped:
        bot["blocks"]["js"]["next"] = "again"
        bot["blocks"]["again"] = {"type": "condition", "variable": "n", "op": "exists", "true": "js", "false": "js"}
    with httpx.Client(base_url=server, timeout=30) as api:
        assert api.post("/api/bots", json=bot).status_code in (201, 409)
        answer: dict[str, Any] = {}

        def start() -> None:
            answer.update(httpx.post(f"{server}/api/bots/{bot_id}/conversations", json={}, timeout=30).json())

        starter = threading.Thread(target=start)
        latencies: list[float] = []
        starter.start()
        while starter.is_alive() or len(latencies) < 3:
            sent = time.perf_counter()
            assert api.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - sent)
            time.sleep(0.02)
        starter.join()
    assert answer["status"] == "errored" and reason in answer["error"]["reason"]
    assert len(latencies) >= 10  # the script did run for a while, and was polled throughout
    assert max(latencies) < 1.0, latencies
