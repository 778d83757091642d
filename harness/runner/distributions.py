"""Callback delays: a number, ``"never"``, or a distribution table (SPEC §6).

Every draw comes from the :class:`numpy.random.Generator` the runner seeds per sub-case, so the
same seed gives the same delays, row for row. ``never`` is drawn as NaN.

>>> import numpy as np
>>> delay = parse_delay({"dist": "uniform", "low": 0, "high": 50})
>>> delay.label
'uniform(low=0,high=50)'
>>> bool((delay.sample(np.random.default_rng(7), 3) <= 50).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Delay", "DelayError", "parse_delay", "is_finite_number", "number_label"]

# dist -> parameters it needs
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("median", "sigma"),
    "normal": ("mean", "sd"),
    "choice": ("values",),
}


class DelayError(ValueError):
    """A delay that does not parse; the message names the parameter and the reason."""


def is_finite_number(value: Any) -> bool:
    """An int or float, not a bool, not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


@dataclass(frozen=True)
class Delay:
    dist: str  # one of _PARAMETERS, or "never"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if self.dist == "never":
            return "never"
        if self.dist == "fixed":
            return number_label(dict(self.params)["value"])
        inner = ",".join(f"{name}={number_label(value)}" for name, value in self.params)
        return f"{self.dist}({inner})"

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` delays in seconds (float64; NaN for ``never``), never negative."""
        p = dict(self.params)
        if self.dist == "never":
            return np.full(size, np.nan)
        if self.dist == "fixed":
            return np.full(size, float(p["value"]))
        if self.dist == "uniform":
            return rng.uniform(p["low"], p["high"], size)
        if self.dist == "exponential":
            return rng.exponential(p["mean"], size)
        if self.dist == "lognormal":
            return rng.lognormal(np.log(p["median"]), p["sigma"], size)
        if self.dist == "normal":
            return np.clip(rng.normal(p["mean"], p["sd"], size), 0.0, None)
        values = np.asarray(p["values"], dtype=float)
        weights = p.get("weights")
        probabilities = None if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))
        return rng.choice(values, size=size, p=probabilities)


def number_label(value: Any) -> str:
    """Short text for a number (or list of numbers) in variant labels: ``30``, ``0.5``, ``[1;2]``."""
    if isinstance(value, list):
        return "[" + ";".join(number_label(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_delay(raw: Any) -> Delay:
    """Parse one delay (not a sweep list). Raise :class:`DelayError`."""
    if raw == "never":
        return Delay("never")
    if is_finite_number(raw):
        if raw < 0:
            raise DelayError(f"must not be negative, got {raw}")
        return Delay("fixed", (("value", raw),))
    if not isinstance(raw, dict):
        raise DelayError(f"must be a number of seconds, \"never\", or a table with dist = ...; got {raw!r}")
    dist = raw.get("dist")
    if dist not in _PARAMETERS:
        raise DelayError(f"dist must be one of {', '.join(_PARAMETERS)}; got {dist!r}")
    needed = _PARAMETERS[dist]
    allowed = {"dist", *needed, *(("weights",) if dist == "choice" else ())}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise DelayError(f"unknown parameter(s) {', '.join(unknown)} for dist {dist!r}")
    missing = [name for name in needed if name not in raw]
    if missing:
        raise DelayError(f"dist {dist!r} needs {', '.join(missing)}")
    if dist == "choice":
        _check_choice(raw)
    else:
        for name in needed:
            if not is_finite_number(raw[name]):
                raise DelayError(f"{name} must be a number, got {raw[name]!r}")
        _check_ranges(dist, raw)
    params = tuple((name, raw[name]) for name in (*needed, "weights") if name in raw)
    return Delay(dist, params)


def _check_ranges(dist: str, raw: dict[str, Any]) -> None:
    if dist == "fixed" and raw["value"] < 0:
        raise DelayError("value must not be negative")
    if dist == "uniform" and not 0 <= raw["low"] <= raw["high"]:
        raise DelayError("needs 0 <= low <= high")
    if dist == "exponential" and raw["mean"] <= 0:
        raise DelayError("mean must be positive")
    if dist == "lognormal" and (raw["median"] <= 0 or raw["sigma"] < 0):
        raise DelayError("needs median > 0 and sigma >= 0")
    if dist == "normal" and raw["sd"] < 0:
        raise DelayError("sd must not be negative")


def _check_choice(raw: dict[str, Any]) -> None:
    values = raw["values"]
    if not isinstance(values, list) or not values or not all(is_finite_number(v) and v >= 0 for v in values):
        raise DelayError("values must be a non-empty list of non-negative numbers")
    weights = raw.get("weights")
    if weights is None:
        return
    if not isinstance(weights, list) or len(weights) != len(values):
        raise DelayError("weights must be a list as long as values")
    if not all(is_finite_number(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise DelayError("weights must be non-negative numbers with a positive sum")
