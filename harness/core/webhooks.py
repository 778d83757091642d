"""Webhook calls without a transport: bytes and headers in, an answer out (SPEC §4, §8).

This is the one place that decides a call to ``POST /webhooks/{bot}/{block}``: size, media type,
parsing, signature, key, then the gate's state checks — in the contract's order. The HTTP server
and the runner's ``core`` driver both call it, so they cannot disagree (the way hypercorn keeps
its protocol core free of sockets)::

    webhooks = WebhookHandler(gate, max_body=1024 * 1024)
    block = await webhooks.block("payment", "wait_payment")        # 404 unknown_webhook
    answer = await webhooks.decide(block, "payment", "wait_payment",
                             media_type="application/json", headers={}, body=b'{"conversation_key": "…"}')

Every refusal is a :class:`~harness.core.errors.Refused` whose code maps to a status through
:data:`~harness.core.errors.STATUS_BY_CODE`; nothing is changed before the last check passes.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from .bots import Block
from .errors import Refused
from .gate import Delivery, Gate
from .jsonsafe import MAX_DEPTH, UnsafeValue, check_json_value, safe_by_its_text
from .signing import HeaderItems, SignatureError, verify_headers

__all__ = [
    "DEFAULT_MAX_BODY",
    "JSON_TYPE",
    "FORM_TYPE",
    "WebhookHandler",
    "parse_json",
    "parse_form",
    "media_type_of",
    "too_large",
]

DEFAULT_MAX_BODY = 1024 * 1024
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Parsing makes no reference cycles, but a body of 300,000 tiny containers would trigger
    hundreds of young and several full collections on the way (≈ 3× the parse's own CPU)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_SMALL_BODY = 16 * 1024  # too few containers to set off a collection: not worth switching the collector off


def parse_json(body: bytes) -> Any:
    """Strict JSON that the gate can keep and answer with; ``Refused("invalid_payload")`` otherwise.

    UTF-8 only, no NaN/Infinity, no overflowing floats (``1e999``), no lone surrogates, at most
    :data:`~harness.core.jsonsafe.MAX_DEPTH` levels deep.
    """
    try:
        # Floats are parsed natively (a Python hook per float would cost ≈ 2 µs each); an
        # overflowing one becomes inf, which check_json_value refuses below.
        text = body.decode("utf-8")
        with _no_cyclic_gc() if len(body) > _SMALL_BODY else contextlib.nullcontext():
            document = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise Refused("invalid_payload", "the body is not UTF-8") from None
    except RecursionError:
        raise Refused("invalid_payload", f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:  # JSONDecodeError, too many digits, NaN…
        raise Refused("invalid_payload", f"the body is not valid JSON: {error}") from None
    if safe_by_its_text(text):
        return document
    try:
        check_json_value(document)
    except UnsafeValue as error:
        raise Refused("invalid_payload", str(error)) from None
    return document


def parse_form(body: bytes) -> dict[str, Any]:
    """A urlencoded form: values are strings, a repeated field becomes a list."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as error:
        raise Refused("invalid_payload", f"the form does not parse: {error}") from None
    form: dict[str, Any] = {}
    for name, value in pairs:
        if name not in form:
            form[name] = value
        elif isinstance(form[name], list):
            form[name].append(value)
        else:
            form[name] = [form[name], value]
    return form


def media_type_of(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return (content_type or "").split(";")[0].strip().lower()


def too_large(limit: int) -> Refused:
    return Refused("payload_too_large", f"the body is larger than {limit} bytes")


class WebhookHandler:
    """Decides webhook calls for one gate. Transport adapters read the body; this does the rest."""

    def __init__(self, gate: Gate, *, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.gate = gate
        self.max_body = max_body

    async def block(self, bot_id: str, block_id: str) -> Block:
        """The webhook block of the URL, or 404 ``unknown_webhook`` — checked before the body is read."""
        return await self.gate.webhook_block(bot_id, block_id)

    async def decide(self, block: Block, bot_id: str, block_id: str, *, media_type: str, headers: HeaderItems,
                     body: bytes) -> dict[str, Any]:
        """Decide a call whose whole body has been read; return the answer (its ``status`` field
        gives the HTTP status, :data:`~harness.core.errors.STATUS_BY_ANSWER`) or raise ``Refused``.

        The checks that need no state come first, then :meth:`Gate.deliver` decides on the
        stored state; in real time the flow after the resolution runs its scripts off the event loop.
        """
        payload = self._payload(block, media_type=media_type, headers=headers, body=body)
        return _answer(await self.gate.deliver(bot_id, block_id, payload), block)

    def _payload(self, block: Block, *, media_type: str, headers: HeaderItems, body: bytes) -> dict[str, Any]:
        """The parsed and verified payload of a call, or ``Refused``: the checks before the state's.

        A signed block verifies the signature *before* it parses the body (its order: 413, 415,
        401, then 400): what an outsider without the secret can make the gate spend is one HMAC
        over at most ``max_body`` bytes, never a parse or a walk of a crafted document (SPEC §17.2).
        """
        if len(body) > self.max_body:
            raise too_large(self.max_body)
        if media_type not in (JSON_TYPE, FORM_TYPE):
            raise Refused("unsupported_media_type",
                          f"send {JSON_TYPE} or {FORM_TYPE}, not {media_type or 'nothing'}")
        if block.secret:
            unix_time = self.gate.clock.signing_time()  # the wall clock now (SPEC §17.8)
            try:
                verify_headers(block.signature_scheme, block.secret, headers, body, unix_time=unix_time,
                               header_name=block.signature_header)
            except SignatureError as error:
                raise Refused("invalid_signature", str(error)) from None
        payload = parse_json(body) if media_type == JSON_TYPE else parse_form(body)
        if not isinstance(payload, dict):
            raise Refused("invalid_payload", "the body must be a JSON object")
        return payload

    async def handle(self, bot_id: str, block_id: str, *, media_type: str, headers: HeaderItems,
                     body: bytes) -> dict[str, Any]:
        """:meth:`block` then :meth:`decide`: for a caller that holds the whole body already."""
        return await self.decide(await self.block(bot_id, block_id), bot_id, block_id, media_type=media_type,
                                 headers=headers, body=body)


def _answer(delivery: Delivery, block: Block) -> dict[str, Any]:
    """The answer to a call that was not refused: 202 held (SPEC §14.1) or 200 accepted."""
    if delivery.held is not None:
        return {"status": "held", "conversation_key": delivery.conversation.key,
                "expires_in_s": block.early_s}
    assert delivery.wait is not None
    return {
        "status": "accepted",
        "conversation_key": delivery.conversation.key,
        "mapped": delivery.mapped,
        "missing": delivery.missing,
        "waited_s": delivery.wait.waited_s,
        "conversation_status": delivery.conversation.status,
    }
