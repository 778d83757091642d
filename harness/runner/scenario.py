"""Scenario files (SPEC §6): loading, complete validation, and expansion of sweeps.

A scenario names a bot and a list of cases. Each case field may also sit in ``[defaults]``; a
list given for a sweepable field sweeps, and the case expands into the product of its lists —
one :class:`SubCase` per combination, labelled by its ``variant`` (``"timeout_s=5,key=other"``).

Validation reports every problem at once, each naming the file, the case and the field::

    scenarios/payment.toml: cases[1] (late).delay_s: dist must be one of fixed, uniform, ...
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.bots import DEFAULT_KEY_PATH, TIMEOUT_RANGE, Bot, InvalidBot, is_integer, load_bot, parse_bot, read_document
from .distributions import Delay, DelayError, is_finite_number, number_label, parse_delay
from .thresholds import Threshold, ThresholdError, parse_threshold

__all__ = [
    "KEY_MODES",
    "SIGNATURE_MODES",
    "SWEEPABLE",
    "Expectation",
    "Retry",
    "SubCase",
    "Scenario",
    "InvalidScenario",
    "load_scenario",
    "parse_scenario",
]

KEY_MODES = ("correct", "missing", "empty", "wrong_type", "random", "other")
SIGNATURE_MODES = ("valid", "missing", "wrong", "stale")
SWEEPABLE = ("conversations", "timeout_s", "delay_s", "key", "calls", "call_gap_s", "signature", "arrival_rate")
ENCODINGS = ("json", "form")
CASE_FIELDS = (*SWEEPABLE, "name", "block", "payload", "encoding", "expect", "thresholds", "retry")
RETRY_ON = ("non-2xx", "5xx")
MAX_RETRIES = 100
DEFAULTS: dict[str, Any] = {
    "conversations": 100,
    "timeout_s": None,  # the block's own timeout
    "delay_s": 0,
    "key": "correct",
    "calls": 1,
    "call_gap_s": 0,
    "signature": "valid",
    "arrival_rate": None,  # all at once
    "payload": {},
    "encoding": "json",
    "expect": None,
    "thresholds": [],
    "retry": None,
}
MAX_CONVERSATIONS = 1_000_000
MAX_CALLS = 1000


class InvalidScenario(ValueError):
    """Every problem found in a scenario file, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Expectation:
    outcome: str | None = None
    status: int | None = None
    variables: dict[str, Any] | None = None


@dataclass(frozen=True)
class Retry:
    """A third party's retry policy (SPEC §8.4): after an answer that matches ``on``, call again
    after each delay in turn, each counted from the previous attempt's answer, until a 2xx.

    >>> Retry((5.0, 30.0), "5xx").matches(503), Retry((5.0,), (409, 410)).matches(404)
    (True, False)
    """

    delays_s: tuple[float, ...]
    on: str | tuple[int, ...] = "non-2xx"

    def matches(self, status: int) -> bool:
        if self.on == "non-2xx":
            return not 200 <= status < 300
        if self.on == "5xx":
            return 500 <= status < 600
        return status in self.on


@dataclass(frozen=True)
class SubCase:
    """One concrete combination of a case's values: what the runner actually drives."""

    case: str
    variant: str
    index: int  # position among all sub-cases of the scenario
    case_index: int  # position of its case in the file; seeds the random stream
    block: str
    conversations: int
    timeout_s: int  # effective: the override, or the block's own
    timeout_overridden: bool
    delay: Delay
    key: str
    calls: int
    call_gap_s: float
    signature: str
    arrival_rate: float | None
    payload: dict[str, Any]
    encoding: str  # "json" or "form" (application/x-www-form-urlencoded)
    expect: Expectation | None
    thresholds: tuple[Threshold, ...]
    retry: Retry | None = None


@dataclass
class Scenario:
    name: str
    bot: Bot
    seed: int
    subcases: list[SubCase] = field(default_factory=list)
    source: str = "<scenario>"


def load_scenario(path: str | Path, *, seed: int | None = None) -> Scenario:
    """Load, validate and expand a scenario file. Raises :class:`InvalidScenario`."""
    path = Path(path)
    try:
        document = read_document(path)
    except ValueError as error:
        raise InvalidScenario([str(error)]) from None
    return parse_scenario(document, base_dir=path.parent, source=str(path), seed=seed)


