"""The QuickJS sandbox behind ``javascript`` blocks.

Each run gets a fresh ``quickjs.Context`` (bot snippets declare top-level ``const``s, so a reused
context would fail the second time) with a 0.5 s time limit and a 32 MiB memory limit.

QuickJS refuses calls into Python while a time limit is set, so ``wn`` is written in JavaScript:
the conversation's variables go in as a JSON object, the script reads and writes that object, and
the result is read back with ``JSON.stringify`` after the run. The run is synchronous and never
uses a thread, which keeps trio's virtual clock honest.
"""

from __future__ import annotations

import json
from typing import Any

import quickjs

__all__ = ["TIME_LIMIT_S", "MEMORY_LIMIT_BYTES", "ScriptError", "run_script"]

TIME_LIMIT_S = 0.5
MEMORY_LIMIT_BYTES = 32 * 1024 * 1024

_PRELUDE = """
var __wn_vars = JSON.parse(__wn_input);
var wn = Object.freeze({
  getConversationVariable: function (name) { return __wn_vars[String(name)]; },
  setConversationVariable: function (name, value) {
    __wn_vars[String(name)] = value === undefined ? null : value;
  },
});
"""


class ScriptError(Exception):
    """A script that threw, did not parse, or hit the time or memory limit."""


def run_script(code: str, variables: dict[str, Any]) -> dict[str, Any]:
    """Run ``code`` with ``wn`` bound to a copy of ``variables``; return the variables after it.

    The input is never modified: a failing script leaves the conversation untouched.
    """
    context = quickjs.Context()
    context.set_memory_limit(MEMORY_LIMIT_BYTES)
    try:
        context.set("__wn_input", json.dumps(variables))
        context.eval(_PRELUDE)
        context.set_time_limit(TIME_LIMIT_S)
        context.eval(code)
        context.set_time_limit(-1)
        result = context.eval("JSON.stringify(__wn_vars)")
    except quickjs.JSException as error:
        raise ScriptError(_describe(error)) from None
    except (MemoryError, OverflowError, TypeError, ValueError) as error:
        raise ScriptError(f"the script's result cannot be read back: {error}") from None
    return json.loads(result)


def _describe(error: quickjs.JSException) -> str:
    message = str(error).strip()
    if "interrupted" in message:
        return f"time limit of {TIME_LIMIT_S} s exceeded"
    if message in ("", "null") or "out of memory" in message:
        return f"memory limit of {MEMORY_LIMIT_BYTES // (1024 * 1024)} MiB exceeded"
    return message.splitlines()[0]
