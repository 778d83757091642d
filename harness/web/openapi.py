"""The OpenAPI 3.1 document served at ``GET /openapi.json`` (SPEC §11), written from SPEC §3–4.

Written by hand rather than generated from the routes: the contract is a set of tables (status,
error code, when), and the document states exactly those, including the answers no route
function returns itself — the guard's 400/401/408/415 (:mod:`harness.web.http_guard`) and the
framework's 404/405 for paths and methods that match no route. Every error answer is
``{"error": CODE, "detail": TEXT}``; each response lists the codes it can carry, so a client (or a
fuzzer) can check that a 404 is ``unknown_bot`` and not something else.

``tests/test_openapi.py`` runs Schemathesis against a live ``harness serve`` with this document:
no 5xx, and no status, header, content type or body that contradicts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["openapi_document"]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *codes: str) -> dict[str, Any]:
    """A response whose body is an error with one of ``codes``."""
    schema = {"allOf": [_ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]}
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any], media_type: str = JSON) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


# Answers any request can get, whatever the route (SPEC §11; harness.web.http_guard).
_FRAMING = ("invalid_request",)  # Content-Length with Transfer-Encoding


def _path_param(name: str, description: str, examples: list[str] | None = None) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "path", "required": True, "description": description,
                                 "schema": {"type": "string", "minLength": 1}}
    if examples:
        parameter["examples"] = {value: {"value": value} for value in examples}
    return parameter


def _link(operation: str, description: str, **parameters: str) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation, "description": description}
    body = parameters.pop("requestBody", None)
    if parameters:
        link["parameters"] = parameters
    if body is not None:
        link["requestBody"] = {"conversation_key": body}
    return link


def openapi_document(*, max_body: int, protected: bool,
                     webhooks: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """The document for a server with body limit ``max_body``; ``protected`` when it has a token.

    With ``protected``, the page, ``/api/…`` and ``/metrics`` declare the bearer scheme (and
    their 401); without, they are open and never answer 401. ``webhooks`` (bot id → its webhook
    block ids) become examples of the path parameters, so a client — or a fuzzer — can reach
    the real bots; links lead from a started conversation to its webhook and its state.
    """
    bot_ids = list(webhooks or {})[:20]
    block_ids = sorted({block for blocks in (webhooks or {}).values() for block in blocks})[:20]
    guarded: dict[str, Any] = {"security": [{"bearer": []}]} if protected else {}

    def responses(ok: dict[str, Any], *, body: bool = False, auth: bool = False, unknown_path: bool = False,
                  errors: dict[str, tuple[str, ...]] | None = None, descriptions: dict[str, str] | None = None,
                  store: bool = True) -> dict[str, Any]:
        """The route's own answers (``ok``; ``errors``: status → codes) plus the guard's and the framework's;
        ``store``: the route reads or writes the store, so it may answer 503 ``store_unavailable``."""
        codes: dict[str, set[str]] = {status: set(found) for status, found in (errors or {}).items()}
        about = dict(descriptions or {})
        if store:
            codes["503"] = {"store_unavailable"}
            about["503"] = "The store cannot answer now (locked, stopped, unreachable); nothing changed. See Retry-After"
        codes.setdefault("400", set()).update(_FRAMING)
        about.setdefault("400", "Refused request: ambiguous framing (Content-Length with Transfer-Encoding)")
        if auth and protected:
            codes["401"] = {"unauthorized"}
            about["401"] = "No valid token (Authorization: Bearer, or the harness_token cookie)"
        if body:
            codes["408"], about["408"] = {"body_timeout"}, "The body was not complete within --body-timeout"
            codes["413"], about["413"] = {"payload_too_large"}, f"The body is larger than {max_body} bytes (--max-body)"
            codes["415"], about["415"] = {"unsupported_media_type"}, "A content type this route does not accept"
        if unknown_path:
            # A path parameter holding "/" (sent as %2F) can land on another route, or on none.
            codes.setdefault("404", set()).add("not_found")
            about.setdefault("404", "No route for this path")
            codes["405"] = {"method_not_allowed"}
            about["405"] = "The path names another route, which does not take this method"
        answers = dict(ok)
        for status, found in codes.items():
            answers[status] = _error(about.get(status, "Refused"), *sorted(found))
        return dict(sorted(answers.items()))

    conversation = _ref("Conversation")
    paths: dict[str, Any] = {
        "/healthz": {"get": {
            "summary": "Liveness", "operationId": "healthz",
            "responses": {**responses({"200": _ok("Alive", {"type": "object", "required": ["status"],
                                                            "properties": {"status": {"const": "ok"}}})}, store=False),
                          "503": _ok("Degraded: the store cannot answer", {
                              "type": "object", "required": ["status", "store"],
                              "properties": {"status": {"const": "degraded"}, "store": {"type": "string"}}})},
        }},
        "/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi",
            "responses": responses({"200": _ok("OpenAPI 3.1", {"type": "object"})}),
        }},
        "/": {"get": {
            "summary": "The live page. With --api-token, open it as /?token=TOKEN: the answer sets the "
                       "harness_token cookie (HttpOnly; SameSite=Strict) that authorises the page's requests",
            "operationId": "page", **guarded,
            "parameters": [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": responses({"200": _ok("The page", {"type": "string"}, "text/html")}, auth=True, store=False),
        }},
        "/static/{name}": {"get": {
            "summary": "A file of the live page (dashboard.js, dashboard.css)", "operationId": "pageAsset",
            "parameters": [_path_param("name", "The file's name", ["dashboard.js", "dashboard.css"])],
            "responses": responses({"200": {"description": "The file", "content": {
                "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}}},
                errors={"404": ("not_found",)}, unknown_path=True, store=False),
        }},
        "/api/dashboard": {"get": {
            "summary": "What the live page shows: bots, open waits, recent resolutions and late calls, counters",
            "operationId": "dashboard", **guarded,
            "responses": responses({"200": _ok("A snapshot of the gate", {"type": "object", "required": [
                "bots", "open_waits", "recent_resolutions", "recent_late_calls", "counters"]})}, auth=True),
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics", "operationId": "metrics", **guarded,
            "responses": responses({"200": _ok("Text exposition format", {"type": "string"}, "text/plain")},
                                   auth=True),
        }},
        "/api/bots": {
            "post": {
                "summary": "Register a bot", "operationId": "createBot", **guarded,
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("BotDocument")}}},
                "responses": {**responses(
                    {"201": {**_ok("The bot, with its webhook URLs", _ref("Bot")), "links": {
                        "ReadIt": _link("getBot", "The bot", bot_id="$response.body#/id"),
                        "StartOne": _link("startConversation", "Start a conversation", bot_id="$response.body#/id"),
                    }}}, body=True, auth=True,
                    errors={"400": ("invalid_payload",), "409": ("bot_exists",)},
                    descriptions={"400": "Not a JSON object, or a value that cannot be stored",
                                  "409": "The id is taken"}),
                    "422": {"description": "The bot is invalid; every problem is listed",
                            "content": {JSON: {"schema": _ref("InvalidBot")}}}},
            },
            "get": {
                "summary": "List bots", "operationId": "listBots", **guarded,
                "responses": responses({"200": _ok("Every bot", {
                    "type": "object", "required": ["bots"],
                    "properties": {"bots": {"type": "array", "items": _ref("Bot")}}})}, auth=True),
            },
        },
        "/api/bots/{bot_id}": {"get": {
            "summary": "One bot", "operationId": "getBot", **guarded,
            "parameters": [_path_param("bot_id", "The bot's id", bot_ids)],
            "responses": responses({"200": _ok("The bot", _ref("Bot"))}, auth=True, unknown_path=True,
                                   errors={"404": ("unknown_bot",)}, descriptions={"404": "No such bot"}),
        }},
        "/api/bots/{bot_id}/conversations": {"post": {
            "summary": "Start a conversation; it runs to its first wait or end", "operationId": "startConversation",
            **guarded,
            "parameters": [_path_param("bot_id", "The bot's id", bot_ids)],
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "properties": {"variables": {"type": ["object", "null"]}}}}}},
            "responses": responses(
                {"201": {**_ok("The conversation, run to its first wait or end", conversation), "links": {
                    "CallItsWebhook": _link("webhook", "Resolve the wait the conversation stopped at",
                                            bot_id="$request.path.bot_id", block_id="$response.body#/block",
                                            requestBody="$response.body#/conversation_key"),
                    "ReadIt": _link("getConversation", "The conversation's state",
                                    key="$response.body#/conversation_key"),
                    "OpenItsUrl": _link("conversationByUrl", "The conversation's state by its URL",
                                        key="$response.body#/conversation_key"),
                }}},
                body=True, auth=True, unknown_path=True,
                errors={"400": ("invalid_payload",), "404": ("unknown_bot",)},
                descriptions={"400": "Not a JSON object; variables not an object, nested deeper than 64 levels "
                                     "or holding text that is not valid Unicode", "404": "No such bot"}),
        }},
        "/api/conversations/{key}": {"get": {
            "summary": "A conversation", "operationId": "getConversation", **guarded,
            "parameters": [_path_param("key", "The conversation key")],
            "responses": responses({"200": _ok("The conversation", conversation)}, auth=True, unknown_path=True,
                                   errors={"404": ("unknown_conversation",)},
                                   descriptions={"404": "No conversation has that key"}),
        }},
        "/c/{key}": {"get": {
            "summary": "A conversation by its URL (the key is the capability: open without a token)",
            "operationId": "conversationByUrl",
            "parameters": [_path_param("key", "The conversation key")],
            "responses": responses({"200": _ok("The conversation", conversation)}, unknown_path=True,
                                   errors={"404": ("unknown_conversation",)},
                                   descriptions={"404": "No conversation has that key"}),
        }},
        "/webhooks/{bot_id}/{block_id}": {"post": {
            "summary": "A third party's call that resolves a conversation's wait (SPEC §4; refusals in this order: "
                       "404 unknown_webhook, 413, 415, 400, 401, 422, 404 unknown_conversation, 410, 409)",
            "operationId": "webhook",
            "parameters": [
                _path_param("bot_id", "The bot's id", bot_ids), _path_param("block_id", "A webhook block's id", block_ids),
                {"name": "X-Webhook-Signature", "in": "header", "required": False,
                 "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'> when the block has a secret",
                 "schema": {"type": "string"}},
            ],
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _ref("WebhookPayload")},
                FORM: {"schema": _ref("WebhookPayload")},
            }},
            "responses": responses(
                {"200": _ok("Accepted: the wait resolved as success", _ref("Accepted")),
                 "202": _ok("Held: an early call, kept for the block's early_s until the wait opens", _ref("Held"))},
                body=True, unknown_path=True,
                errors={"400": ("invalid_payload",), "401": ("invalid_signature",),
                        "404": ("unknown_webhook", "unknown_conversation"), "409": ("already_held", "not_waiting"),
                        "410": ("wait_expired",), "422": ("missing_conversation_key",)},
                descriptions={
                    "400": "The body does not parse, is not an object, is nested deeper than 64 levels or holds "
                           "text that is not valid Unicode",
                    "401": "The block has a secret and the signature is missing, malformed, wrong or stale",
                    "404": "No such webhook block, or no conversation of this bot has the key",
                    "409": "The conversation is not waiting at this block, or an early call for it is already held",
                    "410": "The wait reached its deadline without a valid call",
                    "422": "conversation_key absent, empty or not a string"}),
        }},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Webhook gate", "version": "1",
                 "description": "Every error is {\"error\": CODE, \"detail\": TEXT}. See SPEC.md."},
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
    if protected:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object", "required": ["error", "detail"],
            "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        },
        "InvalidBot": {"allOf": [_ref("Error"), {
            "required": ["problems"],
            "properties": {
                "error": {"const": "invalid_bot"},
                "problems": {"type": "array", "items": {
                    "type": "object", "required": ["block", "field", "reason"],
                    "properties": {"block": nullable_string, "field": nullable_string, "reason": {"type": "string"}},
                }},
            },
        }]},
        "BotDocument": {
            "type": "object", "required": ["id", "start", "blocks"],
            "description": "A bot as in SPEC §1; validated completely on registration (422 lists every problem)",
            "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "start": {"type": "string"},
                "blocks": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["type"],
                    "properties": {"type": {"enum": ["message", "set_variable", "javascript", "webhook",
                                                     "condition", "end"]}},
                }},
            },
        },
        "Bot": {"allOf": [_ref("BotDocument"), {
            "required": ["webhooks"],
            "properties": {"webhooks": {"type": "object", "additionalProperties": {"type": "string"},
                                        "description": "webhook block id → endpoint URL"}},
        }]},
        "Wait": {
            "type": "object",
            "required": ["block", "opened_at", "deadline", "outcome", "reason", "waited_s"],
            "properties": {
                "block": {"type": "string"}, "opened_at": {"type": "string"}, "deadline": {"type": "string"},
                "timeout_s": {"type": "integer"},
                "outcome": {"enum": [None, "success", "failure"]}, "reason": {"enum": [None, "received", "received_early", "timeout"]},
                "resolved_at": nullable_string, "waited_s": {"type": ["number", "null"]},
            },
        },
        "Conversation": {
            "type": "object",
            "required": ["conversation_key", "conversation_url", "bot", "status", "block", "variables",
                         "transcript", "waits"],
            "properties": {
                "conversation_key": {"type": "string"}, "conversation_url": {"type": "string"},
                "bot": {"type": "string"}, "status": {"enum": ["running", "waiting", "completed", "errored"]},
                "block": nullable_string, "variables": {"type": "object"},
                "transcript": {"type": "array", "items": {
                    "type": "object", "required": ["block", "text"],
                    "properties": {"block": {"type": "string"}, "text": {"type": "string"}}}},
                "waits": {"type": "array", "items": _ref("Wait")},
                "late_calls": {"type": "array", "maxItems": 100, "items": {
                    "type": "object", "required": ["block", "at", "after_deadline_s"],
                    "properties": {"block": {"type": "string"}, "at": {"type": "string"},
                                   "after_deadline_s": {"type": "number"}}}},
                "late_calls_total": {"type": "integer", "minimum": 0},
                "early_calls": {"type": "array", "items": {
                    "type": "object", "required": ["block", "at", "outcome"],
                    "properties": {"block": {"type": "string"}, "at": {"type": "string"},
                                   "outcome": {"enum": ["pending", "used", "expired"]}}}},
            },
        },
        "WebhookPayload": {
            "type": "object",
            "description": "Any object; the conversation key sits at the block's key_path (default "
                           "conversation_key). Form values are strings; a repeated field becomes a list",
            "properties": {"conversation_key": {"type": "string"}},
        },
        "Held": {
            "type": "object", "required": ["status", "conversation_key", "expires_in_s"],
            "properties": {"status": {"const": "held"}, "conversation_key": {"type": "string"},
                           "expires_in_s": {"type": "number"}},
        },
        "Accepted": {
            "type": "object", "required": ["status", "conversation_key", "mapped", "missing"],
            "properties": {
                "status": {"const": "accepted"}, "conversation_key": {"type": "string"},
                "mapped": {"type": "object"}, "missing": {"type": "array", "items": {"type": "string"}},
            },
        },
    }
