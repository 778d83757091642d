"""Refusals: every "no" the gate or the server gives, as one exception type with a stable code.

The codes are the contract's error codes (SPEC §3–4, §11). :data:`STATUS_BY_CODE` gives each its
HTTP status: the server answers with it, and the runner's transport-free driver reports the same
status without any HTTP.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Refused", "STATUS_BY_CODE", "STATUS_BY_ANSWER", "RETRY_AFTER_S"]

# The contract's error codes and their HTTP statuses (SPEC §3, §4.2, §11), in one table that the
# server and the runner's transport-free driver share.
STATUS_BY_CODE: dict[str, int] = {
    "unknown_webhook": 404,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_payload": 400,
    "invalid_signature": 401,
    "missing_conversation_key": 422,
    "unknown_conversation": 404,
    "wait_expired": 410,
    "not_waiting": 409,
    "already_held": 409,  # an early call is already held for this conversation and block (SPEC §14.1)
    "store_unavailable": 503,  # the store cannot answer now; nothing changed (SPEC §13.3)
    "invalid_bot": 422,
    "bot_exists": 409,
    "unknown_bot": 404,
    "not_found": 404,  # a path not in its canonical spelling (harness.web.http_guard)
    "unauthorized": 401,
    "body_timeout": 408,
    "invalid_request": 400,  # Content-Length with Transfer-Encoding (harness.web.http_guard)
}

# The statuses of a webhook call that was not refused, by the answer's "status" field.
STATUS_BY_ANSWER: dict[str, int] = {"accepted": 200, "held": 202}

RETRY_AFTER_S = 1  # the Retry-After of a 503 store_unavailable


class Refused(Exception):
    """A refused request. ``code`` is machine-readable, ``detail`` is for people.

    ``conversation_key``: the key a webhook call named, when it was refused after its key was read
    (``unknown_conversation``, ``wait_expired``, ``not_waiting``, ``already_held``), so that the web
    layer can log its first characters without parsing the body again. It is not part of the answer.
    """

    def __init__(self, code: str, detail: str, *, conversation_key: str | None = None, **extra: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.conversation_key = conversation_key
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}
