"""The QuickJS sandbox behind ``javascript`` blocks (engine: ``quickjs-ng``).

One run = one fresh ``quickjs.Context`` (bot snippets declare top-level ``const``s, so a reused
context would fail the second time) with a memory limit of 32 MiB and a time limit of at most
0.5 s. Everything the script causes runs inside that one limited ``eval``:

* the user's code, run by an *indirect* ``eval`` of a string from a fixed runner script, so the
  code cannot break out of the runner's ``try``/``catch`` by its text;
* reading the variables back (``JSON.stringify``, captured before the user code runs, so it
  cannot be replaced): a looping ``toJSON`` or getter is interrupted like any loop;
* describing a thrown value (its ``name``/``message``/``toString`` may be user code too).

Why so careful: the Python binding turns an exception that escapes ``eval`` into text *after*
the time limit is off and with the GIL held, so a thrown ``{toString() {while (true) {}}}``
would hang the whole process. Only the engine's own errors can escape the runner (the
uncatchable "interrupted", or "out of memory" inside the runner's own handler), and before the
user code runs the runner locks the doors the binding then opens on them: their conversion to
text, their ``stack``, and ``Error.prepareStackTrace``/``stackTraceLimit``.

QuickJS refuses calls into Python while a time limit is set, so ``wn`` is written in JavaScript
over a plain object of variables that goes in as JSON and comes back as JSON.

The time limit counts *CPU* time of the whole process (the binding uses C ``clock()``): it is
exact for CPU (measured: a runaway loop, a catastrophic regex, a looping ``toJSON`` or getter all
stop at their limit of CPU to the millisecond), but on a busy machine the wall time is longer.
Some native operations never check the limit at all (``BigInt`` arithmetic and ``toString`` on
huge values: seconds each); so in real time scripts run in worker processes that are killed at
limit + :data:`KILL_GRACE_S` (:func:`run_script_async`), each its own process so that its CPU
clock is its own script's. :data:`CPU_SHARE` trims the limit a little so one runaway script
costs ≈ 0.5 s of wall time when the machine is not saturated. The wall time a flow step may
spend on scripts is bounded separately by the flow's 1 s step budget.

``{{name}}`` placeholders in the code are filled in before the run (:func:`render_code`,
SPEC §8.5), escaped for where they stand, so a variable's value can never become code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import quickjs
import trio

from .jsonsafe import check_json_value, safe_by_its_text
from .virtual_time import in_virtual_time

__all__ = [
    "TIME_LIMIT_S",
    "MEMORY_LIMIT_BYTES",
    "CPU_SHARE",
    "PLACEHOLDER",
    "ScriptError",
    "ScriptRun",
    "as_text",
    "render_code",
    "run_script",
    "run_script_async",
    "prestart_script_workers",
]

TIME_LIMIT_S = 0.5
MEMORY_LIMIT_BYTES = 32 * 1024 * 1024
# Share of a script's limit handed to the engine as CPU time, for setup and scheduling slack.
CPU_SHARE = 0.9
# A placeholder: ``{{ name }}`` on one line, the name without braces.
PLACEHOLDER = re.compile(r"\{\{\s*([^{}\n]*?)\s*\}\}")

# The fixed runner. It is the one thing evaluated; the user's code is the string __wn_code.
_RUNNER = r"""(function (input, code) {
  "use strict";
  var define = Object.defineProperty, describeOwn = Object.getOwnPropertyDescriptor;
  var freeze = Object.freeze, stringify = JSON.stringify, parse = JSON.parse, toText = String, keys = Object.keys;
  var run = eval;  // an indirect eval: the code runs as a global script, not in this function
  // Lock what the binding touches on an escaping engine error, before any user code runs.
  define(Error, "prepareStackTrace", {value: undefined, writable: false, configurable: false});
  define(Error, "stackTraceLimit", {value: 10, writable: false, configurable: false});
  var stack = describeOwn(Error.prototype, "stack");
  define(InternalError.prototype, "stack", {get: stack.get, set: stack.set, configurable: false});
  define(InternalError.prototype, Symbol.toPrimitive, {writable: false, configurable: false,
    value: function () { var m = this.message; return "InternalError: " + (typeof m === "string" ? m : ""); }});
  var vars = parse(input);
  var touched = Object.create(null);  // names the script set: the others keep their exact values
  var wn = freeze({
    getConversationVariable: function (name) {
      var found = describeOwn(vars, toText(name));
      return found === undefined ? undefined : found.value;
    },
    setConversationVariable: function (name, value) {
      name = toText(name);
      touched[name] = 1;
      define(vars, name, {value: value === undefined ? null : value,
                                  writable: true, enumerable: true, configurable: true});
    },
  });
  define(globalThis, "wn", {value: wn, writable: false, configurable: false});
  function describe(error) {
    try {
      if (error === null) return "null";  // what the engine throws when it cannot even make an error
      if (typeof error === "object" || typeof error === "function") {
        var name = error.name, message = error.message;
        if (typeof name === "string" && typeof message === "string") {
          return message ? name + ": " + message : name;
        }
      }
      return "uncaught " + toText(error);
    } catch (inner) {
      return "uncaught exception";
    }
  }
  // The answer is one flat string made by stringify (the binding cannot read the rope strings
  // a concatenation may give): a JSON array [variables, names set] is a success, a JSON string
  // an error.
  try {
    run(code);
  } catch (error) {
    return stringify(describe(error));
  }
  var text;
  try {
    text = stringify([vars, keys(touched)]);
  } catch (error) {
    return stringify("the variables cannot be read back: " + describe(error));
  }
  return typeof text === "string" ? text : stringify("the variables cannot be read back");
})(__wn_input, __wn_code)
"""


class ScriptError(Exception):
    """A script that threw, did not parse, hit a limit, or wrote what cannot be stored.

    ``timed_out`` tells a run stopped by its time limit from the other failures.
    """

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class ScriptRun:
    """What one run did: the variables after it (None when it failed) or its error, and its
    wall time (what the flow step's budget is charged)."""

    variables: dict[str, Any] | None
    error: ScriptError | None
    elapsed_s: float


def as_text(value: Any) -> str:
    """A variable's value as text: strings as they are, None as nothing, the rest as JSON.

    >>> as_text(None), as_text("ok"), as_text([1, True])
    ('', 'ok', '[1, true]')
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def run_script(code: str, variables: dict[str, Any], *, time_limit_s: float = TIME_LIMIT_S) -> ScriptRun:
    """Run ``code`` with ``wn`` bound to a copy of ``variables``; never raises for the script's sake.

    ``code``'s placeholders are filled from ``variables`` first. The input is never modified: a
    failing script leaves the conversation untouched. The result's variables are checked with
    :func:`check_json_value`, so what comes back can always be stored and answered.
    """
    started = time.perf_counter()
    variables_after: dict[str, Any] | None = None
    error: ScriptError | None = None
    try:
        variables_after = _run(render_code(code, variables), variables, time_limit_s)
    except ScriptError as failure:
        error = failure.with_traceback(None)  # the traceback would keep the context alive
    return ScriptRun(variables_after, error, time.perf_counter() - started)



async def run_script_async(code: str, variables: dict[str, Any], *, time_limit_s: float = TIME_LIMIT_S) -> ScriptRun:
    """:func:`run_script` for a server: in real time the script runs in a worker *process*.

    Under ``MockClock`` (:func:`~harness.core.virtual_time.in_virtual_time`) it runs inline — no thread or process may
    let virtual time jump while it works, and virtual time stays exact and fast.

    In real time it runs in one of :data:`SCRIPT_WORKERS` prestarted, reused worker processes
    (:class:`_ScriptPool`). Why processes: quickjs-ng does not consult its interrupt handler
    inside some native operations (``BigInt`` arithmetic and ``toString`` on huge values run for
    seconds), and a thread cannot be stopped. A worker whose script overruns its limit by
    :data:`KILL_GRACE_S` is killed and replaced, and the script fails as a time-limit error
    (SPEC §17.3). Each worker is its own process, so the engine's CPU-time limit is the
    script's own, and scripts of other conversations run on the other workers meanwhile.
    """
    if in_virtual_time():
        return run_script(code, variables, time_limit_s=time_limit_s)
    return await _pool().run(code, variables, time_limit_s)


def prestart_script_workers() -> None:
    """Start this trio run's worker processes now (a server calls it at start), not at the first script."""
    if not in_virtual_time():
        _pool()


# Worker processes per trio run (the machine's cores are few; each runs one script at a time).
SCRIPT_WORKERS = 2
# How far past its limit a script may run before its worker is killed (≤ 0.5 s, SPEC §17.3).
KILL_GRACE_S = 0.35
_POOL: trio.lowlevel.RunVar[_ScriptPool] = trio.lowlevel.RunVar("harness_script_pool")


def _pool() -> _ScriptPool:
    try:
        return _POOL.get()
    except LookupError:
        pool = _ScriptPool(SCRIPT_WORKERS)
        _POOL.set(pool)
        trio.lowlevel.spawn_system_task(pool.keep, name="harness script workers")
        return pool


_CORE_DIR = os.path.dirname(os.path.abspath(__file__))
# A worker imports this module and nothing else of the package: ``import harness`` would load the
# runner, pandas and the web side (seconds on a loaded machine), and a runaway script's worker is
# replaced while other scripts wait. Empty package modules with the right __path__ skip those.
_WORKER_BOOT = """
import os, sys, types
core = sys.argv[1]
for name, path in (("harness", os.path.dirname(core)), ("harness.core", core)):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
from harness.core.js import _worker_main
_worker_main()
"""


class _Worker:
    """One worker process: requests and answers are length-prefixed JSON over its stdin/stdout."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.stdin, self.stdout = process.stdin, process.stdout
        self._buffer = bytearray()

    @classmethod
    async def start(cls) -> _Worker:
        process = await trio.lowlevel.open_process([sys.executable, "-c", _WORKER_BOOT, _CORE_DIR],
                                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        worker = cls(process)
        await worker.receive()  # "ready": the engine is imported
        return worker

    async def send(self, message: Any) -> None:
        data = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
        await self.stdin.send_all(len(data).to_bytes(4, "big") + data)

    async def receive(self) -> Any:
        header = await self._exactly(4)
        return json.loads((await self._exactly(int.from_bytes(header, "big"))).decode("utf-8", "surrogatepass"))

    async def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self.stdout.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                raise BrokenPipeError("the script worker exited")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()


class _ScriptPool:
    """Prestarted worker processes, handed out one script at a time; a runaway one is replaced."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle_send, self._idle = trio.open_memory_channel[_Worker](size)
        self._workers: set[_Worker] = set()
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()

    async def keep(self) -> None:
        """Own the workers for the trio run's life (a system task); kill them when it ends."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for _ in range(self.size):
                    nursery.start_soon(self._add_worker)
                self._started.set()
                await trio.sleep_forever()
        finally:
            for worker in self._workers:
                worker.kill()

    async def _add_worker(self) -> None:
        try:
            worker = await _Worker.start()
        except (OSError, BrokenPipeError, ValueError):
            logging.getLogger(__name__).exception("a script worker did not start")
            return
        self._workers.add(worker)
        self._idle_send.send_nowait(worker)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.discard(worker)
        if self._nursery is not None:
            self._nursery.start_soon(self._add_worker)

    async def run(self, code: str, variables: dict[str, Any], time_limit_s: float) -> ScriptRun:
        await self._started.wait()
        worker = await self._idle.receive()
        started = time.perf_counter()
        answer: Any = None
        try:
            with trio.move_on_after(time_limit_s + KILL_GRACE_S):
                await worker.send([code, variables, time_limit_s])
                answer = await worker.receive()
        except BaseException:
            self._replace(worker)  # it may be mid-message: never reuse it
            raise
        elapsed = time.perf_counter() - started
        if answer is None:
            self._replace(worker)
            return ScriptRun(None, ScriptError(f"time limit of {time_limit_s:g} s exceeded", timed_out=True), elapsed)
        self._idle_send.send_nowait(worker)
        after, message, timed_out = answer
        error = None if message is None else ScriptError(message, timed_out=timed_out)
        return ScriptRun(after if error is None else None, error, elapsed)


def _worker_main() -> None:
    """A script worker's loop: read a request from stdin, run it, write the answer to stdout."""
    reader, writer = sys.stdin.buffer, sys.stdout.buffer

    def write(message: Any) -> None:
        data = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
        writer.write(len(data).to_bytes(4, "big") + data)
        writer.flush()

    try:
        write("ready")
        while header := reader.read(4):
            request = reader.read(int.from_bytes(header, "big"))
            code, variables, time_limit_s = json.loads(request.decode("utf-8", "surrogatepass"))
            run = run_script(code, variables, time_limit_s=time_limit_s)
            write([run.variables, None if run.error is None else str(run.error),
                   run.error is not None and run.error.timed_out])
    except (BrokenPipeError, KeyboardInterrupt):  # the server went away, or Ctrl+C reached the group
        pass


def _run(code: str, variables: dict[str, Any], time_limit_s: float) -> dict[str, Any]:
    context = quickjs.Context()
    context.set_memory_limit(MEMORY_LIMIT_BYTES)
    context.set_time_limit(max(time_limit_s * CPU_SHARE, 0.001))
    try:
        context.set("__wn_input", json.dumps(variables, ensure_ascii=False))
        context.set("__wn_code", code)
        result = context.eval(_RUNNER)
    except quickjs.JSException as exception:
        raise _engine_error(str(exception), time_limit_s) from None
    except Exception as exception:  # noqa: BLE001 - any failure of the binding fails the block, never the flow
        raise ScriptError(f"the script's result cannot be read back: {_printable(str(exception))}") from None
    if not isinstance(result, str):
        raise ScriptError("the script's result cannot be read back")
    try:
        payload = json.loads(result)
    except (ValueError, RecursionError):
        raise ScriptError("the variables cannot be read back (nested too deeply)") from None
    if isinstance(payload, str):
        raise _engine_error(payload, time_limit_s)
    if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], dict)):
        raise ScriptError("the variables cannot be read back")
    after, touched = payload
    try:
        if not safe_by_its_text(result):
            check_json_value(after)
    except ValueError as unsafe:
        raise ScriptError(f"a variable cannot be stored: {unsafe}") from None
    return _keep_exact_integers(variables, after, set(touched))


