"""Results: one row per conversation as a typed pandas DataFrame, saved as Parquet or CSV.

Columns (SPEC §6, §14.3 and a few more): ``scenario, case, variant, party, conversation,
conversation_key, bot, block, conversations, timeout_s, delay_s, key, calls, call_gap_s, signature,
arrival_rate, started_at_s, first_call_s, statuses, first_status, held, late_calls, outcome, reason,
waited_s, resolved_by, conversation_status, expected_outcome, expected_status, passed, failure,
thresholds, error``.

One row per conversation and party: ``party`` is the party's 0-based index (0 for a case
without ``parties``), ``block`` and ``timeout_s`` are that party's, and the outcome columns
describe its calls and the conversation's first wait at its block — ``reason`` is
``never_opened`` (``outcome`` empty, ``waited_s`` NaN) when the flow never reached that block.
``held`` is true when the party's first call was answered 202 (held early, SPEC §14.1).

Text columns with few values are categoricals; counts that may be missing are nullable
``Int64``; ``passed`` is a nullable boolean (NA for exploratory cases); ``statuses`` lists
every call's status, comma-separated, in call order (retries included); ``late_calls`` counts the
conversation's calls answered 410 ``wait_expired``; ``delay_s`` is NaN for ``never``.

The runner hands over :class:`ResultBlock` objects, one per (slice of a) sub-case, column by
column: the sub-case's settings once, per-conversation values as compact arrays. A finished
conversation costs a few hundred bytes there, not a dict of thirty boxed values.

A large run arrives in pieces (see :mod:`harness.runner.shards`): each piece is typed on arrival
(:func:`to_frame`), and :func:`concat_results` puts the typed pieces together column by column,
so the whole frame is never held twice; :class:`ResultsWriter` appends them to a file instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .summary import summarize, summarize_rows, threshold_verdicts

__all__ = ["COLUMNS", "ResultBlock", "ResultsWriter", "to_frame", "concat_results", "parties_in_order", "row_groups", "save_results", "load_results", "iter_results",
           "summarize", "summarize_rows", "threshold_verdicts"]

_CATEGORIES = ("scenario", "case", "variant", "bot", "block", "key", "signature", "outcome", "reason",
               "conversation_status", "expected_outcome", "thresholds")
_NULLABLE_INTS = ("party", "conversations", "timeout_s", "calls", "first_status", "late_calls", "resolved_by", "expected_status")
_FLOATS = ("delay_s", "call_gap_s", "arrival_rate", "started_at_s", "first_call_s", "waited_s")
_STRINGS = ("conversation_key", "statuses", "failure", "error")
COLUMNS = ("scenario", "case", "variant", "party", "conversation", "conversation_key", "bot", "block",
           "conversations", "timeout_s", "delay_s", "key", "calls", "call_gap_s", "signature", "arrival_rate",
           "started_at_s", "first_call_s", "statuses", "first_status", "held", "late_calls", "outcome", "reason", "waited_s", "resolved_by", "conversation_status",
           "expected_outcome", "expected_status", "passed", "failure", "thresholds", "error")


@dataclass
class ResultBlock:
    """Consecutive rows of one sub-case, by column.

    ``constants`` holds the columns every row shares (scenario, case, settings, expectations);
    ``columns`` holds one sequence of ``length`` values per other column (numpy arrays for numbers,
    with NaN / -1 / 0 standing for "none" as :meth:`frame` documents, lists for text).
    """

    length: int
    constants: dict[str, Any]
    columns: dict[str, Any] = field(default_factory=dict)
    sort_key: tuple[int, ...] = (0, 0, 0)  # (sub-case position, party, first conversation): where it goes

    def frame(self) -> pd.DataFrame:
        """The block as untyped columns; -1 in ``resolved_by``/``passed`` and 0 in ``first_status`` mean none."""
        data: dict[str, Any] = {}
        for name in COLUMNS:
            if name in self.columns:
                data[name] = self.columns[name]
            else:
                data[name] = [self.constants.get(name)] * self.length
        for name, none in (("resolved_by", -1), ("first_status", 0)):
            values = np.asarray(data[name], dtype="int64")
            data[name] = pd.array(np.where(values == none, 0, values), dtype="Int64")
            data[name][values == none] = pd.NA
        passed = np.asarray(data["passed"], dtype="int8") if "passed" in self.columns else None
        if passed is not None:
            data["passed"] = pd.array(passed == 1, dtype="boolean")
            data["passed"][passed == -1] = pd.NA
        return pd.DataFrame(data, columns=list(COLUMNS))


def to_frame(rows: Sequence[ResultBlock] | Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Results from the runner (blocks, or plain row dicts) → the typed results DataFrame."""
    blocks = [block for block in rows if isinstance(block, ResultBlock)]
    if blocks:
        blocks.sort(key=lambda block: block.sort_key)
        frame = pd.concat([block.frame() for block in blocks], ignore_index=True)
    else:
        frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    return _apply_dtypes(frame)


