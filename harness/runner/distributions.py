"""Callback delays: a number, ``"never"``, a distribution table, or a function (SPEC §6, §9).

Every draw comes from the :class:`numpy.random.Generator` the runner seeds per sub-case, so the
same seed gives the same delays, bit for bit. ``never`` is drawn as NaN. ``Delay.sample(rng, n)``
is the single entry point: a process that runs only some of a case's conversations draws all
``n`` and keeps its slice, so every conversation gets the delay one process would give it.

>>> import numpy as np
>>> delay = parse_delay({"dist": "uniform", "low": 0, "high": 50})
>>> delay.label
'uniform(low=0,high=50)'
>>> bool((delay.sample(np.random.default_rng(7), 3) <= 50).all())
True

Beyond the parametric families:

- ``{dist = "empirical", values = [...]}`` or ``{dist = "empirical", file = "delays.csv",
  column = "delay_s"}`` draws observed delays with replacement (an empty cell or NaN: the call
  never comes). The file is read once, when the scenario loads.
- ``{dist = "mixture", components = [{weight = 0.97, dist = "lognormal", ...}, {weight = 0.03,
  dist = "never"}]}`` picks a component per draw by weight.
- In a Python dict, a callable ``f(rng, size) -> array of seconds (NaN = never)``.

>>> mixture = parse_delay({"dist": "mixture", "components": [
...     {"weight": 0.9, "dist": "fixed", "value": 10}, {"weight": 0.1, "dist": "never"}]})
>>> mixture.label, mixture.detail
('mixture(2)', 'mixture(0.9*10;0.1*never)')
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy, pandas and cloudpickle load when a delay is drawn or read: `harness validate` stays light
    import numpy as np

__all__ = [
    "DISTS",
    "Delay",
    "DelayError",
    "DelayFunction",
    "parse_delay",
    "read_delay_file",
    "is_finite_number",
    "number_label",
]

# Parametric dist -> parameters it needs.
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("median", "sigma"),
    "normal": ("mean", "sd"),
    "gamma": ("shape", "scale"),  # mean = shape * scale, as scipy.stats.gamma(a=shape, scale=scale)
    "weibull": ("shape", "scale"),  # as scipy.stats.weibull_min(c=shape, scale=scale)
    "choice": ("values",),
}
DISTS = (*_PARAMETERS, "empirical", "mixture", "never")
DELAY_FILE_SUFFIXES = (".csv", ".parquet")
# Inline value lists longer than this are labelled by their size, not their values.
_SHORT_LIST = 5

DelayFunction = Callable[["np.random.Generator", int], Any]
"""``f(rng, size)`` → ``size`` delays in seconds (NaN: the call never comes)."""


class DelayError(ValueError):
    """A delay that does not parse or draw; the message names the parameter and the reason."""


def is_finite_number(value: Any) -> bool:
    """An int or float, not a bool, not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int) or math.isfinite(value))