def _keep_exact_integers(before: dict[str, Any], after: dict[str, Any], touched: set[str]) -> dict[str, Any]:
    """Put back the integers a JavaScript Number cannot hold, unless the script set them.

    Variables travel into the engine as JSON, where every number is a double: a 400-digit integer
    becomes ``Infinity`` (read back as null) and 2**53 + 1 loses its last digit, though the script
    never touched them (SPEC §17.4). An int is immutable, so a variable the script did not set
    still holds the original value.
    """
    for name, value in before.items():
        if type(value) is int and name not in touched and name in after and not _fits_a_double(value):
            after[name] = value
    return after


def _fits_a_double(value: int) -> bool:
    return -(2**53) <= value <= 2**53


def _engine_error(message: str, time_limit_s: float) -> ScriptError:
    """The error for a run's failure text, naming the limit when the engine hit one."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    if first == "InternalError: interrupted":
        return ScriptError(f"time limit of {time_limit_s:g} s exceeded", timed_out=True)
    if first in ("", "null", "InternalError: out of memory"):
        return ScriptError(f"memory limit of {MEMORY_LIMIT_BYTES // (1024 * 1024)} MiB exceeded")
    return ScriptError(_printable(first))


def _printable(text: str, limit: int = 300) -> str:
    """Error text fit for a conversation's ``error.reason``: valid UTF-8, bounded length."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- {{placeholders}} in code ----------------------------------------------------------------

