"""Signature schemes (SPEC §4.4, §8.2) against the official sender and verifier libraries.

Headers made by ``stripe`` and ``standardwebhooks`` must open the gate, headers the runner makes
(``signature_headers``) must pass those libraries' verifiers, and every bad signature — wrong,
missing, stale, malformed — is a 401 ``invalid_signature`` that changes nothing, never a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
import standardwebhooks
import stripe
import svix.webhooks
import trio

from harness.core.bots import InvalidBot, parse_bot
from harness.core.gate import Gate
from harness.core.signing import SignatureError, check_secret, signature_headers, verify_headers
from harness.store import open_store

from .conftest import PUBLIC_URL, start
from .events import HARNESS_SECRET, HMAC_SECRET, STANDARD_SECRET, STRIPE_SECRET, gated_bot

Headers = dict[str, str]
Signer = Callable[[bytes, float], Headers]


@pytest.fixture
async def gate(nursery: trio.Nursery) -> Gate:
    """Signatures do not depend on the store: one in-memory gate (overrides conftest's pair)."""
    gate = Gate(public_url=PUBLIC_URL, store=open_store("memory"))
    await nursery.start(gate.run)
    return gate


# One bot per scheme, each waiting at 'wait'.
BOTS = {
    "harness": ("harness", HARNESS_SECRET, None),
    "stripe": ("stripe", STRIPE_SECRET, None),
    "standard": ("standard-webhooks", STANDARD_SECRET, None),
    "hmac": ("hmac-sha256", HMAC_SECRET, None),
    "github": ("hmac-sha256", HMAC_SECRET, "X-Hub-Signature-256"),
}


@pytest.fixture
async def schemes(gate: Gate) -> Gate:
    for bot_id, (scheme, secret, header) in BOTS.items():
        await gate.add_bot(gated_bot(bot_id, signature=scheme, secret=secret, signature_header=header))
    return gate


# -- what the official libraries (and GitHub's documented recipe) send -------------------------


def stripe_sender(secret: str = STRIPE_SECRET, name: str = "Stripe-Signature") -> Signer:
    def sign(body: bytes, now: float) -> Headers:
        return {name: stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=int(now))}
    return sign


def standard_sender(secret: str = STANDARD_SECRET, message_id: str = "msg_2Kx9s8dF7gH6jK5") -> Signer:
    def sign(body: bytes, now: float) -> Headers:
        moment = datetime.fromtimestamp(int(now), tz=UTC)
        return {"webhook-id": message_id, "webhook-timestamp": str(int(now)),
                "webhook-signature": standardwebhooks.Webhook(secret).sign(message_id, moment, body.decode())}
    return sign


def svix_sender(secret: str = STANDARD_SECRET, message_id: str = "msg_2Kx9s8dF7gH6jK5") -> Signer:
    """What a Svix-powered sender (Resend, Clerk…) sends: the same signature under svix-* header names."""
    def sign(body: bytes, now: float) -> Headers:
        moment = datetime.fromtimestamp(int(now), tz=UTC)
        return {"svix-id": message_id, "svix-timestamp": str(int(now)),
                "svix-signature": svix.webhooks.Webhook(secret).sign(message_id, moment, body.decode())}
    return sign


def github_sender(name: str, prefix: str = "sha256=") -> Signer:
    def sign(body: bytes, now: float) -> Headers:
        return {name: prefix + hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()}
    return sign


def github_verifies(body: bytes, header: str | None) -> bool:
    """GitHub's documented check: compare ``sha256=<hex>`` of the raw body in constant time."""
    expected = "sha256=" + hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


def now_unix(gate: Gate) -> float:
    return gate.clock.unix(trio.current_time())


def payload(key: str, amount: float = 42) -> bytes:
    return json.dumps({"conversation_key": key, "data": {"amount": amount}}).encode()


async def post(client: httpx.AsyncClient, bot: str, body: bytes, headers: Headers) -> httpx.Response:
    raw = {name: value.encode("latin-1") for name, value in headers.items()}  # as a server may receive them
    return await client.post(f"/webhooks/{bot}/wait", content=body, headers={"Content-Type": b"application/json", **raw})