def parse_scenario(document: Any, *, base_dir: Path | None = None, source: str = "<scenario>",
                   seed: int | None = None) -> Scenario:
    """Validate and expand a scenario document; ``bot`` may be a path or an inline bot table."""
    problems: list[str] = []

    def problem(where: str, reason: str) -> None:
        problems.append(f"{source}: {where}: {reason}")

    if not isinstance(document, dict):
        raise InvalidScenario([f"{source}: must be a table"])
    for key in document:
        if key not in ("name", "bot", "seed", "defaults", "cases"):
            problem(key, "unknown field")
    name = document.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        problem("name", "must be a non-empty string")
    file_seed = document.get("seed", 0)
    if not isinstance(file_seed, int) or isinstance(file_seed, bool) or file_seed < 0:
        problem("seed", "must be a non-negative integer")
        file_seed = 0
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        problem("seed (given to the run)", f"must be a non-negative integer, got {seed!r}")
    bot = _load_scenario_bot(document.get("bot"), base_dir or Path.cwd(), problem)

    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        problem("defaults", "must be a table")
        defaults = {}
    for key in defaults:
        if key not in CASE_FIELDS or key == "name":
            problem(f"defaults.{key}", "unknown case field")
    cases = document.get("cases")
    if not isinstance(cases, list) or not cases or not all(isinstance(c, dict) for c in cases):
        problem("cases", "needs at least one [[cases]] table")
        cases = []

    subcases: list[SubCase] = []
    seen_names: set[str] = set()
    for position, case in enumerate(cases):
        case_name = case.get("name", f"case{position + 1}")
        where = f"cases[{position}] ({case_name})"
        if not isinstance(case_name, str) or not case_name:
            problem(f"cases[{position}].name", "must be a non-empty string")
            continue
        if case_name in seen_names:
            problem(f"{where}.name", "another case has this name")
        seen_names.add(case_name)
        for key in case:
            if key not in CASE_FIELDS:
                problem(f"{where}.{key}", "unknown case field")
        merged = {**DEFAULTS, **{k: v for k, v in defaults.items() if k in CASE_FIELDS},
                  **{k: v for k, v in case.items() if k in CASE_FIELDS}}
        subcases.extend(_expand(case_name, position, merged, bot, len(subcases),
                                lambda f, r, w=where: problem(f"{w}.{f}", r),
                                base_dir=base_dir or Path.cwd(), where=f"{source}: {where}"))

    if problems:
        raise InvalidScenario(problems)
    assert bot is not None and isinstance(name, str)
    return Scenario(name=name, bot=bot, seed=file_seed if seed is None else seed, subcases=subcases, source=source)


def _load_scenario_bot(raw: Any, base_dir: Path, problem: Any) -> Bot | None:
    try:
        if isinstance(raw, str):
            return load_bot((base_dir / raw) if not Path(raw).is_absolute() else Path(raw))
        if isinstance(raw, dict):
            return parse_bot(raw, source="inline bot")
        problem("bot", "required: a path to a bot file (relative to the scenario) or an inline bot table")
    except InvalidBot as error:
        for bot_problem in error.problems:
            problem(f"bot ({error.source})", str(bot_problem))
    return None


