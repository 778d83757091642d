"""What real payment processors send, for the signing and processor tests.

The event shapes follow the processors' documentation: Stripe's ``checkout.session.completed``
event (an ``event`` wrapping a ``checkout.session`` object, your data in ``metadata``) and a
PayPal IPN form (your data in ``custom``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from harness.core.bots import Bot, parse_bot

STRIPE_SECRET = "whsec_1b2f6a0c9e8d7c6b5a4f3e2d1c0b9a8f"  # as `stripe listen` prints one: the whole string is the key
# The Standard Webhooks specification's own test secret: base64 of 24 bytes after whsec_.
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HMAC_SECRET = "It's a Secret to Everybody"  # GitHub's documentation example
HARNESS_SECRET = "s3cret-harness"
STRIPE_KEY_PATH = "data.object.metadata.conversation_key"

CHECKOUT_MAPPINGS = {
    "amount_total": "data.object.amount_total",
    "currency": "data.object.currency",
    "payment_intent": "data.object.payment_intent",
    "email": "data.object.customer_details.email",
    "payment_status": "data.object.payment_status",
}


def gated_bot(bot_id: str, *, signature: str | None = None, secret: str = "", timeout_s: int = 30,
              key_path: str | None = None, signature_header: str | None = None,
              mappings: dict[str, str] | None = None) -> Bot:
    """A bot that waits at 'wait' (with the given scheme, secret and key path), then says paid or late."""
    wait: dict[str, Any] = {"type": "webhook", "timeout_s": timeout_s, "secret": secret,
                            "mappings": mappings or {"amount": "data.amount"}, "success": "paid", "failure": "late"}
    if signature is not None:
        wait["signature"] = signature
    if key_path is not None:
        wait["key_path"] = key_path
    if signature_header is not None:
        wait["signature_header"] = signature_header
    return parse_bot({"id": bot_id, "start": "wait", "blocks": {
        "wait": wait,
        "paid": {"type": "message", "text": "paid {{amount_total}}{{amount}}"},
        "late": {"type": "message", "text": "too late"},
    }})


def checkout_session_completed(metadata: dict[str, Any], *, created: int = 1_764_000_000) -> dict[str, Any]:
    """A ``checkout.session.completed`` event as Stripe sends it (abridged to the usual fields)."""
    return {
        "id": "evt_1QJ7dLFX0aXhx3YQm0n1aBcD",
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": {
            "object": {
                "id": "cs_test_a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuVwXyZ",
                "object": "checkout.session",
                "amount_subtotal": 4200,
                "amount_total": 4200,
                "client_reference_id": None,
                "created": created - 35,
                "currency": "eur",
                "customer": None,
                "customer_details": {
                    "address": {"city": "Berlin", "country": "DE", "line1": "Hauptstr. 1", "line2": None,
                                "postal_code": "10115", "state": None},
                    "email": "jenny.rosen@example.com",
                    "name": "Jenny Rosen",
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                },
                "expires_at": created + 86_365,
                "livemode": False,
                "metadata": metadata,
                "mode": "payment",
                "payment_intent": "pi_3QJ7dKFX0aXhx3YQ1AbCdEfG",
                "payment_method_types": ["card"],
                "payment_status": "paid",
                "status": "complete",
                "success_url": "https://shop.example/thanks",
                "url": None,
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "checkout.session.completed",
    }


def stripe_body(key: Any = None, **metadata: Any) -> bytes:
    """The raw body of a checkout event whose metadata carries ``key`` (left out when None)."""
    if key is not None:
        metadata["conversation_key"] = key
    return json.dumps(checkout_session_completed(metadata)).encode()


def ipn_form(custom: str | list[str] | None, **extra: Any) -> bytes:
    """A PayPal IPN-style form: the merchant's own value travels in ``custom``; lists repeat a field."""
    fields: dict[str, Any] = {"txn_type": "web_accept", "payment_status": "Completed", "mc_gross": "19.99",
                              "mc_currency": "EUR", "txn_id": "61E67681CH3238416", "payer_email": "buyer@example.com"}
    if custom is not None:
        fields["custom"] = custom
    fields.update(extra)
    return urlencode(fields, doseq=True).encode()