async def status_of(client: httpx.AsyncClient, key: str) -> str:
    return (await client.get(f"/api/conversations/{key}")).json()["status"]


OFFICIAL_SENDERS = {
    "stripe library": ("stripe", stripe_sender()),
    "stripe library, harness header": ("harness", stripe_sender(HARNESS_SECRET, "X-Webhook-Signature")),
    "standardwebhooks library": ("standard", standard_sender()),
    "svix library, svix-* headers": ("standard", svix_sender()),
    "hmac sha256=<hex>": ("hmac", github_sender("X-Signature")),
    "hmac bare <hex>": ("hmac", github_sender("X-Signature", prefix="")),
    "github X-Hub-Signature-256": ("github", github_sender("X-Hub-Signature-256")),
}


@pytest.mark.parametrize("sender", OFFICIAL_SENDERS, ids=str)
async def test_official_senders_open_the_gate(client, schemes, sender) -> None:
    bot, sign = OFFICIAL_SENDERS[sender]
    key = (await start(client, bot=bot))["conversation_key"]
    body = payload(key, amount=42)
    headers = sign(body, now_unix(schemes))
    scheme, secret, header_name = BOTS[bot]
    verify_headers(scheme, secret, headers, body, unix_time=now_unix(schemes),
                   header_name=header_name or "X-Signature")  # the function alone accepts them too
    response = await post(client, bot, body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["mapped"] == {"amount": 42}
    assert await status_of(client, key) == "completed"


async def test_the_signature_covers_the_raw_bytes_not_the_parsed_json(client, schemes) -> None:
    key = (await start(client, bot="stripe"))["conversation_key"]
    pretty = json.dumps({"data": {"amount": 7}, "conversation_key": key}, indent=2).encode()
    headers = stripe_sender()(pretty, now_unix(schemes))
    compact = json.dumps(json.loads(pretty), separators=(",", ":")).encode()  # same JSON, other bytes
    assert (await post(client, "stripe", compact, headers)).status_code == 401
    assert (await post(client, "stripe", pretty, headers)).status_code == 200


def test_the_standard_webhooks_test_vector() -> None:
    """The example from the Standard Webhooks specification, verified by the gate's code."""
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    body = b'{"test": 2432232314}'
    verify_headers("standard-webhooks", STANDARD_SECRET, headers, body, unix_time=1614265330)
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify_headers("standard-webhooks", STANDARD_SECRET, headers, b'{"test": 2432232315}', unix_time=1614265330)


def test_a_secret_without_base64_padding_works_as_in_the_official_library() -> None:
    padded = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    assert check_secret("standard-webhooks", unpadded) is None
    body, now = b'{"conversation_key": "k"}', 1_764_000_000
    headers = standard_sender(unpadded)(body, now)
    verify_headers("standard-webhooks", unpadded, headers, body, unix_time=now)
    verify_headers("standard-webhooks", padded, headers, body, unix_time=now)  # same key


# -- secret rotation: several signatures in one header -----------------------------------------


def stripe_rotated(body: bytes, now: float) -> Headers:
    old = stripe_sender("whsec_old_secret_being_rolled")(body, now)["Stripe-Signature"]
    new = stripe_sender()(body, now)["Stripe-Signature"]
    # What Stripe sends while a secret rolls: both v1 entries (plus a v0 entry, ignored).
    return {"Stripe-Signature": f"{old},{new.split(',')[1]},v0={'0' * 64}"}


def standard_rotated(body: bytes, now: float) -> Headers:
    old = standard_sender("whsec_" + base64.b64encode(b"the previous secret key!").decode())(body, now)
    new = standard_sender()(body, now)
    asymmetric = "v1a," + base64.b64encode(bytes(64)).decode()  # another version: skipped
    return {**new, "webhook-signature": f"{asymmetric} {old['webhook-signature']} {new['webhook-signature']}"}


def standard_rotated_none_match(body: bytes, now: float) -> Headers:
    headers = standard_sender()(body + b" ", now)
    return {**headers, "webhook-signature": headers["webhook-signature"] + " v1," + base64.b64encode(bytes(32)).decode()}


@pytest.mark.parametrize(("bot", "sign", "status"), [
    ("stripe", stripe_rotated, 200),
    ("standard", standard_rotated, 200),
    ("standard", standard_rotated_none_match, 401),
], ids=["stripe two v1", "standard webhooks several v1", "standard webhooks none matches"])
async def test_rotation_one_matching_signature_suffices(client, schemes, bot, sign, status) -> None:
    key = (await start(client, bot=bot))["conversation_key"]
    body = payload(key)
    response = await post(client, bot, body, sign(body, now_unix(schemes)))
    assert response.status_code == status, response.text


# -- what the runner sends, checked by the official verifiers ----------------------------------


def checkout_body() -> bytes:
    return json.dumps({"id": "evt_1", "object": "event", "type": "checkout.session.completed",
                       "data": {"object": {"metadata": {"conversation_key": "k"}}}}).encode()


def test_runner_stripe_headers_pass_the_stripe_library() -> None:
    body = checkout_body()
    headers = signature_headers("stripe", STRIPE_SECRET, body, unix_time=time.time(), mode="valid")
    event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], STRIPE_SECRET)
    assert event.type == "checkout.session.completed"
    assert stripe.WebhookSignature.verify_header(body, headers["Stripe-Signature"], STRIPE_SECRET, tolerance=300)


