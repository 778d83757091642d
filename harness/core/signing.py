"""Webhook signatures: the four schemes of SPEC §4.4 and §8.2, verified from the raw body.

A webhook block with a non-empty ``secret`` picks its scheme with ``signature``:

=====================  ===========================================  ==========================  =========
scheme                 header(s)                                    HMAC-SHA256 over            tolerance
=====================  ===========================================  ==========================  =========
``harness``            ``X-Webhook-Signature: t=<unix>,v1=<hex>…``  ``<t>.<raw body>``          300 s
``stripe``             ``Stripe-Signature: t=<unix>,v1=<hex>…``     ``<t>.<raw body>``          300 s
``standard-webhooks``  ``webhook-id``, ``webhook-timestamp``,       ``<id>.<ts>.<raw body>``    300 s
                       ``webhook-signature: v1,<base64> …``         (key: base64 after whsec_)
``hmac-sha256``        ``signature_header`` (``X-Signature``):      ``<raw body>``              none
                       ``sha256=<hex>`` or ``<hex>``
=====================  ===========================================  ==========================  =========

Several signatures in one header (secret rotation) are all compared, in constant time; one match
suffices. Senders built on Svix (Resend, Clerk…) send the Standard Webhooks headers under their
branded names ``svix-id``, ``svix-timestamp`` and ``svix-signature``; those are read too, as the
``svix`` library does. :func:`verify_headers` checks a request; :func:`signature_headers` makes the headers a
third party sends — well signed, or deliberately ``missing``, ``wrong`` or ``stale`` (the
scenario runner's modes).

The ``harness`` scheme also has the one-header helpers :func:`sign` and :func:`verify`:

>>> header = sign(b'{"conversation_key": "k"}', "s3cret", unix_time=1_700_000_000)
>>> verify(b'{"conversation_key": "k"}', "s3cret", header, unix_time=1_700_000_100)
>>> verify(b'{}', "s3cret", header, unix_time=1_700_000_100)
Traceback (most recent call last):
...
harness.core.signing.SignatureError: no v1 signature matches the body
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Protocol

__all__ = [
    "HEADER",
    "SCHEMES",
    "DEFAULT_SCHEME",
    "DEFAULT_HMAC_HEADER",
    "TOLERANCE_S",
    "SignatureError",
    "check_secret",
    "sign",
    "verify",
    "signature_headers",
    "verify_headers",
]

HEADER = "X-Webhook-Signature"
STRIPE_HEADER = "Stripe-Signature"
DEFAULT_HMAC_HEADER = "X-Signature"
TOLERANCE_S = 300
DEFAULT_SCHEME = "harness"
SCHEMES = ("harness", "stripe", "standard-webhooks", "hmac-sha256")
SIGNATURE_MODES = ("valid", "missing", "wrong", "stale")
STALE_BY_S = 600  # how old a deliberately stale signature is: twice the tolerance

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_BASE64_SHA256 = re.compile(r"[A-Za-z0-9+/]{43}=")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")  # bounded: a 400-digit timestamp is malformed, not a crash


class SignatureError(ValueError):
    """The signature is missing, malformed, wrong or stale; the message says which."""


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _any_matches(candidates: list[str], expected: str) -> bool:
    matched = False
    for candidate in candidates:  # compare every entry so timing does not reveal which matched
        matched |= hmac.compare_digest(candidate.encode(), expected.encode())
    return matched


def _check_fresh(timestamp: str, unix_time: float, header: str) -> None:
    if not _UNIX_SECONDS.fullmatch(timestamp):
        raise SignatureError(f"malformed {header}: the timestamp must be whole unix seconds")
    if abs(unix_time - int(timestamp)) > TOLERANCE_S:
        raise SignatureError(f"stale signature: the timestamp is more than {TOLERANCE_S} s from the server's clock")


# -- t=…,v1=… (harness and Stripe) -------------------------------------------------------------


def _sign_tv1(header: str, secrets: tuple[str, ...], body: bytes, unix_time: float) -> str:
    timestamp = str(int(unix_time))
    message = timestamp.encode() + b"." + body
    return ",".join([f"t={timestamp}"] + [f"v1={_hmac_hex(s.encode(), message)}" for s in secrets])


def _verify_tv1(header: str, secret: str, value: str | None, body: bytes, unix_time: float) -> None:
    if not value:
        raise SignatureError(f"the {header} header is missing")
    timestamp: str | None = None
    candidates: list[str] = []
    for part in value.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {header}: expected t=<seconds>,v1=<hex>")
        if name == "t":
            if timestamp is not None:
                raise SignatureError(f"malformed {header}: more than one t=")
            timestamp = item
        elif name == "v1":
            if not _HEX_SHA256.fullmatch(item):
                raise SignatureError(f"malformed {header}: v1 must be 64 hex digits")
            candidates.append(item.lower())
        # Other schemes (v0, v2…) are ignored, so senders can add them without breaking us.
    if timestamp is None or not candidates:
        raise SignatureError(f"malformed {header}: needs t= and at least one v1=")
    _check_fresh(timestamp, unix_time, header)
    expected = _hmac_hex(secret.encode(), timestamp.encode() + b"." + body)
    if not _any_matches(candidates, expected):
        raise SignatureError("no v1 signature matches the body")


# -- Standard Webhooks ---------------------------------------------------------------------------


def _standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64 after ``whsec_``.

    Padding may be left off, as the official ``standardwebhooks`` library accepts it.
    """
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the block's secret is not whsec_<base64>") from None