# Where a placeholder stands decides how its value is written.
_CODE, _SINGLE, _DOUBLE, _TEMPLATE, _REGEX = "code", "'", '"', "`", "regex"
# After these characters (or nothing) a "/" starts a regular expression, not a division.
_BEFORE_REGEX = set("(,=:[!&|?{};+-*%<>~^")
_KEYWORDS_BEFORE_REGEX = {"return", "typeof", "case", "do", "else", "in", "of", "new", "delete",
                          "void", "throw", "instanceof", "yield", "await"}
_REGEX_SPECIAL = re.compile(r"[\\^$.*+?()[\]{}|/]")
_WORD = re.compile(r"[A-Za-z0-9_$]+")


@functools.lru_cache(maxsize=512)
def _segments(code: str) -> tuple[tuple[str, str], ...]:
    """Split ``code`` into ``("text", source)`` and ``(context, name)`` pieces, scanning it as
    JavaScript: string literals, template text (with nested ``${…}``), comments, and regular
    expression literals (told from a division by the token before them). Cached per code."""
    pieces: list[tuple[str, str]] = []
    state = _CODE
    templates: list[int] = []  # brace depth inside each open ${ … } of a template
    in_class = False  # inside [...] of a regular expression
    last = ""  # the last significant character in code, for the regex-or-division decision
    last_word = ""
    start = i = 0
    n = len(code)
    while i < n:
        char = code[i]
        if char == "{" and state != "comment" and state != "line" and code.startswith("{{", i):
            match = PLACEHOLDER.match(code, i)
            if match:
                pieces.append(("text", code[start:i]))
                pieces.append((state, match[1]))
                i = start = match.end()
                if state == _CODE:
                    last, last_word = "a", "a"  # a value: a "/" after it divides
                continue
        if state == _CODE:
            if char in "'\"`":
                state = char
            elif char == "/" and code.startswith("//", i):
                state, i = "line", i + 1
            elif char == "/" and code.startswith("/*", i):
                state, i = "comment", i + 1
            elif char == "/" and (last == "" or last in _BEFORE_REGEX or last_word in _KEYWORDS_BEFORE_REGEX):
                state, in_class = _REGEX, False
            elif char == "{" and templates:
                templates[-1] += 1
            elif char == "}" and templates:
                if templates[-1] == 0:
                    templates.pop()
                    state = _TEMPLATE
                    i += 1
                    continue
                templates[-1] -= 1
            if state == _CODE and not char.isspace():
                word = _WORD.match(code, i)
                if word:
                    last, last_word = "a", word[0]
                    i = word.end()
                    continue
                last, last_word = char, ""
            elif state != _CODE:
                last, last_word = "a", ""  # a literal is a value
        elif state in (_SINGLE, _DOUBLE):
            if char == "\\":
                i += 1
            elif char == state or char == "\n":
                state = _CODE
        elif state == _TEMPLATE:
            if char == "\\":
                i += 1
            elif char == "`":
                state = _CODE
            elif char == "$" and code.startswith("${", i):
                templates.append(0)
                state, i = _CODE, i + 1
                last, last_word = "", ""
        elif state == _REGEX:
            if char == "\\":
                i += 1
            elif char == "[":
                in_class = True
            elif char == "]":
                in_class = False
            elif (char == "/" and not in_class) or char == "\n":
                state = _CODE
        elif state == "line":
            if char == "\n":
                state = _CODE
        elif state == "comment" and code.startswith("*/", i):
            state, i = _CODE, i + 1
        i += 1
    pieces.append(("text", code[start:]))
    return tuple((kind, text) for kind, text in pieces if kind != "text" or text)