def test_runner_harness_headers_pass_the_stripe_library_too() -> None:
    """The harness scheme is Stripe's algorithm under another header name."""
    body = checkout_body()
    headers = signature_headers("harness", HARNESS_SECRET, body, unix_time=time.time(), mode="valid")
    assert stripe.WebhookSignature.verify_header(body, headers["X-Webhook-Signature"], HARNESS_SECRET, tolerance=300)


def test_runner_standard_headers_pass_the_standardwebhooks_library() -> None:
    body = checkout_body()
    headers = signature_headers("standard-webhooks", STANDARD_SECRET, body, unix_time=time.time(), mode="valid")
    assert standardwebhooks.Webhook(STANDARD_SECRET).verify(body, headers) == json.loads(body)


def test_runner_standard_headers_pass_the_svix_library() -> None:
    body = checkout_body()
    headers = signature_headers("standard-webhooks", STANDARD_SECRET, body, unix_time=time.time(), mode="valid")
    svix.webhooks.Webhook(STANDARD_SECRET).verify(body, headers)  # raises if not
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(STANDARD_SECRET).verify(body + b" ", headers)


def test_runner_hmac_headers_pass_githubs_recipe() -> None:
    body = checkout_body()
    headers = signature_headers("hmac-sha256", HMAC_SECRET, body, unix_time=time.time(), mode="valid",
                                header_name="X-Hub-Signature-256")
    assert github_verifies(body, headers["X-Hub-Signature-256"])


def library_refuses(bot: str, body: bytes, headers: Headers) -> bool:
    """True when the scheme's official verifier refuses the headers."""
    try:
        if bot == "stripe":
            stripe.WebhookSignature.verify_header(body, headers.get("Stripe-Signature"), STRIPE_SECRET, tolerance=300)
        elif bot == "harness":
            stripe.WebhookSignature.verify_header(body, headers.get("X-Webhook-Signature"), HARNESS_SECRET,
                                                  tolerance=300)
        elif bot == "standard":
            standardwebhooks.Webhook(STANDARD_SECRET).verify(body, headers)
        else:
            return not github_verifies(body, headers.get(BOTS[bot][2] or "X-Signature"))
    except (stripe.SignatureVerificationError, standardwebhooks.WebhookVerificationError):
        return True
    return False


