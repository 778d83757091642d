"""Hypothesis fuzzing of the HTTP surface and the bot loader.

Each example is a plan — a list of hostile requests — replayed against a fresh gate (with one
waiting conversation per bot) in its own trio run under a MockClock. Invariants: never a 5xx,
errors are JSON with a code, and a refused call changes no state.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core.bots import InvalidBot, parse_bot
from harness.core.gate import Gate
from harness.core.signing import HEADER
from harness.store import MemoryStore
from harness.web.server import create_app

from .conftest import BOTS, webhook_bot

MAX_BODY = 16 * 1024
REQUESTS_SENT = {"webhook": 0, "api": 0}

json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
key_values = st.one_of(st.sampled_from(["", " ", "AAAA", "x" * 300, "../../etc", "\u0000", "REAL"]), json_values)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 5))
    if choice == 0:  # an object, maybe with a (wrong or right) key
        document = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
        if draw(st.booleans()):
            document["conversation_key"] = draw(key_values)
        return json.dumps(document).encode()
    if choice == 1:  # deep nesting
        depth = draw(st.integers(100, 5000))
        return b'{"conversation_key": ' + b"[" * depth + b"]" * depth + b"}"
    if choice == 2:  # huge or odd numbers
        return draw(st.sampled_from([b'{"a": 1e999}', b'{"a": -1e400}', b'{"a": NaN}', b'{"a": Infinity}',
                                     b'{"a": ' + b"9" * 5000 + b"}", b'{"conversation_key": 1e308}']))
    if choice == 3:  # invalid UTF-8 and raw bytes
        return draw(st.binary(max_size=200)) + b"\xff\xfe\xc3\x28"
    if choice == 4:  # not an object
        return json.dumps(draw(json_values)).encode()
    return draw(st.binary(max_size=MAX_BODY + 100))


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=6))
    body = "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    return body + draw(st.sampled_from([b"", b"&conversation_key=", b"&%zz=%", b"\xff"]))


content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/x-www-form-urlencoded",
    "text/plain", "multipart/form-data; boundary=x", "application/xml", "", "application/json, text/plain", "*/*",
])
# CR, LF and NUL cannot travel in a header on the wire (h11 refuses them before the app runs).
header_text = st.text(alphabet=st.characters(blacklist_characters="\r\n\x00"), max_size=100)
signatures = st.one_of(
    st.none(), header_text, st.just("t=1,v1=" + "0" * 64), st.just("t=,v1="), st.just("v1=" + "g" * 64),
    st.builds(lambda t: f"t={t},v1={'a' * 64},v1={'b' * 64}", st.integers(-(10**20), 10**20)),
)


@st.composite
def webhook_requests(draw: st.DrawFn) -> dict[str, Any]:
    bot, block = draw(st.sampled_from([("pay", "wait"), ("signed", "wait"), ("pay", "ok"), ("ghost", "wait"),
                                       ("pay", "%00"), ("p" * 300, "w")]))
    content_type = draw(content_types)
    body = draw(st.one_of(json_bodies(), form_bodies()))
    headers = {"Content-Type": content_type} if content_type else {}
    signature = draw(signatures)
    if signature is not None:
        headers[HEADER] = signature
    for index in range(draw(st.integers(0, 3))):
        headers[f"X-Junk-{index}"] = draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=2000))
    return {"method": draw(st.sampled_from(["POST", "POST", "POST", "PUT", "GET"])),
            "url": f"/webhooks/{bot}/{block}", "content": body, "headers": headers}


async def snapshot(gate: Gate, keys: list[str]) -> Any:
    return [(await gate.get_conversation(key)).as_dict(gate.clock) for key in keys], await gate.open_wait_count()


def replay(plan: list[dict[str, Any]], *, real_key_probability: bool) -> None:
    async def main() -> None:
        gate = Gate(store=MemoryStore(), public_url="http://fuzz")
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await gate.add_bot(webhook_bot(timeout_s=300))
            await gate.add_bot(webhook_bot(timeout_s=300, secret="s3cret", bot_id="signed"))
            keys = [(await gate.start_conversation("pay")).key, (await gate.start_conversation("signed")).key]
            transport = httpx.ASGITransport(app=create_app(gate, max_body=MAX_BODY))
            async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
                for request in plan:
                    content = request["content"]
                    if real_key_probability:
                        content = content.replace(b'"REAL"', json.dumps(keys[0]).encode())
                    before = await snapshot(gate, keys)
                    # Raw bytes, so non-ASCII header values reach the server as they are.
                    headers = {name: value.encode("utf-8", "surrogatepass") for name, value in request["headers"].items()}
                    response = await client.request(request["method"], request["url"], content=content, headers=headers)
                    REQUESTS_SENT["webhook" if request["url"].startswith("/webhooks") else "api"] += 1
                    assert response.status_code < 500, (request, response.text)
                    if response.status_code >= 300:
                        body = response.json()
                        assert isinstance(body["error"], str) and body["error"], body
                        assert await snapshot(gate, keys) == before, (request, response.text)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=st.lists(webhook_requests(), min_size=8, max_size=24), use_real_key=st.booleans())
def fuzz_webhooks(plan: list[dict[str, Any]], use_real_key: bool) -> None:
    replay(plan, real_key_probability=use_real_key)


def test_at_least_2000_hostile_webhook_calls_never_5xx_never_change_state() -> None:
    REQUESTS_SENT["webhook"] = 0
    fuzz_webhooks()
    print(f"hostile webhook calls sent: {REQUESTS_SENT['webhook']}")
    assert REQUESTS_SENT["webhook"] >= 2000, REQUESTS_SENT


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(st.fixed_dictionaries({
    "method": st.sampled_from(["POST", "GET", "DELETE"]),
    "url": st.sampled_from(["/api/bots", "/api/bots/pay", "/api/bots/pay/conversations", "/api/bots/ghost/conversations",
                            "/api/conversations/x", "/c/x", "/metrics", "/healthz"]),
    "content": st.one_of(json_bodies(), st.builds(lambda v: json.dumps({"variables": v}).encode(), json_values)),
    "headers": st.just({"Content-Type": "application/json"}),
}), min_size=3, max_size=15))
def fuzz_api(plan: list[dict[str, Any]]) -> None:
    replay(plan, real_key_probability=False)


def test_api_endpoints_never_5xx() -> None:
    fuzz_api()


# -- the bot loader ---------------------------------------------------------------------------

block_ids = st.sampled_from(["a", "b", "c", "", "bad id", "x" * 200])
field_values = st.one_of(json_values, block_ids, st.integers(-5, 400))


@st.composite
def bot_documents(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    blocks = {}
    for block_id in draw(st.lists(block_ids, max_size=4)):
        block = {"type": draw(st.sampled_from(["message", "set_variable", "javascript", "webhook", "condition", "end", "nope", 3]))}
        for name in draw(st.lists(st.sampled_from(["text", "next", "name", "value", "code", "timeout_s", "mappings",
                                                   "secret", "success", "failure", "variable", "op", "true", "false", "junk"]),
                                  max_size=6)):
            block[name] = draw(field_values) if name != "mappings" else draw(
                st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=12), max_size=60), json_values))
        blocks[block_id] = block
    document = {"id": draw(st.one_of(block_ids, json_values)), "start": draw(st.one_of(block_ids, json_values)),
                "blocks": blocks if draw(st.integers(0, 9)) else draw(json_values)}
    if draw(st.booleans()):
        document["name"] = draw(json_values)
    return document


@settings(max_examples=1500, deadline=None)
@given(document=bot_documents())
def test_generated_bots_load_or_fail_with_problems(document: Any) -> None:
    try:
        bot = parse_bot(document)
    except InvalidBot as error:
        assert error.problems and all(problem.reason for problem in error.problems)
        return
    assert bot.blocks[bot.start]


def test_loader_accepts_the_shipped_bots_through_the_same_path() -> None:
    import tomllib

    for path in BOTS.glob("*.toml"):
        assert parse_bot(tomllib.loads(path.read_text())).id


# JSON texts near every edge check_json_value guards: escapes (lone surrogates), deep nesting,
# exponents and long digit runs (floats that overflow to inf).
_edgy_pieces = st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\u00e9"', '"\\\\u"', "1e999", "-1E400", "1e5", "0.5e-3",
                                "1" * 310 + ".0", "1" * 310, "[", "]", "{", "}", '"k":', ",", "null", '"1e9"'])


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values.map(json.dumps), st.lists(_edgy_pieces, max_size=80).map("".join),
                 st.integers(1, 80).map(lambda depth: "[" * depth + "]" * depth)))
def test_parse_json_refuses_exactly_what_the_full_check_refuses(text: str) -> None:
    """The fast path (no walk when the text shows nothing to refuse) decides like the walk."""
    from harness.core.errors import Refused
    from harness.core.jsonsafe import UnsafeValue, check_json_value
    from harness.core.webhooks import parse_json

    try:
        document = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
        check_json_value(document)
        expected: Any = document
    except (ValueError, RecursionError, UnsafeValue):
        expected = Refused
    try:
        got: Any = parse_json(text.encode("utf-8", "surrogatepass"))
    except Refused:
        got = Refused
    assert got == expected or (expected is not Refused and json.dumps(got) == json.dumps(expected))


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values.map(json.dumps), st.lists(_edgy_pieces | st.sampled_from(["NaN", "-Infinity", '"é"']),
                                                       max_size=80).map("".join)))
def test_safe_by_its_text_never_passes_what_the_walk_refuses(text: str) -> None:
    from harness.core.jsonsafe import check_json_value, safe_by_its_text

    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return
    if safe_by_its_text(text):
        check_json_value(document)  # raises UnsafeValue if the fast path let through what the walk refuses
