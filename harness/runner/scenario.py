"""Scenario files (SPEC §6): loading, complete validation, and expansion of sweeps.

A scenario names a bot and a list of cases. Each case field may also sit in ``[defaults]``; a
list given for a sweepable field sweeps, and the case expands into the product of its lists —
one :class:`SubCase` per combination, labelled by its ``variant`` (``"timeout_s=5,key=other"``).

Validation reports every problem at once, each naming the file, the case and the field::

    scenarios/payment.toml: cases[1] (late).delay_s: dist must be one of fixed, uniform, ...
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.bots import DEFAULT_KEY_PATH, TIMEOUT_RANGE, Bot, InvalidBot, is_integer, load_bot, parse_bot, read_document
from .distributions import Delay, DelayError, is_finite_number, number_label, parse_delay
from .thresholds import RATE_METRICS, Threshold, ThresholdError, parse_threshold

__all__ = [
    "KEY_MODES",
    "SIGNATURE_MODES",
    "SWEEPABLE",
    "Expectation",
    "MODES",
    "Party",
    "Retry",
    "SubCase",
    "time_scaled",
    "slower_than_asked",
    "Scenario",
    "InvalidScenario",
    "load_scenario",
    "parse_scenario",
]

KEY_MODES = ("correct", "missing", "empty", "wrong_type", "random", "other")
SIGNATURE_MODES = ("valid", "missing", "wrong", "stale")
SWEEPABLE = ("conversations", "timeout_s", "delay_s", "key", "calls", "call_gap_s", "signature", "arrival_rate")
ENCODINGS = ("json", "form")
MODES = ("virtual", "live")  # in-process virtual time; real time against a live gate (--target)
# What a third party is (SPEC §14.2): a `[[cases.parties]]` table takes these, the rest is the case's.
PARTY_FIELDS = ("block", "timeout_s", "delay_s", "key", "calls", "call_gap_s", "payload", "signature", "retry",
                "encoding", "expect", "thresholds")
PARTY_SWEEPABLE = tuple(name for name in SWEEPABLE if name in PARTY_FIELDS)
CASE_FIELDS = (*SWEEPABLE, "name", "block", "payload", "encoding", "expect", "thresholds", "retry", "parties", "modes")
RETRY_ON = ("non-2xx", "5xx")
MAX_RETRIES = 100
MAX_PARTIES = 20
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
    "modes": list(MODES),
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
class Party:
    """One third party of a sub-case (SPEC §14.2): which block it calls, when, how, and what it expects.

    A case without ``[[cases.parties]]`` has exactly one, made of the case's own fields.
    """

    block: str
    timeout_s: int  # effective: the override, or the block's own
    timeout_overridden: bool
    delay: Delay
    key: str
    calls: int
    call_gap_s: float
    signature: str
    payload: dict[str, Any]
    encoding: str  # "json" or "form" (application/x-www-form-urlencoded)
    expect: Expectation | None
    thresholds: tuple[Threshold, ...]
    retry: Retry | None = None


@dataclass(frozen=True)
class SubCase:
    """One concrete combination of a case's values: what the runner actually drives.

    ``parties`` are the third parties of each conversation (one for a case without
    ``parties``); the properties ``block``, ``timeout_s``, ``delay``, ``key`` and ``expect`` read
    the first party's, which is the whole story for a single-party case.
    """

    case: str
    variant: str
    index: int  # position among all sub-cases of the scenario
    case_index: int  # position of its case in the file; seeds the random stream
    conversations: int
    arrival_rate: float | None
    parties: tuple[Party, ...]
    modes: tuple[str, ...] = MODES
    time_scale: float = 1.0  # drawn delays are multiplied by it (see :func:`time_scaled`)
    # Time-scaled (:func:`time_scaled`): the scaled timeouts of the webhook blocks no party calls,
    # and the factor the bot's early_s windows are multiplied by.
    block_timeouts: tuple[tuple[str, int], ...] = ()
    early_scale: float = 1.0

    @property
    def block(self) -> str:
        return self.parties[0].block

    @property
    def timeout_s(self) -> int:
        return self.parties[0].timeout_s

    @property
    def delay(self) -> Delay:
        return self.parties[0].delay

    @property
    def key(self) -> str:
        return self.parties[0].key

    @property
    def expect(self) -> Expectation | None:
        return self.parties[0].expect

    @property
    def label(self) -> str:
        """``case`` or ``case [variant]``, as a scenario's messages name the sub-case."""
        return self.case + (f" [{self.variant}]" if self.variant else "")

    def timeouts(self) -> tuple[tuple[str, int], ...]:
        """The sorted ``(block, timeout_s)`` overrides this sub-case's bot needs (empty: the bot as written).

        Time-scaled, every webhook block's timeout is one (the parties' own, the others' scaled).
        """
        overrides = dict(self.block_timeouts)
        overrides.update({p.block: p.timeout_s for p in self.parties if p.timeout_overridden})
        return tuple(sorted(overrides.items()))

    def bot_variant(self) -> tuple[tuple[tuple[str, int], ...], float]:
        """What this sub-case changes in the bot: its :meth:`timeouts` and its early_s factor."""
        return self.timeouts(), self.early_scale


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
        elif key == "parties":
            problem("defaults.parties", "parties belong to a case: list them under its [[cases.parties]]")
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
        merged = {**DEFAULTS, **{k: v for k, v in defaults.items() if k in CASE_FIELDS and k != "parties"},
                  **{k: v for k, v in case.items() if k in CASE_FIELDS}}
        subcases.extend(_expand(case_name, position, merged, bot, len(subcases),
                                lambda f, r, w=where: problem(f"{w}.{f}", r),
                                base_dir=base_dir or Path.cwd(), where=f"{source}: {where}",
                                case_sets_block="block" in case))

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
            problem: Any, *, base_dir: Path, where: str, case_sets_block: bool = False) -> list[SubCase]:
    """Validate one case's fields (and its parties') and expand its sweeps into sub-cases.

    ``base_dir`` resolves delay files; ``where`` (``file: cases[i] (name)``) names the case in
    errors a delay function raises when it is drawn, long after loading. A party's field is
    named ``parties[N].field`` when the party sets it; a field it inherits, by the case's name.
    """
    errors: list[str] = []
    reported: set[tuple[str, str]] = set()

    def bad(field_name: str, reason: str) -> None:
        errors.append(field_name)
        if (field_name, reason) not in reported:  # a case field inherited by several parties: said once
            reported.add((field_name, reason))
            problem(field_name, reason)

    def parse_choices(name: str, raw: Any, label: str) -> list[Any]:
        raw_values = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, list) and not raw:
            bad(label, "an empty list sweeps nothing")
            return []
        parsed = []
        for value in raw_values:
            try:
                parsed.append(_parse_field(name, value, base_dir))
            except ValueError as error:
                bad(label, str(error))
        if name == "delay_s":
            parsed = [replace(delay, where=f"{where}.{label}") for delay in parsed]
        return parsed

    modes = _parse_modes(merged["modes"], bad)
    raw_parties = merged.get("parties")
    if raw_parties is None:
        party_tables: list[dict[str, Any]] = [{}]
    elif not isinstance(raw_parties, list) or not raw_parties or not all(isinstance(p, dict) for p in raw_parties):
        bad("parties", "must be one or more [[cases.parties]] tables")
        party_tables = []
    elif len(raw_parties) > MAX_PARTIES:
        bad("parties", f"at most {MAX_PARTIES} parties per case, got {len(raw_parties)}")
        party_tables = []
    else:
        party_tables = raw_parties
        if case_sets_block:
            bad("block", "a case with parties names each party's block in its [[cases.parties]] table, not the case's")
    explicit = raw_parties is not None
    for position, table in enumerate(party_tables):
        for key in table:
            if key not in PARTY_FIELDS:
                bad(f"parties[{position}].{key}", f"unknown party field; use {', '.join(PARTY_FIELDS)}")
        if explicit and "block" not in table:
            bad(f"parties[{position}].block", "required: the webhook block this party calls")

    # Sweep dimensions: the case's sweepable fields (shared by every party that inherits them),
    # then each party's own; a list makes a dimension with more than one value.
    dimensions: list[tuple[str, str, int | None, list[Any]]] = []  # (label, field, party or None, values)
    for name in SWEEPABLE:
        dimensions.append((name, name, None, parse_choices(name, merged[name], name)))
    for position, table in enumerate(party_tables):
        for name in PARTY_SWEEPABLE:
            if name in table:
                own_label = f"parties[{position}].{name}"
                dimensions.append((own_label, name, position, parse_choices(name, table[name], own_label)))

    # The fields that do not sweep, per party: validated once each.
    fixed: list[dict[str, Any]] = []
    for position, table in enumerate(party_tables):

        def label(name: str, position: int = position, table: dict[str, Any] = table) -> str:
            return f"parties[{position}].{name}" if name in table else name

        values: dict[str, Any] = {name: table.get(name, merged.get(name)) for name in PARTY_FIELDS if name not in PARTY_SWEEPABLE}
        if not explicit:
            values["block"] = merged.get("block")
        fixed.append(_party_fixed(values, table, merged, bot, label, bad))

    if errors or bot is None or not party_tables or any(f["block"] is None for f in fixed):
        return []
    for label_text, name, _, choices in dimensions:
        if name == "key" and "other" in choices:
            conversations = dimensions[0][3]  # `conversations` comes first
            if conversations and min(conversations) < 2:
                bad(label_text, "key = \"other\" needs at least 2 conversations (a derangement of the keys)")
                return []

    swept = [d for d in dimensions if isinstance(merged[d[1]] if d[2] is None else party_tables[d[2]][d[1]], list)]
    labels = {id(d): (_distinct_labels(d[3]) if d[1] == "delay_s" else None) for d in swept}
    subcases: list[SubCase] = []
    for combination in itertools.product(*(d[3] for d in dimensions)):
        case_values = {d[1]: value for d, value in zip(dimensions, combination) if d[2] is None}
        own = [{d[1]: value for d, value in zip(dimensions, combination) if d[2] == position}
               for position in range(len(party_tables))]
        variant = ",".join(
            f"{d[0]}={labels[id(d)][id(value)] if labels[id(d)] is not None else number_label(value)}"  # type: ignore[index]
            for d, value in zip(dimensions, combination) if any(d is s for s in swept))
        parties = []
        for position, party_fixed in enumerate(fixed):
            chosen: dict[str, Any] = {name: own[position].get(name, case_values[name]) for name in PARTY_SWEEPABLE}
            block_timeout = bot.blocks[party_fixed["block"]].timeout_s
            timeout = chosen["timeout_s"]
            parties.append(Party(
                block=party_fixed["block"],
                timeout_s=timeout if timeout is not None else block_timeout,
                timeout_overridden=timeout is not None and timeout != block_timeout,
                delay=chosen["delay_s"],
                key=chosen["key"],
                calls=chosen["calls"],
                call_gap_s=float(chosen["call_gap_s"]),
                signature=chosen["signature"],
                payload=party_fixed["payload"],
                encoding=party_fixed["encoding"],
                expect=party_fixed["expect"],
                thresholds=party_fixed["thresholds"],
                retry=party_fixed["retry"],
            ))
        by_block: dict[str, int] = {}
        for party in parties:
            if by_block.setdefault(party.block, party.timeout_s) != party.timeout_s:
                bad("parties", f"two parties call block {party.block!r} with different timeout_s "
                    f"({by_block[party.block]} and {party.timeout_s}): a block has one timeout per sub-case")
                return []
        subcases.append(SubCase(
            case=case_name,
            variant=variant,
            index=first_index + len(subcases),
            case_index=case_index,
            conversations=case_values["conversations"],
            arrival_rate=case_values["arrival_rate"],
            parties=tuple(parties),
            modes=modes,
        ))
    return subcases