@pytest.mark.parametrize("mode", ["wrong", "missing", "stale"])
@pytest.mark.parametrize("bot", ["harness", "stripe", "standard", "hmac", "github"])
async def test_bad_modes_are_refused_by_the_libraries_and_the_gate(client, schemes, bot, mode) -> None:
    scheme, secret, header_name = BOTS[bot]
    header_name = header_name or "X-Signature"
    if mode == "stale" and scheme == "hmac-sha256":
        with pytest.raises(ValueError, match="no timestamp"):
            signature_headers(scheme, secret, b"{}", unix_time=time.time(), mode=mode, header_name=header_name)
        return
    key = (await start(client, bot=bot))["conversation_key"]
    body = payload(key)
    now = now_unix(schemes)  # no virtual time here: the gate's clock is the wall clock the libraries read
    assert abs(now - time.time()) < 5
    headers = signature_headers(scheme, secret, body, unix_time=now, mode=mode, header_name=header_name)
    valid = signature_headers(scheme, secret, body, unix_time=now, mode="valid", header_name=header_name)
    assert not library_refuses(bot, body, valid)  # the same library accepts the valid twin
    assert library_refuses(bot, body, headers)
    with pytest.raises(SignatureError):
        verify_headers(scheme, secret, headers, body, unix_time=now, header_name=header_name)
    response = await post(client, bot, body, headers)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_signature")
    assert await status_of(client, key) == "waiting"
    assert (await post(client, bot, body, valid)).status_code == 200


@pytest.mark.parametrize("scheme", ["harness", "stripe", "standard-webhooks"])
@pytest.mark.parametrize(("skew", "accepted"), [(-301, False), (-299, True), (299, True), (301, False)])
def test_tolerance_is_300_seconds_either_way(scheme, skew, accepted) -> None:
    secret = {"harness": HARNESS_SECRET, "stripe": STRIPE_SECRET, "standard-webhooks": STANDARD_SECRET}[scheme]
    body, now = b'{"conversation_key": "k"}', 1_764_000_000
    headers = signature_headers(scheme, secret, body, unix_time=now + skew)
    if accepted:
        verify_headers(scheme, secret, headers, body, unix_time=now)
    else:
        with pytest.raises(SignatureError, match="stale"):
            verify_headers(scheme, secret, headers, body, unix_time=now)


def test_hmac_has_no_tolerance() -> None:
    body = b'{"conversation_key": "k"}'
    headers = signature_headers("hmac-sha256", HMAC_SECRET, body, unix_time=0)
    verify_headers("hmac-sha256", HMAC_SECRET, headers, body, unix_time=4_000_000_000)


# -- malformed headers: 401, never a 500 --------------------------------------------------------

HEX = "ab" * 32
B64 = base64.b64encode(bytes(32)).decode()


def malformed(bot: str, now: int) -> list[Headers]:
    t = str(now)
    if bot in ("stripe", "harness"):
        name = "Stripe-Signature" if bot == "stripe" else "X-Webhook-Signature"
        values = ["", " ", "garbage", f"t={'9' * 400},v1={HEX}", f"t={t},v1={'zz' * 32}", f"t={t},v1={HEX[:-2]}",
                  f"t={t}", f"v1={HEX}", f"t=,v1={HEX}", f"t={t},t={t},v1={HEX}", f"t=-{t},v1={HEX}",
                  f"t={t}.5,v1={HEX}", f"t={t},v1=", f"t={t},,v1={HEX}", f"t={t};v1={HEX}", "t=\xb2\xb3,v1=" + HEX,
                  f"t={t},v1={HEX}{HEX}", f"t=1e9,v1={HEX}"]
        return [{name: value} for value in values]
    if bot == "standard":
        good = {"webhook-id": "msg_1", "webhook-timestamp": t, "webhook-signature": f"v1,{B64}"}
        variants: list[Headers] = [
            {**good, "webhook-timestamp": "9" * 400},
            {**good, "webhook-timestamp": f"{t}.0"},
            {**good, "webhook-timestamp": f"-{t}"},
            {**good, "webhook-timestamp": "now"},
            {**good, "webhook-signature": "v1," + B64[:-4]},           # wrong base64 length
            {**good, "webhook-signature": "v1," + B64 + "AAAA"},
            {**good, "webhook-signature": "v1," + "!" * 43 + "="},     # not base64
            {**good, "webhook-signature": "v1" + B64},                 # no comma
            {**good, "webhook-signature": f"v1,{B64}  v1,{B64}"},       # double space
            {**good, "webhook-signature": f"v1a,{B64}"},               # no v1 at all
            {**good, "webhook-signature": ""},
            {key: value for key, value in good.items() if key != "webhook-id"},
            {key: value for key, value in good.items() if key != "webhook-timestamp"},
            {**good, "webhook-id": ""},
        ]
        return variants
    name = BOTS[bot][2] or "X-Signature"
    return [{name: value} for value in ("", "sha256=", "sha256=" + "zz" * 32, "sha256=" + HEX[:-1], HEX + "00",
                                        "sha1=" + "ab" * 20, "sha512=" + "ab" * 64, f"sha256={HEX},sha256={HEX}")]