@dataclass(frozen=True)
class Delay:
    """One parsed delay model. Build it with :func:`parse_delay`; draw with :meth:`sample`.

    ``dist`` is one of :data:`DISTS` or ``"callable"``; ``params`` its validated parameters
    (for ``empirical``, the observations as a tuple of floats; for ``mixture``, the component
    weights and :class:`Delay` s). ``where`` says where the delay was written (set by the
    scenario loader), so a callable that returns nonsense at draw time is named with its case.
    """

    dist: str
    params: tuple[tuple[str, Any], ...] = ()
    where: str = field(default="delay_s", compare=False)

    def __reduce__(self) -> tuple[Any, ...]:
        # Sub-cases travel to worker processes pickled. A function defined in a notebook or a
        # `python -c` script lives in a __main__ the workers cannot import, so it goes by value.
        if self.dist == "callable":
            import cloudpickle

            return _unpickle_callable, (cloudpickle.dumps(dict(self.params)["function"]), self.where)
        return Delay, (self.dist, self.params, self.where)

    @property
    def label(self) -> str:
        """Short text for variant labels: ``30``, ``never``, ``lognormal(median=20,sigma=1)``,
        ``empirical(delays.csv:delay_s)``, ``mixture(2)``, ``callable(my_delays)``."""
        p = dict(self.params)
        if self.dist == "mixture":
            return f"mixture({len(p['components'])})"
        if self.dist == "empirical":
            if "file" in p:
                return f"empirical({p['file']}:{p['column']})"
            values = p["values"]
            if len(values) <= _SHORT_LIST:
                return f"empirical({number_label(list(values))})"
            return f"empirical(n={len(values)})"
        return self.detail

    @property
    def detail(self) -> str:
        """Like :attr:`label`, but a mixture spells out its weights and components."""
        p = dict(self.params)
        if self.dist == "never":
            return "never"
        if self.dist == "fixed":
            return number_label(p["value"])
        if self.dist == "callable":
            return f"callable({_function_name(p['function'])})"
        if self.dist == "mixture":
            parts = [f"{number_label(w)}*{c.detail}" for w, c in zip(p["weights"], p["components"])]
            return f"mixture({';'.join(parts)})"
        if self.dist == "empirical":
            return self.label
        inner = ",".join(f"{name}={number_label(value)}" for name, value in self.params)
        return f"{self.dist}({inner})"

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` delays in seconds (float64; NaN for never), never negative.

        Deterministic in ``rng``'s state and ``size``; the draws for conversation ``i`` are
        element ``i``, so a shard of conversations takes a slice of the whole draw.
        """
        import numpy as np

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
        if self.dist == "gamma":
            return rng.gamma(p["shape"], p["scale"], size)
        if self.dist == "weibull":
            return p["scale"] * rng.weibull(p["shape"], size)
        if self.dist == "choice":
            weights = p.get("weights")
            probabilities = None if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))
            return rng.choice(np.asarray(p["values"], dtype=float), size=size, p=probabilities)
        if self.dist == "empirical":
            return rng.choice(np.asarray(p["values"], dtype=float), size=size)
        if self.dist == "mixture":
            return self._sample_mixture(rng, size, p["weights"], p["components"])
        return self._sample_callable(rng, size, p["function"])

    @staticmethod
    def _sample_mixture(rng: np.random.Generator, size: int, weights: tuple[float, ...],
                        components: tuple[Delay, ...]) -> np.ndarray:
        import numpy as np

        probabilities = np.asarray(weights, dtype=float) / float(np.sum(weights))
        which = rng.choice(len(components), size=size, p=probabilities)
        delays = np.empty(size)
        # Each component draws all `size` values, whatever the picks: the stream consumed does
        # not depend on which component won where, so changing a weight keeps the other draws.
        for index, component in enumerate(components):
            draws = component.sample(rng, size)
            chosen = which == index
            delays[chosen] = draws[chosen]
        return delays

    def _sample_callable(self, rng: np.random.Generator, size: int, function: DelayFunction) -> np.ndarray:
        import numpy as np

        name = f"{self.where}: callable {_function_name(function)}"
        try:
            raw = function(rng, size)
        except Exception as error:
            raise DelayError(f"{name} raised {type(error).__name__}: {error}") from error
        values = np.asarray(raw)
        if values.dtype.kind not in "iuf":
            raise DelayError(f"{name} must return numbers (seconds; NaN = never), got an array of {values.dtype}")
        if values.shape != (size,):
            raise DelayError(f"{name} must return {size} delays (one per conversation), got shape {values.shape}")
        values = values.astype(float)
        _check_observations(values, lambda i: f"{name}, index {i} of its result")
        return values


def _unpickle_callable(function: bytes, where: str) -> Delay:
    import cloudpickle

    return Delay("callable", (("function", cloudpickle.loads(function)),), where)


def _function_name(function: Any) -> str:
    return str(getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or type(function).__name__)


def number_label(value: Any) -> str:
    """Short text for a number (or list of numbers) in variant labels: ``30``, ``0.5``, ``[1;2]``."""
    if isinstance(value, (list, tuple)):
        return "[" + ";".join(number_label(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_delay(raw: Any, *, base_dir: Path | None = None) -> Delay:
    """Parse one delay (not a sweep list); ``file`` paths are relative to ``base_dir``.

    Raise :class:`DelayError` naming the parameter (and, inside a mixture, the component).
    """
    if raw == "never":
        return Delay("never")
    if callable(raw):
        return Delay("callable", (("function", raw),))
    if is_finite_number(raw):
        if raw < 0:
            raise DelayError(f"must not be negative, got {raw}")
        return Delay("fixed", (("value", raw),))
    if not isinstance(raw, dict):
        raise DelayError(f"must be a number of seconds, \"never\", or a table with dist = ...; got {raw!r}")
    dist = raw.get("dist")
    if dist not in DISTS:
        raise DelayError(f"dist must be one of {', '.join(DISTS)}; got {dist!r}")
    if dist == "never":
        _check_keys(raw, {"dist"}, dist)
        return Delay("never")
    if dist == "empirical":
        return _parse_empirical(raw, base_dir or Path.cwd())
    if dist == "mixture":
        return _parse_mixture(raw, base_dir)
    needed = _PARAMETERS[dist]
    _check_keys(raw, {"dist", *needed, *(("weights",) if dist == "choice" else ())}, dist)
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


def _check_keys(raw: dict[str, Any], allowed: set[str], dist: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise DelayError(f"unknown parameter(s) {', '.join(unknown)} for dist {dist!r}")


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
    if dist in ("gamma", "weibull") and (raw["shape"] <= 0 or raw["scale"] <= 0):
        raise DelayError("needs shape > 0 and scale > 0")


def _check_choice(raw: dict[str, Any]) -> None:
    values = raw["values"]
    if not isinstance(values, list) or not values or not all(is_finite_number(v) and v >= 0 for v in values):
        raise DelayError("values must be a non-empty list of non-negative numbers")
    _check_weights(raw.get("weights"), len(values), "values")


def _check_weights(weights: Any, count: int, of: str) -> None:
    if weights is None:
        return
    if not isinstance(weights, list) or len(weights) != count:
        raise DelayError(f"weights must be a list as long as {of}")
    if not all(is_finite_number(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise DelayError("weights must be non-negative numbers with a positive sum")


def _parse_mixture(raw: dict[str, Any], base_dir: Path | None) -> Delay:
    _check_keys(raw, {"dist", "components"}, "mixture")
    components = raw.get("components")
    if not isinstance(components, list) or not components or not all(isinstance(c, dict) for c in components):
        raise DelayError("dist 'mixture' needs components = [{weight = ..., dist = ...}, ...] (at least one table)")
    weights: list[float] = []
    parsed: list[Delay] = []
    for position, component in enumerate(components):
        where = f"components[{position}] ({component.get('dist', '?')})"
        weight = component.get("weight")
        if not is_finite_number(weight) or weight < 0:
            raise DelayError(f"{where}: weight must be a non-negative number, got {weight!r}")
        try:
            parsed.append(parse_delay({k: v for k, v in component.items() if k != "weight"}, base_dir=base_dir))
        except DelayError as error:
            raise DelayError(f"{where}: {error}") from None
        weights.append(weight)
    if sum(weights) <= 0:
        raise DelayError("components: weights must have a positive sum")
    return Delay("mixture", (("weights", tuple(weights)), ("components", tuple(parsed))))


def _parse_empirical(raw: dict[str, Any], base_dir: Path) -> Delay:
    _check_keys(raw, {"dist", "values", "file", "column"}, "empirical")
    if ("values" in raw) == ("file" in raw):
        raise DelayError("dist 'empirical' needs either values = [...] or file = \"delays.csv\" (not both)")
    if "values" in raw:
        if "column" in raw:
            raise DelayError("column goes with file, not with values")
        return Delay("empirical", (("values", _inline_observations(raw["values"])),))
    file, column = raw["file"], raw.get("column")
    if not isinstance(file, str) or not file:
        raise DelayError(f"file must be a path to a .csv or .parquet file, got {file!r}")
    if column is not None and (not isinstance(column, str) or not column):
        raise DelayError(f"column must be a column name, got {column!r}")
    path = Path(file) if Path(file).is_absolute() else base_dir / file
    values, column = read_delay_file(path, column, shown_as=file)
    return Delay("empirical", (("values", values), ("file", file), ("column", column)))


def _inline_observations(values: Any) -> tuple[float, ...]:
    import numpy as np
    import pandas as pd

    if isinstance(values, (np.ndarray, pd.Series)):
        array = np.asarray(values)
        if array.ndim != 1 or array.dtype.kind not in "iuf":
            raise DelayError(f"values must be a one-dimensional array of numbers, got {array.dtype} of shape {array.shape}")
        observations = array.astype(float)
    elif isinstance(values, (list, tuple)):
        for index, value in enumerate(values):
            if not (is_finite_number(value) or (isinstance(value, float) and np.isnan(value))):
                raise DelayError(f"values[{index}] must be a number of seconds (nan: never), got {value!r}")
        observations = np.asarray(values, dtype=float)
    else:
        raise DelayError(f"values must be a list of observed delays in seconds, got {values!r}")
    _check_observations(observations, lambda i: f"values[{i}]", what="values")
    return tuple(observations.tolist())


def _check_observations(values: np.ndarray, at: Callable[[int], str], *, what: str | None = None) -> None:
    """Refuse negative and infinite delays, naming the first; with ``what``, refuse no delays at all."""
    import numpy as np

    for bad, reason in ((values < 0, "negative delay"), (np.isinf(values), "infinite delay")):
        found = np.flatnonzero(bad)
        if found.size:
            hint = "; use NaN (an empty cell) for a call that never comes" if reason == "infinite delay" else ""
            raise DelayError(f"{at(int(found[0]))}: {reason} ({values[found[0]]:g}){hint}")
    if what is not None and values.size == 0:
        raise DelayError(f"{what} is empty")
    if what is not None and np.isnan(values).all():
        raise DelayError(f"{what} has no delays, every one is empty or NaN (use dist = \"never\" if no call comes)")


def read_delay_file(path: Path, column: str | None, *, shown_as: str | None = None) -> tuple[tuple[float, ...], str]:
    """Observed delays from a ``.csv`` or ``.parquet`` file: ``(values, column used)``.

    ``column`` may be omitted when the file has a single column. An empty cell or NaN is a call
    that never came (NaN in the result). Errors name the file, the column and the reason —
    a missing file, an unknown column (listing those there are), a non-numeric, negative or
    infinite value (with its row), an empty column, a suffix other than ``.csv``/``.parquet``.
    The file is read once per content: the result is cached by path, size and modification time.
    """
    name = f"file {shown_as or str(path)}"
    if path.suffix.lower() not in DELAY_FILE_SUFFIXES:
        raise DelayError(f"{name}: must end in .csv or .parquet, got {path.suffix or 'no suffix'!r}")
    try:
        stat = path.stat()
    except OSError:
        raise DelayError(f"{name}: not found (looked for {path.resolve()})") from None
    return _read_delay_file(str(path), column, shown_as or str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _read_delay_file(path: str, column: str | None, shown_as: str, _mtime_ns: int,
                     _size: int) -> tuple[tuple[float, ...], str]:
    import numpy as np
    import pandas as pd

    name = f"file {shown_as}"
    csv = path.lower().endswith(".csv")
    try:
        frame = pd.read_csv(path) if csv else pd.read_parquet(path)
    except Exception as error:  # any parser or I/O failure: say which file and why
        raise DelayError(f"{name}: cannot be read as {'CSV' if csv else 'Parquet'}: {error}") from None
    columns = [str(c) for c in frame.columns]
    if column is None:
        if len(columns) != 1:
            raise DelayError(f"{name}: say which column holds the delays (column = ...); columns: {', '.join(columns)}")
        column = columns[0]
    if column not in columns:
        raise DelayError(f"{name}: no column {column!r}; columns: {', '.join(columns) or '(none)'}")
    cells = frame[frame.columns[columns.index(column)]]

    def row(index: int) -> str:
        # 1-based data row; in a CSV the header is line 1, so row r is on line r + 1.
        return f"{name}, column {column!r}, row {index + 1}" + (f" (line {index + 2})" if csv else "")

    if cells.dtype.kind not in "iuf":
        numbers = pd.to_numeric(cells, errors="coerce") if cells.dtype.kind != "b" else pd.Series(np.nan, index=cells.index)
        wrong = np.flatnonzero(numbers.isna().to_numpy() & cells.notna().to_numpy())
        if wrong.size:
            raise DelayError(f"{row(int(wrong[0]))}: not a number of seconds: {cells.iloc[wrong[0]]!r}")
        cells = numbers
    values = cells.to_numpy(dtype=float, na_value=np.nan)
    _check_observations(values, row, what=f"{name}, column {column!r}")
    return tuple(values.tolist()), column
