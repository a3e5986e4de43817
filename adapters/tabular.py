"""Your own data as an `InteractionLog`: a directory of CSV or parquet tables (spec `table:DIR`).

Layout (each file either `NAME.csv` with a header line or `NAME.parquet`, not both):

* `interactions` (required), one row per event:
    - `member_id`, `item_id`: the ids (strings, or integers read as their decimal text);
    - `label`: 0 or 1;
    - `ts`: epoch milliseconds, or an ISO-8601 timestamp (`2024-05-01T12:00:00Z`; no offset
      means UTC; a parquet timestamp column works too), between 1990 and 2100;
    - any further columns: numeric per-event context features, named as the streaming
      events' `context` names them.
  Events are sorted by ts on load; ties keep their file order.
* `members` (optional): `member_id` and categorical columns, the member meta features the
  meta block reads (kept as strings, as in the Feast `member_profile` view). An empty
  value, or a member without a row, is unknown (""): the OOV code. Without the file the
  log has no member features, and every member's meta block reads the one learned
  constant input (as for anonymous members).
* `items` (optional): `item_id` and numeric columns, the item content features. An item
  without a row gets zeros.

Members and items are indexed in the order of the `members`/`items` rows, then of first
appearance among the time-sorted events; a member feature's values in sorted order. The
log is named after the directory. A file that breaks the layout raises `TableFormatError`
(a ValueError) naming the file, the column, an example row and the fix. `write_table`
writes a log in this layout, so any log (a synthetic one, say) can be exported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from limaml.adapters.events import MAX_TS_MS, MIN_TS_MS
from limaml.data import OOV_INDEX, InteractionLog, Vocabulary, time_order

logger = logging.getLogger(__name__)

INTERACTIONS, MEMBERS, ITEMS = "interactions", "members", "items"
EVENT_COLUMNS = ("member_id", "item_id", "label", "ts")
_SHOWN_CHARS = 120  # an example row is quoted in a message up to this many characters
_EPOCH = pd.Timestamp(0, tz="UTC")


class TableFormatError(ValueError):
    """A table directory or file that does not follow the layout in this module's docstring."""


