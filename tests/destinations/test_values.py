"""Issue 9 item 7: values a destination has no ordinary text or type for are written in a
documented lossless form (docs/types.md, *Values outside ordinary ranges*) or go to the
dead letters with their origin; never a placeholder, never a stream that cannot deliver.

One change table holds them all: ``±infinity`` dates and timestamps (Arrow ``±(2³¹−1)``
days and ``±(2⁶³−1)`` µs, as the PostgreSQL source reads them), the year 10000, 44 BC
(astronomical year −43), a ``numeric(50,10)`` (``decimal256``), an ``interval`` and a NaN.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from http_receiver import Receiver
from replicant.config import DestinationConfig
from replicant.destinations.duckdb import DuckDBDestination
from replicant.destinations.files import FilesDestination
from replicant.destinations.http import HttpDestination
from replicant.destinations.mysql import MySQLDestination
from replicant.destinations.records import record_json, row_json
from replicant.destinations.sqlite import SQLiteDestination
from replicant.errors import FatalError
from replicant.model import ConnectorContext, DeadLetter, Stream
from replicant.sources.postgres.pgoutput import to_arrow

from .conformance import make_stream

INF32, INF64 = 2**31 - 1, 2**63 - 1


def _days(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


def _micros(text: str) -> int:
    return int(np.datetime64(text, "us").astype(np.int64))


STREAM = make_stream("public.far", [
    pa.field("id", pa.int64()),
    pa.field("d", pa.date32()),
    pa.field("ts", pa.timestamp("us")),
    pa.field("tz", pa.timestamp("us", tz="UTC")),
    pa.field("n", pa.decimal256(50, 10)),
    pa.field("iv", pa.month_day_nano_interval()),
    pa.field("f", pa.float64()),
])

#: id → (date, timestamp, timestamptz) as each format must write them (astronomical years)
DATES = {
    1: ("infinity", "infinity", "infinity"),
    2: ("-infinity", "-infinity", "-infinity"),
    3: ("+10000-01-01", "+10000-01-01T12:00:00.500000", "+10000-01-01T12:00:00.500000Z"),
    4: ("-0043-03-15", "-0043-03-15T12:00:00.000000", "-0043-03-15T12:00:00.000000Z"),
    5: ("2024-02-29", "2024-02-29T23:59:59.999999", "2024-02-29T23:59:59.999999Z"),
}
DECIMALS = {1: "0E-10", 2: "1E-10", 3: "-1234567890123456789012345678901234567890.0123456789", 4: None, 5: "1.5"}
INTERVALS = {1: (14, 3, 4_500_000_000), 2: (-1, -2, -7_000), 3: None, 4: (0, -3, 0), 5: (0, 0, 0)}
INTERVAL_TEXT = {1: "P14M3DT4.5S", 2: "P-1M-2DT-0.000007S", 3: None, 4: "P0M-3DT0S", 5: "P0M0DT0S"}


def _batch(ops: str = "insert") -> pa.Table:
    ids = sorted(DATES)
    days = [INF32, -INF32, _days("10000-01-01"), _days("-0043-03-15"), _days("2024-02-29")]
    micros = [INF64, -INF64, _micros("10000-01-01T12:00:00.5"), _micros("-0043-03-15T12:00:00"),
              _micros("2024-02-29T23:59:59.999999")]
    stamps = pa.array(micros, pa.int64())
    cols = [
        pa.array(ids, pa.int64()),
        pa.array(days, pa.int32()).view(pa.date32()),
        stamps.view(pa.timestamp("us")),
        stamps.view(pa.timestamp("us", tz="UTC")),
        pa.array([None if DECIMALS[i] is None else Decimal(DECIMALS[i]) for i in ids], pa.decimal256(50, 10)),
        pa.array([None if INTERVALS[i] is None else pa.MonthDayNano(list(INTERVALS[i])) for i in ids],
                 pa.month_day_nano_interval()),
        pa.array([1.5, float("nan"), 0.0, None, -2.0]),
        pa.array([ops] * len(ids)),
        pa.array([f'{{"lsn":{100 + i}}}' for i in ids]),
        pa.array([dt.datetime(2024, 1, 2, tzinfo=dt.UTC)] * len(ids), pa.timestamp("us", tz="UTC")),
    ]
    return pa.Table.from_arrays(cols, schema=STREAM.change_schema)


PLAIN = {1: "0.0000000000", 2: "0.0000000001", 3: "-1234567890123456789012345678901234567890.0123456789", 4: None,
         5: "1.5000000000"}


def _plain(i: int) -> str | None:
    return PLAIN[i]


class _Letters:
    """A dead-letter sink that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[Stream, DeadLetter]] = []

    def __call__(self, stream: Stream, letters: list[DeadLetter]) -> None:
        self.got += [(stream, x) for x in letters]