def _expand(case_name: str, case_index: int, merged: dict[str, Any], bot: Bot | None, first_index: int,
            problem: Any, *, base_dir: Path, where: str) -> list[SubCase]:
    """Validate one case's fields and expand its sweeps into sub-cases.

    ``base_dir`` resolves delay files; ``where`` (``file: cases[i] (name)``) names the case in
    errors a delay function raises when it is drawn, long after loading.
    """
    errors: list[str] = []

    def bad(field_name: str, reason: str) -> None:
        errors.append(field_name)
        problem(field_name, reason)

    choices: dict[str, list[Any]] = {}
    for name in SWEEPABLE:
        raw = merged[name]
        raw_values = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, list) and not raw:
            bad(name, "an empty list sweeps nothing")
            continue
        parsed = []
        for value in raw_values:
            try:
                parsed.append(_parse_field(name, value, base_dir))
            except ValueError as error:
                bad(name, str(error))
        choices[name] = parsed
    choices["delay_s"] = [replace(delay, where=f"{where}.delay_s") for delay in choices.get("delay_s", [])]
    delay_labels = _distinct_labels(choices["delay_s"])

    block = merged.get("block")
    if bot is not None:
        if block is None:
            block = bot.first_webhook()
            if block is None:
                bad("block", f"bot {bot.id!r} has no webhook block reachable from its start")
        elif not isinstance(block, str) or block not in bot.blocks or bot.blocks[block].type != "webhook":
            bad("block", f"{block!r} is not a webhook block of bot {bot.id!r}")
    webhook = (bot.blocks[block] if bot is not None and isinstance(block, str) and block in bot.blocks
               and bot.blocks[block].type == "webhook" else None)
    payload = merged["payload"]
    encoding = merged["encoding"]
    if encoding not in ENCODINGS:
        bad("encoding", f"must be json or form, got {encoding!r}")
    elif encoding == "form":
        if isinstance(payload, dict) and not all(map(_form_value, payload.values())):
            bad("payload", "with encoding = \"form\", values must be text, numbers, booleans or lists of them")
        if "wrong_type" in (merged["key"] if isinstance(merged["key"], list) else [merged["key"]]):
            bad("key", "a form cannot carry a key of the wrong type (form values are text); use encoding = \"json\"")
    if not isinstance(payload, dict):
        bad("payload", "must be a table")
    else:
        key_path = webhook.key_path if webhook is not None else DEFAULT_KEY_PATH
        if (key_path.text in payload) if encoding == "form" else key_path.extract(payload)[0]:
            bad(f"payload.{key_path.text}", "is set by the case's `key` mode; "
                "leave it out of the payload")
        elif encoding == "json" and not _writable(payload, key_path.steps):
            bad("payload", f"the key cannot be written at {key_path.text}: a value on the way is not a table")
    signatures = merged["signature"] if isinstance(merged["signature"], list) else [merged["signature"]]
    if webhook is not None and webhook.secret and webhook.signature_scheme == "hmac-sha256" and "stale" in signatures:
        bad("signature", "\"stale\" needs a timestamp, and the block's hmac-sha256 scheme has none")
    retry = _parse_retry(merged["retry"], bad)
    expect = _parse_expect(merged["expect"], bad)
    thresholds: list[Threshold] = []
    raw_thresholds = merged["thresholds"]
    if not isinstance(raw_thresholds, list):
        bad("thresholds", "must be a list of strings like \"success_rate >= 0.99\"")
    else:
        for text in raw_thresholds:
            try:
                thresholds.append(parse_threshold(text))
            except ThresholdError as error:
                bad("thresholds", str(error))

    if errors or bot is None or block is None:
        return []
    if "other" in choices["key"] and min(choices["conversations"]) < 2:
        bad("key", "key = \"other\" needs at least 2 conversations (a derangement of the keys)")
        return []

    swept = [name for name in SWEEPABLE if isinstance(merged[name], list)]
    block_timeout = bot.blocks[block].timeout_s
    subcases: list[SubCase] = []
    for combination in itertools.product(*(choices[name] for name in SWEEPABLE)):
        values = dict(zip(SWEEPABLE, combination))
        variant = ",".join(f"{name}={delay_labels[id(values[name])] if name == 'delay_s' else number_label(values[name])}"
                           for name in swept)
        timeout = values["timeout_s"]
        subcases.append(
            SubCase(
                case=case_name,
                variant=variant,
                index=first_index + len(subcases),
                case_index=case_index,
                block=block,
                conversations=values["conversations"],
                timeout_s=timeout if timeout is not None else block_timeout,
                timeout_overridden=timeout is not None and timeout != block_timeout,
                delay=values["delay_s"],
                key=values["key"],
                calls=values["calls"],
                call_gap_s=float(values["call_gap_s"]),
                signature=values["signature"],
                arrival_rate=values["arrival_rate"],
                payload=payload,
                encoding=encoding,
                expect=expect,
                thresholds=tuple(thresholds),
                retry=retry,
            )
        )
    return subcases


def _writable(payload: dict[str, Any], steps: tuple[str | int, ...]) -> bool:
    """True when the runner can write a value at ``steps`` (creating tables on the way)."""
    value: Any = payload
    for step in steps[:-1]:
        if isinstance(step, int) or not isinstance(value, dict):
            return isinstance(step, int) and isinstance(value, list) and step < len(value)
        if step not in value:
            return True
        value = value[step]
    return isinstance(value, dict) or (isinstance(value, list) and isinstance(steps[-1], int))