def _standard_signature(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    message = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def _standard_header(headers: Mapping[str, str], name: str) -> str | None:
    """``webhook-<name>``, or Svix's branded ``svix-<name>`` (Resend, Clerk…), as the svix library reads them."""
    return headers.get(f"webhook-{name}") or headers.get(f"svix-{name}")


def _verify_standard(secret: str, headers: Mapping[str, str], body: bytes, unix_time: float) -> None:
    message_id = _standard_header(headers, "id")
    timestamp = _standard_header(headers, "timestamp")
    signatures = _standard_header(headers, "signature")
    if not message_id or not timestamp or not signatures:
        raise SignatureError("the webhook-id, webhook-timestamp and webhook-signature headers are all required")
    _check_fresh(timestamp, unix_time, "webhook-timestamp")
    candidates = []
    for entry in signatures.split(" "):
        version, sep, signature = entry.partition(",")
        if not sep:
            raise SignatureError("malformed webhook-signature: expected v1,<base64> entries separated by spaces")
        if version == "v1":
            if not _BASE64_SHA256.fullmatch(signature):
                raise SignatureError("malformed webhook-signature: v1 must be 44 base64 characters")
            candidates.append(signature)
    if not candidates:
        raise SignatureError("malformed webhook-signature: no v1 signature")
    expected = _standard_signature(_standard_key(secret), message_id, timestamp, body)
    if not _any_matches(candidates, expected):
        raise SignatureError("no v1 signature matches the body")


# -- plain HMAC of the body (GitHub style) -------------------------------------------------------


def _verify_hmac(secret: str, header: str, value: str | None, body: bytes) -> None:
    if not value:
        raise SignatureError(f"the {header} header is missing")
    signature = value.strip().removeprefix("sha256=")
    if not _HEX_SHA256.fullmatch(signature):
        raise SignatureError(f"malformed {header}: expected sha256=<64 hex digits>")
    if not _any_matches([signature.lower()], _hmac_hex(secret.encode(), body)):
        raise SignatureError("the signature does not match the body")


# -- the public entry points ---------------------------------------------------------------------


class HeaderItems(Protocol):
    """Request headers as anything with ``items()``: a dict, or a framework's multi-dict."""

    def items(self) -> Iterable[tuple[str, str]]: ...


def _lower(headers: HeaderItems) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def verify_headers(scheme: str, secret: str, headers: HeaderItems, body: bytes, *, unix_time: float,
                   header_name: str = DEFAULT_HMAC_HEADER) -> None:
    """Return quietly when ``headers`` sign ``body`` with ``secret`` under ``scheme``.

    Raises :class:`SignatureError` (→ 401 ``invalid_signature``) when the signature is missing,
    malformed, wrong or stale. ``header_name`` is the ``hmac-sha256`` scheme's header.
    """
    lowered = _lower(headers)
    if scheme == "harness":
        _verify_tv1(HEADER, secret, lowered.get(HEADER.lower()), body, unix_time)
    elif scheme == "stripe":
        _verify_tv1(STRIPE_HEADER, secret, lowered.get(STRIPE_HEADER.lower()), body, unix_time)
    elif scheme == "standard-webhooks":
        _verify_standard(secret, lowered, body, unix_time)
    elif scheme == "hmac-sha256":
        _verify_hmac(secret, header_name, lowered.get(header_name.lower()), body)
    else:
        raise ValueError(f"unknown signature scheme {scheme!r}")


def _wrong_secret(scheme: str, secret: str) -> str:
    if scheme == "standard-webhooks":
        return "whsec_" + base64.b64encode(b"not-" + _standard_key(secret)).decode()
    return "wrong-" + secret


def signature_headers(scheme: str, secret: str, body: bytes, *, unix_time: float, mode: str = "valid",
                      header_name: str = DEFAULT_HMAC_HEADER, message_id: str = "msg_harness") -> dict[str, str]:
    """The signature headers a third party sends for ``body`` at ``unix_time``.

    ``mode`` is the scenario's ``signature``: ``valid``; ``missing`` (no headers); ``wrong``
    (signed with another secret); ``stale`` (signed :data:`STALE_BY_S` seconds ago — refused for
    ``hmac-sha256``, which has no timestamp).
    """
    if mode not in SIGNATURE_MODES:
        raise ValueError(f"unknown signature mode {mode!r}")
    if mode == "missing":
        return {}
    if mode == "stale":
        if scheme == "hmac-sha256":
            raise ValueError("the hmac-sha256 scheme has no timestamp, so a signature cannot be stale")
        unix_time -= STALE_BY_S
    key = _wrong_secret(scheme, secret) if mode == "wrong" else secret
    if scheme == "harness":
        return {HEADER: _sign_tv1(HEADER, (key,), body, unix_time)}
    if scheme == "stripe":
        return {STRIPE_HEADER: _sign_tv1(STRIPE_HEADER, (key,), body, unix_time)}
    if scheme == "standard-webhooks":
        timestamp = str(int(unix_time))
        signature = _standard_signature(_standard_key(key), message_id, timestamp, body)
        return {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}
    if scheme == "hmac-sha256":
        return {header_name: "sha256=" + _hmac_hex(key.encode(), body)}
    raise ValueError(f"unknown signature scheme {scheme!r}")


def check_secret(scheme: str, secret: str) -> str | None:
    """Why ``secret`` cannot be used with ``scheme``, or None. Bots are checked at load."""
    if scheme == "standard-webhooks" and secret:
        try:
            if not _standard_key(secret):
                return "the secret decodes to no bytes"
        except SignatureError:
            return "a standard-webhooks secret is whsec_ followed by base64"
    return None


def sign(body: bytes, secret: str, *, unix_time: float, extra_secrets: tuple[str, ...] = ()) -> str:
    """The ``X-Webhook-Signature`` value (``harness`` scheme) for ``body`` at ``unix_time``.

    ``extra_secrets`` adds one ``v1`` entry each, as a sender rotating secrets does.
    """
    return _sign_tv1(HEADER, (secret, *extra_secrets), body, unix_time)


def verify(body: bytes, secret: str, header: str | None, *, unix_time: float) -> None:
    """Check one ``X-Webhook-Signature`` value (``harness`` scheme); raise :class:`SignatureError`."""
    _verify_tv1(HEADER, secret, header, body, unix_time)

