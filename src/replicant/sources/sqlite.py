"""SQLite source: ``full`` and ``cursor`` reads through the standard library's ``sqlite3``.

docs/measurements.md (SQLite) has the read rates and memory of ``sqlite3``, the ADBC SQLite
driver and connectorx measured side by side, behind this choice.

``sqlite3`` is chosen although slower: SQLite types values per row, not per column, and
both Arrow-native readers fail on real files. ADBC infers each column's type from the first
rows and aborts on a later value of another type (a ``NUMERIC(10,2)`` column holding both
``1`` and ``0.99``, as Chinook's does; a text column whose first rows are NULL).
connectorx rejects REAL values in a ``NUMERIC`` column outright. Here the driver's per-row
tuples are transposed once per batch (``zip``) and each column is converted by Arrow in
C++ according to the declared type (:func:`.types.sqlite_column`); a value that does not
fit stops the stream with the column's name.

Dates and times are ISO-8601 text in SQLite; key and cursor values are bound back in the
form SQLite's own date functions write (``YYYY-MM-DD HH:MM:SS[.ffffff]``), so a cursor on
such a column compares correctly when the stored text uses that form.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as urlquote

import pyarrow as pa
import pyarrow.compute as pc

from replicant.config import SourceConfig, sqlite_url_against
from replicant.errors import ConfigError, ConnectionError, FatalError
from replicant.model import ConnectorContext, Stream
from replicant.secrets import Secret
from replicant.sources.sql import Plan, SQLSource, Table
from replicant.sources.types import Column, sqlite_column

if TYPE_CHECKING:
    from replicant.sources.sqlite_triggers import SQLiteTriggers

__all__ = ["SQLiteSource"]

#: Rows turned into Python objects at a time (then Arrow; batches are re-assembled to
#: ``batch_size``): bounds the driver's per-row objects, the memory hog of this path.
_FETCH_ROWS = 10_000


def _to_arrow(values: list[Any] | tuple[Any, ...], t: pa.DataType) -> pa.Array:
    """One column of SQLite values as Arrow type ``t`` (vectorised after the driver)."""
    if pa.types.is_decimal(t):
        arr = pa.array(values)  # ints, reals, or text: inferred, then cast exactly / rounded
        return pa.nulls(len(values), t) if pa.types.is_null(arr.type) else arr.cast(t)
    if pa.types.is_boolean(t):
        return pa.array(values, pa.int64()).cast(t)
    if pa.types.is_date32(t) or pa.types.is_timestamp(t):
        return pa.array(values, pa.string()).cast(t)
    if pa.types.is_time(t):
        text = pa.array(values, pa.string())
        stamp = pc.binary_join_element_wise("1970-01-01 ", text, "").cast(pa.timestamp("us"))
        return stamp.cast(pa.int64()).cast(t)
    return pa.array(values, t)


class SQLiteSource(SQLSource):
    """Reads SQLite tables (``sqlite:///relative.db``, ``sqlite:////absolute.db``), read-only.

    The file is opened with ``mode=ro``: a missing file is a ``ConnectionError``, never a
    new empty database.
    """

    dialect = "sqlite"

    @classmethod
    def resolve_config(cls, config: SourceConfig, *, base_dir: Path) -> SourceConfig:
        """``sqlite:///relative.db`` is relative to the pipeline file's folder; the file must exist."""
        config = super().resolve_config(config, base_dir=base_dir)
        assert config.url is not None  # checked above
        url = sqlite_url_against(config.url.get_secret_value(), base_dir)
        path = Path(url.partition(":///")[2])
        if not path.exists():
            raise ConfigError("invalid pipeline file", [("source.url", f"SQLite file {str(path)!r} does not exist")])
        return config.model_copy(update={"url": Secret(url)})

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        rest = self._url.split("://", 1)[1]
        self._path = Path(rest.removeprefix("/")).expanduser()
        self._conn: sqlite3.Connection | None = None

    def location(self) -> str:
        return f"SQLite database {str(self._path.resolve())!r}"

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            path = self._path.resolve()
            if not path.is_file():
                raise ConnectionError(f"cannot open SQLite database {str(path)!r}: no such file")
            try:
                # the engine reads in another thread than it discovers; one thread at a time
                self._conn = sqlite3.connect(
                    f"file:{urlquote(str(path))}?mode=ro", uri=True, check_same_thread=False
                )
                self._conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            except sqlite3.Error as e:
                self._conn = None
                raise ConnectionError(f"cannot open SQLite database {str(path)!r}: {e}") from None
        return self._conn

    def close(self) -> None:
        self._close_capture()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def fetchall(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._connect().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise FatalError(f"reading the catalog of {str(self._path)!r}: {e}") from None

    # ------------------------------------------------------------------ catalog

    def _default_schema(self) -> str:
        return "main"

    def _tables(self, only: tuple[str, ...] | None = None) -> list[Table]:
        sql = ("SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') "
               "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
        rows = self.fetchall(sql + " AND name = ?", (only[-1],)) if only else self.fetchall(sql + " ORDER BY name")
        out = []
        for name, kind in rows:
            cols, pk = [], []
            for _cid, col, declared, notnull, _default, pk_ord, hidden in self.fetchall(
                "SELECT * FROM pragma_table_xinfo(?)", (name,)
            ):
                if hidden == 1:  # a virtual table's hidden column
                    continue
                # PRIMARY KEY columns are treated as NOT NULL (SQLite's legacy allows NULL in a
                # non-INTEGER key; a key holding NULL is not a key)
                cols.append(sqlite_column(col, declared or "", nullable=not notnull and not pk_ord))
                if pk_ord:
                    pk.append((pk_ord, col))
            out.append(Table(("main", name), kind, cols, tuple(c for _, c in sorted(pk))))
        return out

    def filled_columns(self, stream: Stream, names: list[str]) -> dict[str, str]:
        """See :meth:`Source.filled_columns`: from ``pragma_table_xinfo``, a column filled at
        existing rows has a default other than NULL, is generated (``hidden`` 2 or 3), or is
        ``NOT NULL`` (SQLite adds one only with a default)."""
        wanted = set(names)
        found = {}
        for _cid, col, _declared, notnull, default, _pk, hidden in self.fetchall(
                "SELECT * FROM pragma_table_xinfo(?)", (stream.table[-1],)):
            if col not in wanted:
                continue
            if hidden in (2, 3):
                found[col] = "GENERATED ALWAYS AS (…)"
            elif default is not None and str(default).upper() != "NULL":
                found[col] = f"DEFAULT {default}"
            elif notnull:
                found[col] = "NOT NULL"
        return found

    def estimate_rows(self, stream: Any) -> int | None:
        """From ``ANALYZE``'s statistics (``sqlite_stat1``: the first number of ``stat`` is the
        table's or the index's row count, https://sqlite.org/fileformat2.html#stat1tab);
        ``None`` when the database was never analyzed."""
        try:
            rows = self.fetchall("SELECT stat FROM sqlite_stat1 WHERE tbl = ? LIMIT 1", (stream.table[-1],))
        except FatalError:  # no sqlite_stat1: never analyzed
            return None
        first = str(rows[0][0]).split(" ", 1)[0] if rows and rows[0][0] is not None else ""
        return int(first) if first.isdigit() else None

    # ------------------------------------------------------------------ reading

    def trigger_sql(self, stream: Stream) -> SQLiteTriggers:
        from replicant.sources.sqlite_triggers import SQLiteTriggers

        return SQLiteTriggers(self, stream)

    def _bind(self, value: Any, column: Column, params: list[Any]) -> str:
        if isinstance(value, datetime):
            value = value.isoformat(" ")
        elif isinstance(value, (date, time)):
            value = value.isoformat()
        elif isinstance(value, Decimal):  # NUMERIC(p,s) values are stored as REAL or INTEGER
            value = int(value) if value == value.to_integral_value() else float(value)
        elif isinstance(value, bool):
            value = int(value)
        params.append(value)
        return "?"

    def _batches(self, sql: str, params: list[Any], plan: Plan, batch_size: int) -> Iterator[pa.RecordBatch]:
        schema = plan.stream.schema
        what = f"reading {self.display(plan.stream.table)}"
        try:
            cur = self._connect().execute(sql, params)
        except sqlite3.Error as e:
            if "no such table" in str(e):
                raise FatalError(f"{what}: table {self.display(plan.stream.table)} does not exist") from None
            raise FatalError(f"{what}: {e}") from None
        step = min(batch_size, _FETCH_ROWS)
        try:
            while True:
                try:
                    rows = cur.fetchmany(step)
                except sqlite3.Error as e:
                    raise FatalError(f"{what}: {e}") from None
                if not rows:
                    return
                columns = list(zip(*rows))
                arrays = []
                for values, f in zip(columns, schema):
                    try:
                        arrays.append(_to_arrow(values, f.type))
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError) as e:
                        kinds = sorted({type(v).__name__ for v in values if v is not None})
                        raise FatalError(
                            f"{what}: column {f.name!r} (declared {plan.by_name[f.name].sql_type!r}) holds "
                            f"{'/'.join(kinds)} values that are not {f.type}: {e}; exclude the column or fix the data"
                        ) from None
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        finally:
            cur.close()