class _Table:
    """One file's rows; CSV cells are kept as the exact text (no NA guessing)."""

    def __init__(self, path: Path) -> None:
        self.path, self.csv = path, path.suffix == ".csv"
        try:
            if self.csv:
                frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            else:
                frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
        except pd.errors.EmptyDataError:
            raise TableFormatError(f"{path} is empty: write a header line, then one row per "
                                   "record (or delete the file if it is optional)") from None
        except (ValueError, OSError, pd.errors.ParserError) as error:
            raise TableFormatError(f"{path} cannot be read as {'CSV' if self.csv else 'parquet'}: "
                                   f"{error}") from None
        if len(frame) == 0:
            raise TableFormatError(f"{path} has no rows (columns: {', '.join(map(str, frame.columns))}): "
                                   "add rows, or delete the file if it is optional")
        frame.columns = [str(name) for name in frame.columns]
        self.frame = frame.reset_index(drop=True)

    def fail(self, column: str, bad: np.ndarray, problem: str, fix: str) -> TableFormatError:
        """An error naming the file, the column, the first bad row and how many there are."""
        positions = np.flatnonzero(bad)
        first = int(positions[0])
        where = f"line {first + 2}" if self.csv else f"row {first + 1}"
        row = ", ".join(f"{name}={value.item() if isinstance(value, np.generic) else value!r}"
                        for name, value in self.frame.iloc[first].items())
        if len(row) > _SHOWN_CHARS:
            row = row[:_SHOWN_CHARS - 3] + "..."
        return TableFormatError(f"{self.path}: column '{column}': {problem} in {len(positions)} "
                                f"row(s), e.g. {where}: {row}; {fix}")

    def require(self, columns: tuple[str, ...]) -> None:
        missing = [name for name in columns if name not in self.frame.columns]
        if missing:
            raise TableFormatError(
                f"{self.path}: missing column(s) {', '.join(map(repr, missing))} (found "
                f"{', '.join(map(repr, map(str, self.frame.columns)))}); the file needs the columns "
                f"{', '.join(columns)}, see the layout in adapters/tabular.py")

    def ids(self, column: str) -> np.ndarray:
        """The column as non-empty strings: object array."""
        series = self.frame[column]
        if not self.csv and not (pd.api.types.is_string_dtype(series) or pd.api.types.is_integer_dtype(series)):
            raise self.fail(column, np.ones(len(series), dtype=bool), f"ids of type {series.dtype}",
                            "write ids as strings or integers")
        missing = series.isna().to_numpy(dtype=bool)
        text = series.astype(object).where(~missing, "").map(str).to_numpy(dtype=object)
        empty = missing | (text == "")
        if empty.any():
            raise self.fail(column, empty, "missing or empty id", "every row needs an id")
        return text

    def unique_ids(self, column: str) -> np.ndarray:
        ids = self.ids(column)
        duplicated = pd.Series(ids).duplicated().to_numpy()
        if duplicated.any():
            raise self.fail(column, duplicated, "duplicate id (another row has the same id)",
                            "keep one row per id")
        return ids

    def numbers(self, column: str, fix: str) -> np.ndarray:
        """The column as finite float64 values."""
        series = self.frame[column]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            missing = series.isna().to_numpy(dtype=bool)
            values = series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
            unparsed = np.zeros(len(series), dtype=bool)
        else:
            missing = series.isna().to_numpy(dtype=bool) | (series.astype(object) == "").to_numpy(dtype=bool)
            values = pd.to_numeric(series.astype(object), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan)
            spelt_nan = series.astype(object).map(lambda text: str(text).strip().lower().lstrip("+-") == "nan")
            unparsed = np.isnan(values) & ~missing & ~spelt_nan.to_numpy(dtype=bool)
        if unparsed.any():
            raise self.fail(column, unparsed, "not a number", fix)
        if missing.any():
            raise self.fail(column, missing, "missing value (empty or NaN)", "fill it in or drop the row")
        infinite = ~np.isfinite(values)
        if infinite.any():
            raise self.fail(column, infinite, "not a finite number (NaN or infinity)",
                            "replace it with a finite number or drop the row")
        return values

    def epoch_ms(self, column: str) -> np.ndarray:
        """Epoch milliseconds from integers, ISO-8601 strings or a timestamp column: int64."""
        series = self.frame[column]
        missing = series.isna().to_numpy(dtype=bool)
        if not pd.api.types.is_datetime64_any_dtype(series):
            missing |= (series.astype(object) == "").to_numpy(dtype=bool)
        if missing.any():
            raise self.fail(column, missing, "missing timestamp", "fill it in or drop the row")
        if pd.api.types.is_datetime64_any_dtype(series):
            stamps = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
            ms = ((stamps - _EPOCH) // pd.Timedelta(1, "ms")).to_numpy(dtype=np.int64)
        else:
            numeric = pd.to_numeric(series.astype(object), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan)
            if not np.isnan(numeric).any():
                fraction = numeric != np.floor(numeric)
                if fraction.any():
                    raise self.fail(column, fraction, "fractional epoch milliseconds",
                                    "write whole milliseconds since 1970-01-01T00:00:00Z")
                ms = pd.to_numeric(series.astype(object)).astype("int64").to_numpy()
            else:
                stamps = pd.to_datetime(series.astype(object).map(str), utc=True, format="ISO8601",
                                        errors="coerce")
                unparsed = stamps.isna().to_numpy(dtype=bool)
                if unparsed.any():
                    raise self.fail(column, unparsed, "neither epoch milliseconds nor an ISO-8601 time",
                                    "write e.g. 1714564800000 or 2024-05-01T12:00:00Z in every row")
                ms = ((stamps - _EPOCH) // pd.Timedelta(1, "ms")).to_numpy(dtype=np.int64)
        out_of_range = (ms < MIN_TS_MS) | (ms >= MAX_TS_MS)
        if out_of_range.any():
            seconds = bool(((ms >= MIN_TS_MS // 1000) & (ms < MAX_TS_MS // 1000))[out_of_range].all())
            raise self.fail(column, out_of_range, "time outside 1990..2100",
                            "these look like epoch seconds: multiply by 1000" if seconds
                            else "write epoch milliseconds or an ISO-8601 time")
        return ms


def _find(directory: Path, name: str, required: bool) -> _Table | None:
    candidates = [path for path in (directory / f"{name}.csv", directory / f"{name}.parquet")
                  if path.is_file()]
    if len(candidates) > 1:
        raise TableFormatError(f"{directory} has both {name}.csv and {name}.parquet: keep one")
    if not candidates:
        if required:
            raise TableFormatError(f"{directory / name}.csv (or .parquet) is missing: it is required, "
                                   f"with the columns {', '.join(EVENT_COLUMNS)}, see adapters/tabular.py")
        return None
    return _Table(candidates[0])


def _read_members(table: _Table) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Member ids and, per feature column, their values as strings ("" = unknown)."""
    table.require(("member_id",))
    ids = table.unique_ids("member_id")
    features: dict[str, np.ndarray] = {}
    for name in (column for column in table.frame.columns if column != "member_id"):
        series = table.frame[name]
        missing = series.isna().to_numpy(dtype=bool)
        features[name] = series.astype(object).where(~missing, "").map(str).to_numpy(dtype=object)
    return ids, features


def _read_items(table: _Table) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Item ids and their numeric feature columns."""
    table.require(("item_id",))
    ids = table.unique_ids("item_id")
    return ids, {name: table.numbers(name, "item feature columns must be numeric: encode the "
                                     "column as numbers, or drop it")
                 for name in table.frame.columns if name != "item_id"}


def _vocabulary(listed: np.ndarray, seen: np.ndarray) -> tuple[Vocabulary, np.ndarray]:
    """Listed ids then unlisted ones by first appearance; the codes of `seen`."""
    vocabulary = Vocabulary(tuple(dict.fromkeys(listed.tolist() + pd.unique(seen).tolist())))
    codes = pd.Index(vocabulary.tokens).get_indexer(seen) + 1
    return vocabulary, codes.astype(np.int64)


def _placed(vocabulary: Vocabulary, ids: np.ndarray) -> np.ndarray:
    """The vocabulary index of each id (OOV_INDEX for one not in it), vectorized."""
    return pd.Index(vocabulary.tokens).get_indexer(ids) + 1


def load_table(directory: Path) -> InteractionLog:
    """Read a table directory (layout in the module docstring) into a time-ordered log."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TableFormatError(f"table directory {directory} does not exist: pass a directory holding "
                               "interactions.csv or interactions.parquet")
    events = _find(directory, INTERACTIONS, required=True)
    if events is None:  # unreachable: a required table is found or raises
        raise TableFormatError(f"{directory}: no interactions table")
    events.require(EVENT_COLUMNS)
    member_ids, item_ids = events.ids("member_id"), events.ids("item_id")
    label = events.numbers("label", "write 0 or 1")
    not_binary = (label != 0.0) & (label != 1.0)
    if not_binary.any():
        raise events.fail("label", not_binary, "label other than 0 or 1",
                          "write 1 for a positive (click, like, rating >= 4), else 0")
    ts = events.epoch_ms("ts")
    context_names = tuple(name for name in events.frame.columns if name not in EVENT_COLUMNS)
    fix = "context columns must be numeric: encode the column as numbers, or drop it"
    context = np.zeros((len(ts), len(context_names)), dtype=np.float32)
    for position, name in enumerate(context_names):
        context[:, position] = events.numbers(name, fix)
    order = time_order(ts)

    members_table, items_table = _find(directory, MEMBERS, False), _find(directory, ITEMS, False)
    unlisted: tuple[np.ndarray, dict[str, np.ndarray]] = (np.empty(0, dtype=object), {})
    listed_members, member_values = _read_members(members_table) if members_table else unlisted
    listed_items, item_values = _read_items(items_table) if items_table else unlisted
    members, member = _vocabulary(listed_members, member_ids[order])
    items, item = _vocabulary(listed_items, item_ids[order])

    member_features: dict[str, np.ndarray] = {}
    member_feature_vocabs: dict[str, Vocabulary] = {}
    for name, values in member_values.items():
        vocabulary = Vocabulary(tuple(sorted(set(values.tolist()) - {""})))
        codes = np.full(len(members), OOV_INDEX, dtype=np.int64)
        codes[_placed(members, listed_members)] = _placed(vocabulary, values)  # "" -> 0, OOV
        member_features[name], member_feature_vocabs[name] = codes, vocabulary
    item_features = np.zeros((len(items), len(item_values)), dtype=np.float32)
    for position, values in enumerate(item_values.values()):
        item_features[_placed(items, listed_items), position] = values
    for what, table, vocabulary in (("members", members_table, members), ("items", items_table, items)):
        if table is not None and len(table.frame) < len(vocabulary) - 1:
            logger.warning("%s: %d %s of the interactions have no row in %s (features: %s)", directory,
                           len(vocabulary) - 1 - len(table.frame), what, what,
                           "unknown" if what == "members" else "zeros")

    log = InteractionLog(
        name=directory.resolve().name or "table",
        member=member, item=item, label=label[order].astype(np.float32), ts=ts[order],
        context=context[order], context_names=context_names,
        members=members, items=items,
        member_features=member_features, member_feature_vocabs=member_feature_vocabs,
        item_features=item_features, item_feature_names=tuple(item_values),
    )
    logger.info("loaded %s: %d events, %d members, %d items, %d member features, %d item features, "
                "%d context features", directory, log.n_events, len(members) - 1, len(items) - 1,
                len(member_features), len(item_values), len(context_names))
    return log


def write_table(log: InteractionLog, directory: Path,
                file_format: Literal["csv", "parquet"] = "csv") -> Path:
    """Write a log as a table directory `load_table` reads back; the directory.

    Writes `interactions`, `members` (every vocabulary member, unknown features as "") and
    `items` (every vocabulary item); the OOV rows are not written. Loading it back gives
    the same events, vocabularies and features, except that a member feature vocabulary
    keeps only the values some member has, in sorted order.
    """
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"file_format must be 'csv' or 'parquet', got {file_format!r}")
    clash = set(log.context_names) & set(EVENT_COLUMNS)
    if clash or "member_id" in log.member_features or "item_id" in log.item_feature_names:
        raise ValueError(f"{log.name}: feature names clash with the id/event columns: "
                         f"{sorted(clash) or ['member_id/item_id']}")
    if log.n_events and (log.member.min() == OOV_INDEX or log.item.min() == OOV_INDEX):
        raise ValueError(f"{log.name}: events with an out-of-vocabulary member or item have no id to write")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    member_tokens = np.array(log.members.tokens, dtype=object)
    item_tokens = np.array(log.items.tokens, dtype=object)
    interactions = pd.DataFrame({"member_id": member_tokens[log.member - 1],
                                 "item_id": item_tokens[log.item - 1],
                                 "label": log.label.astype(np.int64), "ts": log.ts.astype(np.int64)})
    for position, name in enumerate(log.context_names):
        interactions[name] = log.context[:, position]
    members = pd.DataFrame({"member_id": member_tokens})
    for name in sorted(log.member_features):
        values = np.array(("", *log.member_feature_vocabs[name].tokens), dtype=object)
        members[name] = values[log.member_features[name][1:]]
    items = pd.DataFrame({"item_id": item_tokens})
    for position, name in enumerate(log.item_feature_names):
        items[name] = log.item_features[1:, position]
    for name, frame in ((INTERACTIONS, interactions), (MEMBERS, members), (ITEMS, items)):
        path = directory / f"{name}.{file_format}"
        if file_format == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    return directory
