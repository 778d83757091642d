"""Webhook signatures (SPEC §4.4).

Header: ``X-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=<hex>…]`` where the HMAC
covers ``"<t>.<raw body>"`` with the block's secret. Several ``v1`` entries allow secret rotation:
one match suffices. A ``t`` more than :data:`TOLERANCE_S` from the verifier's clock is stale.

>>> header = sign(b'{"conversation_key": "k"}', "s3cret", unix_time=1_700_000_000)
>>> verify(b'{"conversation_key": "k"}', "s3cret", header, unix_time=1_700_000_100)
>>> verify(b'{}', "s3cret", header, unix_time=1_700_000_100)
Traceback (most recent call last):
...
harness.core.signing.SignatureError: no v1 signature matches the body
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = ["HEADER", "TOLERANCE_S", "SignatureError", "sign", "verify"]

HEADER = "X-Webhook-Signature"
TOLERANCE_S = 300
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(ValueError):
    """The signature is missing, malformed, wrong or stale; the message says which."""


def _digest(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, *, unix_time: float, extra_secrets: tuple[str, ...] = ()) -> str:
    """The header value a well-behaved third party sends for ``body`` at ``unix_time``."""
    timestamp = str(int(unix_time))
    parts = [f"t={timestamp}"] + [f"v1={_digest(s, timestamp, body)}" for s in (secret, *extra_secrets)]
    return ",".join(parts)


def verify(body: bytes, secret: str, header: str | None, *, unix_time: float) -> None:
    """Return quietly when ``header`` signs ``body`` with ``secret``; raise :class:`SignatureError`."""
    if not header:
        raise SignatureError(f"the {HEADER} header is missing")
    timestamp: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {HEADER}: expected t=<seconds>,v1=<hex>")
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise SignatureError(f"malformed {HEADER}: t must be one whole number of seconds")
            timestamp = value
        elif name == "v1":
            if not _HEX_SHA256.fullmatch(value):
                raise SignatureError(f"malformed {HEADER}: v1 must be 64 hex digits")
            candidates.append(value.lower())
        # Other schemes (v0, v2…) are ignored, so senders can add them without breaking us.
    if timestamp is None or not candidates:
        raise SignatureError(f"malformed {HEADER}: needs t= and at least one v1=")
    if abs(unix_time - int(timestamp)) > TOLERANCE_S:
        raise SignatureError(f"stale signature: t is more than {TOLERANCE_S} s from the server's clock")
    expected = _digest(secret, timestamp, body)
    matched = False
    for candidate in candidates:  # compare every entry so timing does not reveal which matched
        matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        raise SignatureError("no v1 signature matches the body")