def _apply_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in _CATEGORIES:
        # Keep first-seen order so cases list in file order, not alphabetically.
        values = frame[column].astype("object").where(frame[column].notna(), None)
        frame[column] = pd.Categorical(values, categories=list(dict.fromkeys(values.dropna())))
    for column in _NULLABLE_INTS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in _FLOATS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in _STRINGS:
        frame[column] = frame[column].astype("string")
    frame["conversation"] = frame["conversation"].astype("int64")
    frame["passed"] = frame["passed"].astype("boolean")
    frame["party"] = frame["party"].fillna(0)  # files written before parties: one party, index 0
    frame["held"] = frame["held"].astype("boolean").fillna(False).astype(bool)
    frame["statuses"] = frame["statuses"].fillna("")
    return frame


def concat_results(pieces: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Typed result pieces (:func:`to_frame`'s, in run order) → one frame, as if typed whole.

    Column by column, each column's pieces let go as soon as it is joined: the peak is the frame
    plus one column. Categories keep their first-seen order across pieces (a piece's own
    categories are first-seen within it); Arrow-backed strings are joined without a copy.
    """
    parts = [dict(piece.items()) for piece in pieces]
    if len(parts) == 1:
        return pd.DataFrame(parts[0], copy=False)
    if not parts:
        return to_frame([])
    columns: dict[str, Any] = {}
    for name in list(parts[0]):
        series = [part.pop(name) for part in parts]
        if isinstance(series[0].dtype, pd.CategoricalDtype):
            categories = list(dict.fromkeys(value for one in series for value in one.cat.categories))
            codes = np.concatenate([one.cat.set_categories(categories).cat.codes.to_numpy() for one in series])
            columns[name] = pd.Series(pd.Categorical.from_codes(codes, categories=categories), name=name, copy=False)
        else:
            columns[name] = pd.concat(series, ignore_index=True)
        del series
    return pd.DataFrame(columns, copy=False)


def parties_in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each sub-case's rows party by party, as one whole run lists them.

    A case with several parties that was cut into pieces comes back with each piece's parties in
    turn (party 0, 1 of conversations 0–39, then party 0, 1 of 40–79); a stable sort puts all of
    party 0's rows first, conversations in order. A frame already in that order is returned as it is.
    """
    if len(frame) < 2:
        return frame
    codes = [frame[column].cat.codes.to_numpy() if isinstance(frame[column].dtype, pd.CategoricalDtype)
             else pd.factorize(frame[column])[0] for column in ("scenario", "case", "variant")]
    subcase = np.cumsum(np.r_[0, np.any([np.diff(code) != 0 for code in codes], axis=0)])
    party = frame["party"].to_numpy(dtype="int64", na_value=0)
    if np.all((np.diff(subcase) > 0) | (np.diff(party) >= 0)):
        return frame
    return frame.take(np.lexsort((party, subcase))).reset_index(drop=True)


def row_groups(frame: pd.DataFrame, keys: list[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """``frame``'s rows grouped by ``keys``, in order of appearance; a frame that is one group
    whole (a piece of one sub-case, a one-party case) comes back as it is, not copied."""
    if len(frame) and all(frame[key].nunique(dropna=False) == 1 for key in keys):
        return [(tuple(frame[key].iloc[0] for key in keys), frame)]
    return list(frame.groupby(keys, observed=True, sort=False, dropna=False))


class ResultsWriter:
    """Append typed result pieces to a ``.parquet`` file (a row group each) or a ``.csv`` file.

    A run's memory then does not depend on how many rows it writes. Parquet keeps the dtypes
    (categories as dictionaries, nullable integers, Arrow strings); :func:`load_results` reads
    either back. Use as a context manager; the file is complete once it is closed::

        with ResultsWriter("results.parquet") as writer:
            for piece in pieces:
                writer.write(piece)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in (".parquet", ".csv"):
            raise ValueError(f"{self.path}: results go to a .parquet or .csv file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._parquet: Any = None  # pyarrow.parquet.ParquetWriter, opened with the first piece's schema
        self._schema: Any = None
        # Closed by close(): the writer is the context manager.
        self._csv = open(self.path, "w", newline="", encoding="utf-8") if self.suffix == ".csv" else None  # noqa: SIM115

    def write(self, piece: pd.DataFrame) -> None:
        if self._csv is not None:
            piece.to_csv(self._csv, header=self.rows == 0, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(piece, preserve_index=False)
            if self._parquet is None:
                # Every piece has its own categories, maybe none: one dictionary type fits them all.
                self._schema = pa.schema([_wide_dictionary(field) for field in table.schema],
                                         metadata=table.schema.metadata)
                self._parquet = pq.ParquetWriter(self.path, self._schema)
            self._parquet.write_table(table.cast(self._schema))
        self.rows += len(piece)

    def close(self) -> None:
        """Finish the file (closing twice is harmless)."""
        if self._csv is not None:
            self._csv.close()
            return
        if self._parquet is None:
            self.write(to_frame([]))  # no piece came: an empty file with the results' columns
        parquet: Any = self._parquet
        if parquet.is_open:
            parquet.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _wide_dictionary(field: Any) -> Any:
    """A dictionary column's field with 32-bit indices (and text values when its piece had none)."""
    import pyarrow as pa

    if not pa.types.is_dictionary(field.type):
        return field
    values = field.type.value_type
    return field.with_type(pa.dictionary(pa.int32(), pa.large_string() if pa.types.is_null(values) else values))


def save_results(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``.parquet`` (keeps dtypes) or ``.csv``; anything else is refused."""
    with ResultsWriter(path) as writer:
        writer.write(frame)
    return writer.path


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a results file written by ``harness run --out`` back with its dtypes."""
    return concat_results(iter_results(path))


RESULTS_PER_CSV_PIECE = 100_000


def iter_results(path: str | Path) -> Iterator[pd.DataFrame]:
    """A results file's rows, typed as :func:`to_frame` types them, piece by piece: a Parquet row
    group, or :data:`RESULTS_PER_CSV_PIECE` lines of CSV, at a time (``harness report`` tallies
    them without holding the file). A file that is not a results file raises ``ValueError``
    naming it, before any piece; one that breaks off part-way, at that piece."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: results are read from .parquet or .csv files")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        columns, pieces = _results_pieces(path, suffix)
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(f"{path}: cannot read results: {error}") from None
    missing = [column for column in ("case", "conversation", "outcome", "waited_s") if column not in columns]
    if missing:
        raise ValueError(f"{path}: not a results file (missing columns: {', '.join(missing)})")
    return _typed_pieces(path, pieces)


def _results_pieces(path: Path, suffix: str) -> tuple[list[str], Iterator[pd.DataFrame]]:
    """(the file's columns, its pieces as read, untyped)."""
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        groups = (file.read_row_group(index).to_pandas() for index in range(file.num_row_groups))
        return list(file.schema_arrow.names), groups
    options: dict[str, Any] = {"dtype": {"statuses": "string", "variant": "string", "conversation_key": "string"},
                               "keep_default_na": False, "na_values": [""]}
    columns = list(pd.read_csv(path, nrows=0, **options).columns)
    return columns, iter(pd.read_csv(path, chunksize=RESULTS_PER_CSV_PIECE, **options))


def _typed_pieces(path: Path, pieces: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    empty = True
    while True:
        try:
            frame = next(pieces)
        except StopIteration:
            break
        except (OSError, ValueError, ImportError) as error:
            raise ValueError(f"{path}: cannot read results: {error}") from None
        empty = False
        for column in COLUMNS:
            if column not in frame.columns:
                frame[column] = None
        frame["variant"] = frame["variant"].astype("object").fillna("")
        yield _apply_dtypes(frame[list(COLUMNS)])
    if empty:  # a file with the columns and no rows
        yield to_frame([])