def _check_json(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        i = r["id"]
        assert (r["d"], r["ts"], r["tz"]) == DATES[i], r
        assert r["n"] == _plain(i)
        assert r["iv"] == INTERVAL_TEXT[i]


def test_json_lines_and_nats_records_write_far_dates_intervals_and_wide_decimals_losslessly() -> None:
    """Before: ``"infinityZ"``, ``"-43-03-15T…"``, BC dates as ``"0044-03-15 (BC)"`` beside
    ``"-43"`` timestamps, and intervals in DuckDB's prose."""
    _check_json([json.loads(t) for t in row_json(_batch()).to_pylist()])
    records = [json.loads(t) for t in record_json(_batch(), ["id"]).to_pylist()]
    _check_json([r["data"] for r in records])


def _files(tmp_path: Path, fmt: str) -> list[Path]:
    d = FilesDestination(DestinationConfig.model_validate(
        {"name": "f", "type": "files", "path": str(tmp_path), "format": fmt, "partition": "none"}), ConnectorContext("p"))
    d.prepare(STREAM)
    d.write(STREAM, _batch(), last_offset=4)
    d.close()
    return sorted(tmp_path.rglob(f"*.{fmt}"))


def test_csv_writes_the_lossless_text_and_an_interval_column_at_all(tmp_path: Path) -> None:
    """Before: the interval column made every CSV write fail (``Unsupported cast from
    month_day_nano_interval``), so the stream could never deliver; dates came out as
    ``<value out of range: 2147483647>``."""
    (f,) = _files(tmp_path, "csv")
    names = ["id", "d", "ts", "tz", "n", "iv", "f", "_op", "_pos", "_ts"]
    table = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, null_values=[""], strings_can_be_null=True,
        quoted_strings_can_be_null=False))
    rows = [{**r, "id": int(r["id"])} for r in table.to_pylist()]
    _check_json(rows)
    assert [r["f"] for r in rows] == ["1.5", "nan", "0", None, "-2"]


def test_parquet_holds_an_interval_as_months_days_nanoseconds(tmp_path: Path) -> None:
    """Before: ``Unhandled type for Arrow to Parquet schema conversion: month_day_nano_interval``.
    Dates and timestamps keep their Arrow values (DuckDB reads ±max as ±infinity)."""
    (f,) = _files(tmp_path, "parquet")
    table = pq.read_table(f)
    ivs = table["iv"].to_pylist()
    assert [None if v is None else (v["months"], v["days"], v["nanoseconds"]) for v in ivs] == [INTERVALS[i] for i in DATES]
    assert table["d"].cast(pa.int32()).equals(_batch()["d"].cast(pa.int32()))
    assert table["n"].type == pa.decimal256(50, 10)
    with duckdb.connect() as c:
        c.execute("SET TimeZone = 'UTC'")
        got = c.execute(f"SELECT d::VARCHAR, ts::VARCHAR FROM read_parquet('{f}') ORDER BY id").fetchall()
    assert got[:2] == [("infinity", "infinity"), ("-infinity", "-infinity")]


