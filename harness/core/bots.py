"""Bots: flows of blocks, loaded from TOML or JSON and validated completely.

A bot is a graph of blocks joined by named edges (``next``, ``success``/``failure``,
``true``/``false``). :func:`parse_bot` checks the whole document and reports **every** problem it
finds at once, each as a :class:`BotProblem` naming the block, the field and the reason, so a
user fixes a file in one round instead of one error at a time::

    try:
        bot = load_bot("scenarios/bots/payment.toml")
    except InvalidBot as error:
        for problem in error.problems:
            print(problem)      # blocks.wait_payment.timeout_s: must be an integer from 1 to 300
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .mapping import PathSyntaxError, PayloadPath, parse_path
from .signing import DEFAULT_HMAC_HEADER, DEFAULT_SCHEME, SCHEMES, check_secret

__all__ = [
    "MAX_MAPPINGS",
    "REDACTED",
    "TIMEOUT_RANGE",
    "BLOCK_TYPES",
    "CONDITION_OPS",
    "Block",
    "Bot",
    "BotProblem",
    "InvalidBot",
    "parse_bot",
    "load_bot",
    "read_document",
    "is_integer",
]

MAX_MAPPINGS = 50
REDACTED = "********"
TIMEOUT_RANGE = range(1, 301)
CONDITION_OPS = ("equals", "not_equals", "exists", "gt", "lt", "contains")
# Ids appear in URLs (/webhooks/{bot}/{block}), so they keep to characters that need no escaping.
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
# Ids are URL path segments; these two would be resolved away by clients and refused by the
# server's path check (SPEC §17.1, §17.4), so a bot or block named so could never be called.
_DOT_SEGMENTS = (".", "..")
# An HTTP header name (RFC 9110 token characters).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
DEFAULT_KEY_PATH = parse_path("conversation_key")
MAX_EARLY_S = 300  # seconds an early call may be held (SPEC §14.1)

# type -> (required fields, optional fields, required edges, optional edges)
_SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "message": (("text",), (), (), ("next",)),
    "set_variable": (("name", "value"), (), (), ("next",)),
    "javascript": (("code",), (), (), ("next", "failure")),
    "webhook": (("timeout_s",), ("mappings", "secret", "key_path", "signature", "signature_header", "early_s"),
                ("success", "failure"), ()),
    "condition": (("variable", "op"), ("value",), ("true", "false"), ()),
    "end": ((), (), (), ()),
}
BLOCK_TYPES = tuple(_SHAPES)


@dataclass(frozen=True, slots=True)
class BotProblem:
    """One thing wrong with a bot document: where (block and field) and why."""

    block: str | None
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"blocks.{self.block}.{self.field}" if self.block else self.field
        return f"{where}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"block": self.block, "field": self.field, "reason": self.reason}


class InvalidBot(ValueError):
    """Raised by :func:`parse_bot` / :func:`load_bot` with the full list of problems."""

    def __init__(self, problems: list[BotProblem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {problem}" for problem in problems)
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}invalid bot, {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True, slots=True)
class Block:
    """One validated block. ``config`` keeps the block's fields exactly as written."""

    id: str
    type: str
    config: dict[str, Any]
    edges: dict[str, str]
    # Parsed once at load time; only webhook blocks have them.
    mappings: tuple[tuple[str, PayloadPath], ...] = ()
    key_path: PayloadPath = DEFAULT_KEY_PATH

    @property
    def signature_scheme(self) -> str:
        return str(self.config.get("signature") or DEFAULT_SCHEME)

    @property
    def signature_header(self) -> str:
        return str(self.config.get("signature_header") or DEFAULT_HMAC_HEADER)

    @property
    def timeout_s(self) -> int:
        return int(self.config["timeout_s"])

    @property
    def secret(self) -> str:
        return str(self.config.get("secret") or "")

    @property
    def early_s(self) -> float:
        """How long a call that comes before the wait opens is held (SPEC §14.1); 0: not at all."""
        return float(self.config.get("early_s", 0))