@pytest.mark.parametrize("bot", ["harness", "stripe", "standard", "hmac", "github"])
async def test_malformed_signatures_are_401_never_500(client, schemes, bot) -> None:
    key = (await start(client, bot=bot))["conversation_key"]
    body = payload(key)
    scheme, secret, header_name = BOTS[bot]
    now = int(now_unix(schemes))
    for headers in malformed(bot, now):
        with pytest.raises(SignatureError):
            verify_headers(scheme, secret, headers, body, unix_time=now, header_name=header_name or "X-Signature")
        response = await post(client, bot, body, headers)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_signature"), headers
        assert response.json()["detail"]
    assert await status_of(client, key) == "waiting"


# -- bot validation -----------------------------------------------------------------------------


def broken_bot() -> dict:
    def wait(**fields) -> dict:
        return {"type": "webhook", "timeout_s": 30, "success": "done", "failure": "done", **fields}

    return {"id": "broken", "start": "a", "blocks": {
        "a": wait(signature="rsa-sha512", secret="x"),
        "b": wait(signature="standard-webhooks", secret="whsec_not base64!"),
        "c": wait(signature="standard-webhooks", secret="whsec_"),
        "d": wait(key_path="data..conversation_key"),
        "e": wait(key_path=""),
        "f": wait(key_path=12),
        "g": wait(signature="hmac-sha256", secret="x", signature_header="X Bad: header"),
        "h": wait(signature=5, secret="x"),
        "ok": wait(signature="standard-webhooks", secret=STANDARD_SECRET, key_path="data.object.metadata.key"),
        "done": {"type": "end"},
    }}


EXPECTED_PROBLEMS = {("a", "signature"), ("b", "secret"), ("c", "secret"), ("d", "key_path"), ("e", "key_path"),
                     ("f", "key_path"), ("g", "signature_header"), ("h", "signature")}


def test_bot_validation_lists_every_signature_and_key_path_problem() -> None:
    with pytest.raises(InvalidBot) as caught:
        parse_bot(broken_bot())
    assert {(p.block, p.field) for p in caught.value.problems} == EXPECTED_PROBLEMS
    reasons = {(p.block, p.field): p.reason for p in caught.value.problems}
    assert "unknown scheme 'rsa-sha512'" in reasons[("a", "signature")]
    assert "whsec_" in reasons[("b", "secret")]
    assert "does not parse" in reasons[("d", "key_path")]


async def test_the_api_refuses_that_bot_with_every_problem(client) -> None:
    response = await client.post("/api/bots", json=broken_bot())
    assert (response.status_code, response.json()["error"]) == (422, "invalid_bot")
    assert {(p["block"], p["field"]) for p in response.json()["problems"]} == EXPECTED_PROBLEMS
    assert (await client.get("/api/bots/broken")).status_code == 404


async def test_the_api_never_shows_the_secrets(client, schemes) -> None:
    text = (await client.get("/api/bots")).text
    for _, secret, _ in BOTS.values():
        assert secret not in text