def test_sqlite_stores_far_dates_as_lossless_text_and_dead_letters_nan(tmp_path: Path) -> None:
    """Before: ``<value out of range: 9223372036854775807>`` in the table, and NaN stored as NULL."""
    letters = _Letters()
    path = tmp_path / "d.sqlite"
    d = SQLiteDestination(DestinationConfig(name="lite", type="sqlite", path=str(path), write="merge"),
                          ConnectorContext("p", dead_letter=letters))
    d.prepare(STREAM)
    d.write(STREAM, _batch(), last_offset=14)
    d.close()
    with sqlite3.connect(path) as c:
        rows = {r[0]: r[1:] for r in c.execute('SELECT id, d, ts, tz, n, iv, f FROM far')}
    assert sorted(rows) == [1, 3, 4, 5], "the NaN row went to the dead letters, the others were written"
    for i, (d_, ts, tz, n, iv, f) in rows.items():
        assert (d_, ts, tz) == (DATES[i][0], DATES[i][1].replace("T", " "), DATES[i][2].replace("T", " ").removesuffix("Z"))
        assert (n, iv, f) == (_plain(i), INTERVAL_TEXT[i], {1: 1.5, 3: 0.0, 4: None, 5: -2.0}[i])
    ((stream, letter),) = letters.got
    assert stream.name == "public.far" and letter.destination == "lite"
    assert letter.origin == 'log offset 11, position {"lsn": 102}'  # row 2 of offsets 10..14
    assert "'f'" in letter.reason and "NaN" in letter.reason
    assert letter.payload["data"]["id"] == 2 and letter.payload["data"]["d"] == "-infinity"


def test_sqlite_without_a_dead_letter_store_refuses_nan_instead_of_storing_null(tmp_path: Path) -> None:
    """Before: the NaN was stored as NULL, silently."""
    path = tmp_path / "d.sqlite"
    d = SQLiteDestination(DestinationConfig(name="lite", type="sqlite", path=str(path), write="merge"), ConnectorContext("p"))
    d.prepare(STREAM)
    with pytest.raises(FatalError, match=r"column 'f': NaN cannot be stored in SQLite"):
        d.write(STREAM, _batch(), last_offset=4)
    assert d.applied_offset(STREAM) == -1
    d.close()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM far").fetchone() == (0,)


def test_duckdb_keeps_the_digits_of_decimals_wider_than_38(tmp_path: Path) -> None:
    """Before: ``0E-10`` and ``1E-10`` (Arrow's decimal → string cast) in a VARCHAR documented as exact digits."""
    path = tmp_path / "d.duckdb"
    d = DuckDBDestination(DestinationConfig(name="duck", type="duckdb", path=str(path), write="merge"), ConnectorContext("p"))
    d.prepare(STREAM)
    d.write(STREAM, _batch(), last_offset=4)
    d.close()
    with duckdb.connect(str(path), read_only=True) as c:
        c.execute("SET TimeZone = 'UTC'")
        got = c.execute('SELECT id, n, d::VARCHAR, tz::VARCHAR FROM far ORDER BY id').fetchall()
    assert [r[1] for r in got] == [_plain(i) for i in DATES]
    assert got[0][2:] == ("infinity", "infinity") and got[3][2] == "0044-03-15 (BC)"


def _maria(url: str, sink: _Letters | None) -> MySQLDestination:
    cfg = DestinationConfig(name="maria", type="mysql", url=url, write="merge")
    return MySQLDestination(cfg, ConnectorContext("p", dead_letter=sink))