@dataclass(frozen=True, slots=True)
class Bot:
    id: str
    name: str
    start: str
    blocks: dict[str, Block]
    document: dict[str, Any] = field(repr=False, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The bot as a JSON-ready document (what ``POST /api/bots`` accepts)."""
        return json.loads(json.dumps(self.document))

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with every webhook secret replaced by :data:`REDACTED`: what the API shows."""
        document = self.to_dict()
        for block in self.blocks.values():
            if block.secret:
                document["blocks"][block.id]["secret"] = REDACTED
        return document

    @property
    def has_secrets(self) -> bool:
        return any(block.secret for block in self.blocks.values())

    def webhook_blocks(self) -> list[str]:
        return [block.id for block in self.blocks.values() if block.type == "webhook"]

    def first_webhook(self) -> str | None:
        """The first webhook block reached from ``start``, breadth first along the edges."""
        seen, queue = {self.start}, [self.start]
        while queue:
            block = self.blocks[queue.pop(0)]
            if block.type == "webhook":
                return block.id
            for target in block.edges.values():
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
        return None

    def with_timeout(self, block_id: str, timeout_s: int, new_id: str) -> Bot:
        """A copy under ``new_id`` whose webhook block ``block_id`` waits ``timeout_s``."""
        return self.with_timing(new_id, {block_id: timeout_s})

    def with_timing(self, new_id: str, timeouts: dict[str, int], early_scale: float = 1.0) -> Bot:
        """A copy under ``new_id`` with these webhook blocks' ``timeout_s`` and every ``early_s``
        multiplied by ``early_scale`` (a time-scaled run's bot)."""
        document = self.to_dict()
        document["id"] = new_id
        for block_id, timeout_s in timeouts.items():
            document["blocks"][block_id]["timeout_s"] = timeout_s
        if early_scale != 1:
            for block in document["blocks"].values():
                if block.get("early_s"):
                    block["early_s"] = block["early_s"] * early_scale
        return parse_bot(document)


class _Problems:
    """Collects problems in document order."""

    def __init__(self) -> None:
        self.items: list[BotProblem] = []

    def add(self, block: str | None, field_name: str, reason: str) -> None:
        self.items.append(BotProblem(block, field_name, reason))


def is_integer(value: Any) -> bool:
    """An int that is not a bool (TOML and JSON booleans are ints to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_bot(document: Any, source: str | None = None) -> Bot:
    """Validate a bot document (already parsed from TOML/JSON) and build a :class:`Bot`.

    Raises :class:`InvalidBot` listing every problem.
    """
    problems = _Problems()
    if not isinstance(document, dict):
        raise InvalidBot([BotProblem(None, "bot", "must be an object (a table)")], source)

    for key in document:
        if key not in ("id", "name", "start", "blocks", "webhooks"):
            problems.add(None, key, "unknown field")
    bot_id = document.get("id")
    if not isinstance(bot_id, str) or not _ID.fullmatch(bot_id):
        problems.add(None, "id", "required; 1-128 characters from A-Z a-z 0-9 _ . -")
    elif bot_id in _DOT_SEGMENTS:
        problems.add(None, "id", f"{bot_id!r} is not a usable id: a URL path cannot hold it as a segment")
    name = document.get("name", bot_id if isinstance(bot_id, str) else "")
    if not isinstance(name, str):
        problems.add(None, "name", "must be a string")
    raw_blocks = document.get("blocks")
    if not isinstance(raw_blocks, dict) or not raw_blocks:
        problems.add(None, "blocks", "required; a table of at least one block")
        raw_blocks = {}
    start = document.get("start")
    if not isinstance(start, str) or not start:
        problems.add(None, "start", "required; the id of the first block")
    elif raw_blocks and start not in raw_blocks:
        problems.add(None, "start", f"dangling edge: no block {start!r}")

    blocks: dict[str, Block] = {}
    for block_id, raw in raw_blocks.items():
        block = _parse_block(str(block_id), raw, raw_blocks, problems)
        if block is not None:
            blocks[block.id] = block

    if problems.items:
        raise InvalidBot(problems.items, source)
    assert isinstance(bot_id, str) and isinstance(start, str) and isinstance(name, str)  # checked above
    clean = {key: value for key, value in document.items() if key != "webhooks"}
    clean.setdefault("name", bot_id)
    return Bot(id=bot_id, name=name, start=start, blocks=blocks, document=clean)


def _parse_block(block_id: str, raw: Any, all_blocks: dict[str, Any], problems: _Problems) -> Block | None:
    count_before = len(problems.items)
    if not _ID.fullmatch(block_id):
        problems.add(block_id, "id", "block ids use 1-128 characters from A-Z a-z 0-9 _ . -")
    elif block_id in _DOT_SEGMENTS:
        problems.add(block_id, "id", f"{block_id!r} is not a usable id: a URL path cannot hold it as a segment")
    if not isinstance(raw, dict):
        problems.add(block_id, "block", "must be a table")
        return None
    block_type = raw.get("type")
    if not isinstance(block_type, str) or block_type not in _SHAPES:  # a list or table is not hashable
        reason = "missing" if block_type is None else f"unknown type {block_type!r}"
        problems.add(block_id, "type", f"{reason}; one of {', '.join(BLOCK_TYPES)}")
        return None
    required, optional, required_edges, optional_edges = _SHAPES[block_type]
    known = {"type", *required, *optional, *required_edges, *optional_edges}
    for key in raw:
        if key not in known:
            problems.add(block_id, key, f"unknown field for a {block_type} block")
    for key in required:
        if key not in raw:
            problems.add(block_id, key, "required")

    edges: dict[str, str] = {}
    for edge in (*required_edges, *optional_edges):
        target = raw.get(edge)
        if target is None:
            if edge in required_edges:
                problems.add(block_id, edge, "missing edge")
            continue
        if not isinstance(target, str) or target not in all_blocks:
            problems.add(block_id, edge, f"dangling edge: no block {target!r}")
            continue
        edges[edge] = target

    mappings: tuple[tuple[str, PayloadPath], ...] = ()
    key_path = DEFAULT_KEY_PATH
    if block_type == "message" and "text" in raw and not isinstance(raw["text"], str):
        problems.add(block_id, "text", "must be a string")
    elif block_type == "set_variable" and "name" in raw:
        _check_variable_name(block_id, "name", raw["name"], problems)
    elif block_type == "javascript" and "code" in raw and not isinstance(raw["code"], str):
        problems.add(block_id, "code", "must be a string")
    elif block_type == "condition":
        if "variable" in raw:
            _check_variable_name(block_id, "variable", raw["variable"], problems)
        op = raw.get("op")
        if "op" in raw and op not in CONDITION_OPS:
            problems.add(block_id, "op", f"unknown op {op!r}; one of {', '.join(CONDITION_OPS)}")
        if op in CONDITION_OPS and op != "exists" and "value" not in raw:
            problems.add(block_id, "value", f"required for op {op!r}")
    elif block_type == "webhook":
        mappings, key_path = _parse_webhook(block_id, raw, problems)

    if len(problems.items) != count_before:
        return None
    return Block(id=block_id, type=block_type, config=dict(raw), edges=edges, mappings=mappings, key_path=key_path)


def _check_variable_name(block_id: str, field_name: str, value: Any, problems: _Problems) -> None:
    if not isinstance(value, str) or not value.strip():
        problems.add(block_id, field_name, "empty variable name")


def _parse_webhook(block_id: str, raw: dict[str, Any],
                   problems: _Problems) -> tuple[tuple[tuple[str, PayloadPath], ...], PayloadPath]:
    timeout = raw.get("timeout_s")
    if "timeout_s" in raw and (not is_integer(timeout) or timeout not in TIMEOUT_RANGE):
        problems.add(block_id, "timeout_s", f"must be an integer from 1 to 300, got {timeout!r}")
    early = raw.get("early_s", 0)
    if isinstance(early, bool) or not isinstance(early, (int, float)) or not 0 <= early <= MAX_EARLY_S:
        problems.add(block_id, "early_s", f"must be a number from 0 to {MAX_EARLY_S}, got {early!r}")
    secret = raw.get("secret", "")
    if not isinstance(secret, str):
        problems.add(block_id, "secret", "must be a string")
        secret = ""
    scheme = raw.get("signature", DEFAULT_SCHEME)
    if scheme not in SCHEMES:
        problems.add(block_id, "signature", f"unknown scheme {scheme!r}; one of {', '.join(SCHEMES)}")
    elif (secret_problem := check_secret(scheme, secret)) is not None:
        problems.add(block_id, "secret", secret_problem)
    header = raw.get("signature_header", DEFAULT_HMAC_HEADER)
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
        problems.add(block_id, "signature_header", f"must be an HTTP header name, got {header!r}")
    key_path = DEFAULT_KEY_PATH
    if "key_path" in raw:
        try:
            key_path = parse_path(raw["key_path"])
        except PathSyntaxError as error:
            problems.add(block_id, "key_path", f"path does not parse: {error}")
    raw_mappings = raw.get("mappings", {})
    if not isinstance(raw_mappings, dict):
        problems.add(block_id, "mappings", "must be a table of variable = path")
        return (), key_path
    if len(raw_mappings) > MAX_MAPPINGS:
        problems.add(block_id, "mappings", f"{len(raw_mappings)} mappings; at most {MAX_MAPPINGS}")
    parsed: list[tuple[str, PayloadPath]] = []
    for variable, path_text in raw_mappings.items():
        if not variable.strip():
            problems.add(block_id, "mappings", "empty variable name")
            continue
        try:
            parsed.append((variable, parse_path(path_text)))
        except PathSyntaxError as error:
            problems.add(block_id, f"mappings.{variable}", f"path does not parse: {error}")
    return tuple(parsed), key_path


def read_document(path: str | Path) -> Any:
    """Read a TOML or JSON file (by its suffix) into plain Python data.

    Raises ``ValueError`` with the file name and the parser's reason.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: does not parse: {error}") from None


def load_bot(path: str | Path) -> Bot:
    """Load and validate a bot from a ``.toml`` or ``.json`` file."""
    try:
        document = read_document(path)
    except ValueError as error:
        raise InvalidBot([BotProblem(None, "file", str(error))], str(path)) from None
    return parse_bot(document, source=str(path))