def render_code(code: str, variables: dict[str, Any]) -> str:
    """Fill ``{{name}}`` placeholders in JavaScript ``code`` with the variables' values.

    Inside a string literal or template text a placeholder becomes the value's text
    (:func:`as_text`; unknown → empty) escaped for that literal; inside a regular expression
    literal, its text with every special character escaped; in code, a parenthesised JSON
    literal (unknown → ``(void 0)``, i.e. ``undefined``). Placeholders in comments stay as
    they are.

    >>> render_code('const u = "{{url}}"; const n = {{n}};', {"url": 'a"b', "n": -1})
    'const u = "a\\\\"b"; const n = (-1);'
    """
    if "{{" not in code:
        return code
    out: list[str] = []
    for kind, text in _segments(code):
        if kind == "text":
            out.append(text)
        elif kind == _CODE:
            out.append(f"({json.dumps(variables[text])})" if text in variables else "(void 0)")
        else:
            out.append(_escape(as_text(variables.get(text)), kind))
    return "".join(out)


def _escape(text: str, literal: str) -> str:
    if literal == _REGEX:
        return _REGEX_SPECIAL.sub(lambda m: "\\" + m[0], text).replace("\n", "\\n").replace("\r", "\\r")
    # JSON's string escapes are valid in every JavaScript literal; ASCII-only output also
    # covers U+2028/U+2029 and lone surrogates.
    escaped = json.dumps(text)[1:-1]
    if literal == _SINGLE:
        return escaped.replace("'", "\\'")
    if literal == _TEMPLATE:
        return escaped.replace("`", "\\`").replace("${", "\\${")
    return escaped