def test_mariadb_dead_letters_what_it_cannot_hold_and_writes_the_rest(mysql_url: str) -> None:
    """MariaDB has no infinity, no year before 1 or after 9999, no NaN. Before: the whole
    write failed on every retry (``Incorrect date value``), pausing the stream for good."""
    import pymysql

    letters = _Letters()
    d = _maria(mysql_url, letters)
    d.prepare(STREAM)
    d.write(STREAM, _batch(), last_offset=4)
    assert d.applied_offset(STREAM) == 4
    first = _batch().slice(4, 1)  # the year 1 is held: only years outside 0001–9999 are refused
    first = first.set_column(1, "d", pa.array([_days("0001-01-01")], pa.int32()).view(pa.date32()))
    first = first.set_column(0, "id", pa.array([6], pa.int64()))
    first = first.set_column(2, "ts", pa.array([_micros("0001-01-01T00:00:00")], pa.int64()).view(pa.timestamp("us")))
    d.write(STREAM, first, last_offset=5)
    d.close()
    conn = pymysql.connect(**_pymysql_args(mysql_url))
    with conn.cursor() as cur:
        cur.execute("SELECT id, d, n, iv FROM far ORDER BY id")
        rows = cur.fetchall()
        cur.execute("SELECT CAST(ts AS CHAR) FROM far WHERE id = 6")
        (year_one,) = cur.fetchone()
    conn.close()
    assert rows == ((5, dt.date(2024, 2, 29), Decimal("1.5000000000"), "P0M0DT0S"),
                    (6, dt.date(1, 1, 1), Decimal("1.5000000000"), "P0M0DT0S"))
    assert year_one == "0001-01-01 00:00:00.000000"
    assert sorted(x.payload["data"]["id"] for _, x in letters.got) == [1, 2, 3, 4]
    reasons = {x.payload["data"]["id"]: x.reason for _, x in letters.got}
    assert "'d': infinity is outside the years" in reasons[1]
    assert "'d': +10000-01-01" in reasons[3] and "'d': -0043-03-15" in reasons[4]
    assert all(x.origin.startswith(f"log offset {x.payload['data']['id'] - 1}, position ") for _, x in letters.got)


def test_mariadb_without_a_dead_letter_store_still_refuses_the_write(mysql_url: str) -> None:
    d = _maria(mysql_url, None)
    d.prepare(STREAM)
    with pytest.raises(FatalError, match=r"no dead-letter store; first: column 'd': infinity is outside the years"):
        d.write(STREAM, _batch(), last_offset=4)
    assert d.applied_offset(STREAM) == -1
    d.close()


def _pymysql_args(url: str) -> dict[str, Any]:
    from urllib.parse import unquote, urlsplit

    u = urlsplit(url)
    return {"host": u.hostname, "port": u.port, "user": unquote(u.username or "root"), "database": u.path.lstrip("/")}


def test_http_push_writes_far_dates_intervals_and_wide_decimals_losslessly() -> None:
    """Before: ``"infinityZ"`` and ``"-43-03-15T…"`` timestamps, intervals in DuckDB's prose."""
    receiver = Receiver().start()
    try:
        d = HttpDestination(DestinationConfig(name="push", type="http", url=receiver.url), ConnectorContext("p"))
        d.open()
        d.prepare(STREAM)
        d.write(STREAM, _batch(), last_offset=4)
        d.close()
        _check_json([r["data"] for r in receiver.records()])
    finally:
        receiver.stop()


def test_the_log_decodes_dates_before_christ_and_after_9999() -> None:
    """pgoutput prints them as ``0044-03-15 BC`` and ``10000-01-01``, which Arrow's parser
    refuses: before, the stream stopped with a FatalError it could never get past."""
    d = to_arrow(pa.array([b"0044-03-15 BC", b"10000-01-01", b"infinity", None, b"2024-02-29"]), pa.field("d", pa.date32()))
    assert d.cast(pa.int32()).to_pylist() == [_days("-0043-03-15"), _days("10000-01-01"), INF32, None, _days("2024-02-29")]
    texts = [b"0044-03-15 12:00:00.5+00 BC", b"10000-01-01 12:00:00+00", b"294000-12-31 23:59:59.999999+00", b"-infinity"]
    tz = to_arrow(pa.array(texts), pa.field("tz", pa.timestamp("us", tz="UTC")))
    assert tz.cast(pa.int64()).to_pylist() == [
        _micros("-0043-03-15T12:00:00.5"), _micros("10000-01-01T12:00:00"), _micros("294000-12-31T23:59:59.999999"), -INF64]
    with pytest.raises(ValueError, match="column 'ts'"):  # past Arrow's int64 microseconds (year 294247)
        to_arrow(pa.array([b"294270-01-01 00:00:00"]), pa.field("ts", pa.timestamp("us")))