def _party_fixed(values: dict[str, Any], table: dict[str, Any], merged: dict[str, Any], bot: Bot | None,
                 label: Any, bad: Any) -> dict[str, Any]:
    """Validate one party's fields that do not sweep (block, payload, encoding, retry, expect,
    thresholds) and the combinations they must agree with (its key and signature modes)."""
    block = values["block"]
    if bot is not None:
        if block is None and "block" not in table:
            block = bot.first_webhook()
            if block is None:
                bad("block", f"bot {bot.id!r} has no webhook block reachable from its start")
        elif not isinstance(block, str) or block not in bot.blocks or bot.blocks[block].type != "webhook":
            bad(label("block"), f"{block!r} is not a webhook block of bot {bot.id!r}")
            block = None
    webhook = bot.blocks[block] if bot is not None and block is not None else None
    payload, encoding = values["payload"], values["encoding"]
    keys = table.get("key", merged["key"])
    keys = keys if isinstance(keys, list) else [keys]
    if encoding not in ENCODINGS:
        bad(label("encoding"), f"must be json or form, got {encoding!r}")
    elif encoding == "form":
        if isinstance(payload, dict) and not all(map(_form_value, payload.values())):
            bad(label("payload"), "with encoding = \"form\", values must be text, numbers, booleans or lists of them")
        if "wrong_type" in keys:
            bad(label("key"), "a form cannot carry a key of the wrong type (form values are text); use encoding = \"json\"")
    if not isinstance(payload, dict):
        bad(label("payload"), "must be a table")
    else:
        key_path = webhook.key_path if webhook is not None else DEFAULT_KEY_PATH
        if (key_path.text in payload) if encoding == "form" else key_path.extract(payload)[0]:
            bad(f"{label('payload')}.{key_path.text}", "is set by the case's `key` mode; leave it out of the payload")
        elif encoding == "json" and not _writable(payload, key_path.steps):
            bad(label("payload"), f"the key cannot be written at {key_path.text}: a value on the way is not a table")
    signatures = table.get("signature", merged["signature"])
    signatures = signatures if isinstance(signatures, list) else [signatures]
    if webhook is not None and webhook.secret and webhook.signature_scheme == "hmac-sha256" and "stale" in signatures:
        bad(label("signature"), "\"stale\" needs a timestamp, and the block's hmac-sha256 scheme has none")
    retry = _parse_retry(values["retry"], lambda f, r: bad(label("retry") + f[len("retry"):], r))
    expect = _parse_expect(values["expect"], lambda f, r: bad(label("expect") + f[len("expect"):], r))
    thresholds: list[Threshold] = []
    raw_thresholds = values["thresholds"]
    if not isinstance(raw_thresholds, list):
        bad(label("thresholds"), "must be a list of strings like \"success_rate >= 0.99\"")
    else:
        for text in raw_thresholds:
            try:
                thresholds.append(parse_threshold(text))
            except ThresholdError as error:
                bad(label("thresholds"), str(error))
    return {"block": block, "payload": payload, "encoding": encoding, "retry": retry, "expect": expect,
            "thresholds": tuple(thresholds)}