def _parse_retry(raw: Any, bad: Any) -> Retry | None:
    """``retry = { delays_s = [5, 30, 120], on = "non-2xx" }``; ``on`` may be a list of statuses."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        bad("retry", "must be a table like { delays_s = [5, 30, 120], on = \"non-2xx\" }")
        return None
    for key in raw:
        if key not in ("delays_s", "on"):
            bad(f"retry.{key}", "unknown field; use delays_s and on")
    delays = raw.get("delays_s")
    ok = True
    if (not isinstance(delays, list) or not delays or len(delays) > MAX_RETRIES
            or not all(is_finite_number(d) and d >= 0 for d in delays)):
        bad("retry.delays_s", f"must be a list of 1 to {MAX_RETRIES} non-negative numbers of seconds, got {delays!r}")
        ok = False
    on = raw.get("on", "non-2xx")
    if isinstance(on, list):
        if not on or not all(is_integer(s) and 100 <= s <= 599 and not 200 <= s < 300 for s in on):
            bad("retry.on", f"a list of statuses must hold HTTP statuses outside 2xx (a 2xx ends the retries), got {on!r}")
            ok = False
        on = tuple(on)
    elif on not in RETRY_ON:
        bad("retry.on", f"must be \"non-2xx\", \"5xx\" or a list of statuses, got {on!r}")
        ok = False
    if not ok or not isinstance(delays, list):
        return None
    return Retry(tuple(float(d) for d in delays), on)



def _distinct_labels(delays: list[Delay]) -> dict[int, str]:
    """Variant labels for a sweep's delays, by ``id``: short (``mixture(2)``) when those differ,
    else the detailed ones (weights and components), else numbered (``callable(<lambda>)#2``)."""
    for labels in ([d.label for d in delays], [d.detail for d in delays]):
        if len(set(labels)) == len(labels):
            return {id(d): label for d, label in zip(delays, labels)}
    return {id(d): f"{d.detail}#{position + 1}" for position, d in enumerate(delays)}


def _form_value(value: Any) -> bool:
    scalar = (str, int, float, bool)
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def _parse_field(name: str, value: Any, base_dir: Path) -> Any:
    """Validate one (non-list) value of a sweepable field; raise ValueError with the reason."""
    if name == "conversations":
        if not is_integer(value) or not 1 <= value <= MAX_CONVERSATIONS:
            raise ValueError(f"must be an integer from 1 to {MAX_CONVERSATIONS}, got {value!r}")
    elif name == "timeout_s":
        if value is not None and (not is_integer(value) or value not in TIMEOUT_RANGE):
            raise ValueError(f"must be an integer from 1 to 300, got {value!r}")
    elif name == "delay_s":
        try:
            return parse_delay(value, base_dir=base_dir)
        except DelayError as error:
            raise ValueError(str(error)) from None
    elif name == "key":
        if value not in KEY_MODES:
            raise ValueError(f"must be one of {', '.join(KEY_MODES)}, got {value!r}")
    elif name == "calls":
        if not is_integer(value) or not 1 <= value <= MAX_CALLS:
            raise ValueError(f"must be an integer from 1 to {MAX_CALLS}, got {value!r}")
    elif name == "call_gap_s":
        if not is_finite_number(value) or value < 0:
            raise ValueError(f"must be a non-negative number of seconds, got {value!r}")
    elif name == "signature":
        if value not in SIGNATURE_MODES:
            raise ValueError(f"must be one of {', '.join(SIGNATURE_MODES)}, got {value!r}")
    elif name == "arrival_rate" and value is not None and (not is_finite_number(value) or value <= 0):
        raise ValueError(f"must be a positive number of conversations per second, got {value!r}")
    return value


def _parse_expect(raw: Any, bad: Any) -> Expectation | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        bad("expect", "must be a table with outcome, status and/or variables")
        return None
    for key in raw:
        if key not in ("outcome", "status", "variables"):
            bad(f"expect.{key}", "unknown field; use outcome, status, variables")
    outcome, status, variables = raw.get("outcome"), raw.get("status"), raw.get("variables")
    if outcome is not None and outcome not in ("success", "failure"):
        bad("expect.outcome", f"must be success or failure, got {outcome!r}")
    if status is not None and (not is_integer(status) or not 100 <= status <= 599):
        bad("expect.status", f"must be an HTTP status code, got {status!r}")
    if variables is not None and not isinstance(variables, dict):
        bad("expect.variables", "must be a table of variable = value")
    return Expectation(outcome=outcome, status=status, variables=variables)