def _parse_modes(raw: Any, bad: Any) -> tuple[str, ...]:
    """``modes = ["virtual"]`` / ``["live"]`` / both (the default): where the case runs (SPEC §16.4)."""
    if (not isinstance(raw, list) or not raw or not all(isinstance(m, str) and m in MODES for m in raw)
            or len(set(raw)) != len(raw)):
        bad("modes", f"must be a non-empty list of distinct modes out of {', '.join(MODES)}, got {raw!r}")
        return MODES
    return tuple(mode for mode in MODES if mode in raw)


def time_scaled(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every duration multiplied by about ``factor`` — delays, call gaps, retry
    delays, arrival intervals, webhook timeouts, ``early_s`` windows and the limits of thresholds
    on ``waited_s``/``delay_s`` — so a live run of a long suite takes a fraction of its time while
    each case keeps its meaning (a late call stays late, a call at the deadline stays at it).

    Timeouts are whole seconds from 1 to 300 (SPEC §1), so each sub-case runs at the factor
    nearest ``factor`` that keeps all its timeouts whole: a multiple of 1 / (their greatest common
    divisor), at least one. With timeouts 30 and 120 at 0.05 that is 2/30 (30 → 2 s, 120 → 8 s);
    a 10 s timeout at 0.05 runs at 0.1 (1 s), and timeouts 7 and 60 are not scaled at all: slower
    than asked, but never out of proportion. A scale that would make a timeout longer than 300 s
    is refused, naming the case.
    """
    if not is_finite_number(factor) or factor <= 0:
        raise InvalidScenario([f"{scenario.source}: time scale must be a positive number, got {factor!r}"])
    if factor == 1:
        return scenario
    problems: list[str] = []
    holds_early = any(scenario.bot.blocks[block].early_s > 0 for block in scenario.bot.webhook_blocks())

    def scaled_subcase(subcase: SubCase) -> SubCase:
        called = {party.block for party in subcase.parties}
        others = {block: scenario.bot.blocks[block].timeout_s for block in scenario.bot.webhook_blocks()
                  if block not in called}
        timeouts = [party.timeout_s for party in subcase.parties] + list(others.values())
        unit = functools.reduce(math.gcd, timeouts)  # seconds: every timeout is a whole number of these
        steps = max(1, round(factor * unit))
        exact = steps / unit

        def scaled_timeout(timeout: int) -> int:
            return timeout * steps // unit  # exact: unit divides every timeout

        if scaled_timeout(max(timeouts)) > max(TIMEOUT_RANGE):
            problems.append(f"{scenario.source}: case {subcase.label}: time scale {factor:g} makes a timeout longer than "
                            f"{max(TIMEOUT_RANGE)} s ({max(timeouts)} s × {exact:g}); choose a smaller scale")
            return subcase

        def scaled_threshold(threshold: Threshold) -> Threshold:
            if threshold.metric in RATE_METRICS:
                return threshold
            return replace(threshold, limit=threshold.limit * exact,
                           text=f"{threshold.metric} {threshold.op} {number_label(threshold.limit * exact)}")

        def scaled_party(party: Party) -> Party:
            timeout = scaled_timeout(party.timeout_s)
            return replace(
                party, timeout_s=timeout, timeout_overridden=timeout != scenario.bot.blocks[party.block].timeout_s,
                call_gap_s=party.call_gap_s * exact,
                retry=None if party.retry is None else replace(party.retry, delays_s=tuple(d * exact for d in party.retry.delays_s)),
                thresholds=tuple(map(scaled_threshold, party.thresholds)))

        return replace(subcase, parties=tuple(map(scaled_party, subcase.parties)),
                       arrival_rate=None if subcase.arrival_rate is None else subcase.arrival_rate / exact,
                       time_scale=subcase.time_scale * exact,
                       early_scale=subcase.early_scale * exact if holds_early else subcase.early_scale,
                       block_timeouts=tuple(sorted((block, scaled_timeout(timeout)) for block, timeout in others.items()
                                                   if scaled_timeout(timeout) != timeout)))

    subcases = [scaled_subcase(subcase) for subcase in scenario.subcases]
    if problems:
        raise InvalidScenario(problems)
    return replace(scenario, subcases=subcases)


def slower_than_asked(scaled: Scenario, factor: float) -> list[str]:
    """Notes on the sub-cases of a :func:`time_scaled` scenario that run at 1.5× the asked factor
    or more, as their whole-second timeouts cannot shrink further (a 1 s timeout never does)."""
    notes = []
    for subcase in scaled.subcases:
        if subcase.time_scale >= 1.5 * factor:
            name = f"{scaled.name}/{subcase.label}"
            timeouts = sorted({party.timeout_s for party in subcase.parties})
            notes.append(f"{name}: runs at time scale {subcase.time_scale:.3g}, not {factor:g}: its timeouts "
                         f"({', '.join(map(str, timeouts))} s after scaling) are whole seconds")
    return notes


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
