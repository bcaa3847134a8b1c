"""Issue 9: every type of the PostgreSQL round-trip matrix, plus the values ordinary text
cannot show (``±infinity``, years after 9999, years before Christ, decimals wider than 38
digits and with a scale of 60, intervals, arrays with NULL elements), with an update that
leaves a TOASTed column unchanged, through ``mode: log`` (snapshot, then inserts and the
update from the replication stream) into every destination type in one engine run.

Each value read back from each destination must be exactly the source's, or its documented
lossless form (docs/types.md, *Values outside ordinary ranges*), or be in the dead letters
with its origin. The expected forms are written out here, per destination family, from the
source's own text (PostgreSQL ``::text`` under ``IntervalStyle = iso_8601``): a value the
test does not know a form for fails it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pymysql
import pytest

from destinations.test_nats_dest import _admin as nats_admin
from destinations.test_nats_dest import _messages as nats_messages
from http_receiver import Receiver
from replicant.config import parse
from replicant.engine import Engine
from replicant.state import StateStore

from .test_pg_log import TYPES_DDL, TYPES_ROWS

_BIG = "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 256) g"  # 8 kB, stored out of line (TOAST)

#: The columns beyond the matrix: values outside ordinary ranges.
FAR_DDL = (
    "ALTER TABLE alltypes ADD d_far date, ADD ts_far timestamp, ADD tz_far timestamptz, "
    "ADD n_wide numeric(50,10), ADD n_scale numeric(70,60), ADD big text",
    "ALTER TABLE alltypes ALTER big SET STORAGE EXTERNAL",
)
FAR_ROWS = (
    "INSERT INTO alltypes (id, d_far, ts_far, tz_far, n_wide, n_scale) VALUES "
    "(5, 'infinity', 'infinity', '-infinity', 0, 0), "
    "(6, '10000-01-01', '10000-01-01 12:00:00.5', '294000-12-31 23:59:59.999999+00', "
    " 1234567890123456789012345678901234567890.0123456789, 0.000000000000000000000000000000000000000000000000000000000001), "
    "(7, '0044-03-15 BC', '0044-03-15 12:00:00 BC', '0001-01-01 00:00:00+00 BC', -0.0000000001, -1.5), "
    "(8, '-infinity', '-infinity', 'infinity', NULL, NULL)"
)

DATA_COLUMNS = [
    "id", "i2", "i4", "i8", "n_big", "n_free", "n_small", "f4", "f8", "t", "vc", "ch", "b", "d", "tm", "ts", "tstz",
    "iv", "u", "j", "jb", "by", "ai", "at", "m", "an", "tmtz", "money1", "inet1", "ma",
    "d_far", "ts_far", "tz_far", "n_wide", "n_scale", "big",
]


def _exec(url: str, *sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for s in sql:
            c.execute(s)


def _source_text(url: str) -> dict[int, dict[str, str | None]]:
    """Every value as PostgreSQL's text (UTC, ISO dates, ISO 8601 intervals), by id."""
    with psycopg.connect(url) as c:
        c.execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'; SET DateStyle = 'ISO, YMD'")
        cols = ", ".join(f'"{n}"::text' for n in DATA_COLUMNS)
        rows = c.execute(f"SELECT {cols} FROM alltypes ORDER BY id").fetchall()
    return {int(r[0]): dict(zip(DATA_COLUMNS, r)) for r in rows}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def nats_stream(nats_url: str, unique_name: str) -> Iterator[str]:
    name = f"M_{unique_name}"
    yield name
    try:
        nats_admin(nats_url, lambda js: js.delete_stream(name))
    except Exception:  # noqa: BLE001 - never created
        pass


def test_every_value_through_the_log_into_every_destination(
    tmp_path: Path, pg_url: str, pg_server: Any, mysql_url: str, nats_url: str, nats_stream: str,
    receiver: Receiver, pipeline_name: str, unique_name: str,
) -> None:
    _exec(pg_url, TYPES_DDL, *FAR_DDL, TYPES_ROWS, FAR_ROWS, f"UPDATE alltypes SET big = ({_BIG}) WHERE id IN (1, 6, 7)")
    dst_pg = f"d_{unique_name}"[:60]
    pg_server.create_database(dst_pg)
    out = tmp_path / "out"
    data = {
        "pipeline": pipeline_name,
        "source": {"type": "postgres", "url": pg_url, "flush_interval": 0.1,
                   "streams": [{"table": "public.alltypes", "mode": "log"}]},
        "destinations": [
            {"name": "pg", "type": "postgres", "url": pg_server.url(dst_pg), "write": "merge"},
            {"name": "maria", "type": "mysql", "url": mysql_url, "write": "merge"},
            {"name": "duck", "type": "duckdb", "path": str(tmp_path / "d.duckdb"), "write": "merge"},
            {"name": "lite", "type": "sqlite", "path": str(tmp_path / "d.sqlite"), "write": "merge"},
            {"name": "pq", "type": "files", "path": str(out / "pq"), "format": "parquet", "partition": "none"},
            {"name": "csv", "type": "files", "path": str(out / "csv"), "format": "csv", "partition": "none"},
            {"name": "jsonl", "type": "files", "path": str(out / "jsonl"), "format": "jsonl", "partition": "none"},
            {"name": "push", "type": "http", "url": receiver.url},
            {"name": "bus", "type": "nats", "url": nats_url, "subject": f"m.{unique_name}.{{stream}}",
             "stream_name": nats_stream},
        ],
    }
    try:
        cfg = parse(data, base_dir=tmp_path)
        first = Engine(cfg).run()  # the snapshot
        assert first.rows_read, first
        # through the log: every row again (ids + 10), then an update that leaves `big` TOASTed and unchanged
        _exec(pg_url, "INSERT INTO alltypes SELECT id + 10, i2, i4, i8, n_big, n_free, n_small, f4, f8, t, vc, ch, b, d, tm, "
                      "ts, tstz, iv, u, j, jb, by, ai, at, m, an, tmtz, money1, inet1, ma, d_far, ts_far, tz_far, n_wide, "
                      "n_scale, big FROM alltypes",
              "UPDATE alltypes SET i2 = 7 WHERE id IN (11, 16, 17)")
        second = Engine(cfg).run()
        src = _source_text(pg_url)
        with StateStore(f"sqlite:///{tmp_path / '.replicant' / pipeline_name / 'state.db'}") as st:
            letters = st.dead_letters(pipeline_name, limit=1000)
        assert first.ok and second.ok, (first.errors, second.errors)
        assert second.rows_read == {"public.alltypes": 11}, "8 inserts and 3 updates came through the log"
        got = {
            "pg": _source_text(pg_server.url(dst_pg)),
            "maria": _maria_rows(mysql_url),
            "duck": _duck_rows(tmp_path / "d.duckdb"),
            "lite": _lite_rows(tmp_path / "d.sqlite"),
            "pq": _files_rows(out / "pq", "parquet"),
            "csv": _files_rows(out / "csv", "csv"),
            "jsonl": _files_rows(out / "jsonl", "jsonl"),
            "push": _records(receiver.records()),
            "bus": _records([m.body for m in nats_messages(nats_url, nats_stream)]),
        }
        refused = {"maria": {i for i, row in src.items() if _maria_cannot_hold(row)},
                   "lite": {i for i, row in src.items() if "NaN" in (row["f4"], row["f8"])}}
        assert refused["maria"] == {2, 4, 5, 6, 7, 8, 12, 14, 15, 16, 17, 18}
        assert refused["lite"] == {2, 12}
        for dest, rows in got.items():
            held = set(src) - refused.get(dest, set())
            assert set(rows) == held, dest
            for i in held:
                for col in DATA_COLUMNS:
                    want, have = _canon(col, src[i][col]), _canon(col, rows[i].get(col))
                    assert have == want, (dest, i, col, src[i][col], rows[i].get(col))
        # the rows a destination cannot hold are in the dead letters, each with its origin and why
        for dest, ids in refused.items():
            mine = [x for x in letters if x["destination"] == dest]
            updated = [i for i in (11, 16, 17) if i in ids]  # the insert and the update of each
            assert sorted(x["payload"]["data"]["id"] for x in mine) == sorted([*ids, *updated]), dest
            assert all(re.fullmatch(r'log offset \d+, position \{"lsn": \d+.*\}', x["origin"]) for x in mine), mine
            assert all("cannot be stored" in x["reason"] or "outside the years" in x["reason"] for x in mine)
        assert {x["destination"] for x in letters} == {"maria", "lite"}
        for i in (11, 16, 17):  # updates that left the TOASTed value out: re-read by key, far values and all
            assert src[i]["i2"] == "7" and len(src[i]["big"]) == 8192
            assert got["jsonl"][i]["_op"] == "update" and got["jsonl"][i]["big"] == src[i]["big"]
    finally:
        pg_server.drop_database(dst_pg)


_KINDS = {
    "id": "int", "i2": "int", "i4": "int", "i8": "int", "n_big": "dec", "n_free": "dec", "n_small": "dec", "n_wide": "dec",
    "n_scale": "dec", "money1": "dec", "f4": "float", "f8": "float", "t": "text", "vc": "text", "m": "text", "tmtz": "text",
    "inet1": "text", "u": "text", "big": "text", "ch": "char", "b": "bool", "d": "date", "d_far": "date", "ts": "ts",
    "ts_far": "ts", "tstz": "ts", "tz_far": "ts", "tm": "time", "iv": "interval", "j": "json", "jb": "json", "by": "bytes",
    "ai": "list:int", "at": "list:text", "an": "list:dec", "ma": "list:text",
}

_STAMP = re.compile(
    r"^(?P<sign>[+-])?(?P<y>\d{4,})-(?P<mo>\d\d)-(?P<d>\d\d)(?P<bc1> \(BC\))?"
    r"(?:[ T](?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)(?:\.(?P<f>\d+))?)?(?:Z|[+-]00(?::00)?)?(?P<bc2> BC)?$"
)
_ISO_INTERVAL = re.compile(
    r"^P(?:(?P<y>-?\d+)Y)?(?:(?P<mo>-?\d+)M)?(?:(?P<d>-?\d+)D)?(?:T(?:(?P<h>-?\d+)H)?(?:(?P<mi>-?\d+)M)?(?:(?P<s>-?[\d.]+)S)?)?$"
)


def _year(y: int) -> str:
    return f"+{y}" if y > 9999 else (f"-{-y:04d}" if y < 0 else f"{y:04d}")


def _stamp(v: Any) -> str:
    """A date or timestamp in the documented lossless text (astronomical years, ``+`` after
    9999, six fraction digits), from any destination's spelling of it."""
    if isinstance(v, dt.datetime):
        v = v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo else v
        return f"{v.year:04d}-{v:%m-%dT%H:%M:%S}.{v.microsecond:06d}"
    if isinstance(v, dt.date):
        return v.isoformat()
    if v in ("infinity", "-infinity"):
        return v
    m = _STAMP.match(v)
    assert m, v
    year = -int(m["y"]) if m["sign"] == "-" else int(m["y"])
    if m["bc1"] or m["bc2"]:
        year = 1 - year
    text = f"{_year(year)}-{m['mo']}-{m['d']}"
    if m["h"]:
        text += f"T{m['h']}:{m['mi']}:{m['s']}.{(m['f'] or '').ljust(6, '0')}"
    return text


def _interval(v: Any) -> tuple[int, int, int]:
    """(months, days, microseconds) of an interval, from ISO 8601 text, DuckDB's parts or the Parquet struct."""
    if isinstance(v, str) and v.startswith("P"):
        m = _ISO_INTERVAL.match(v)
        assert m, v
        n = {k: (m[k] or "0") for k in ("y", "mo", "d", "h", "mi")}
        micros = round(Decimal(m["s"] or "0") * 1_000_000) + (int(n["h"]) * 60 + int(n["mi"])) * 60_000_000
        return int(n["y"]) * 12 + int(n["mo"]), int(n["d"]), micros
    parts = json.loads(v) if isinstance(v, str) else v
    if isinstance(parts, dict):
        return parts["months"], parts["days"], parts["nanoseconds"] // 1000
    return tuple(parts)  # type: ignore[return-value]


def _pg_array(text: str) -> list[str | None]:
    from replicant.sources.postgres.pgoutput import _parse_array

    return [None if e is None else e.decode() for e in _parse_array(text)]


def _canon(col: str, v: Any) -> Any:
    """A value in one comparable form, whatever its destination's spelling (see the module doc)."""
    if v is None:
        return None
    kind = _KINDS[col]
    if kind == "int":
        return int(v)
    if kind == "dec":
        return format(v, "f") if isinstance(v, Decimal) else str(v).replace("$", "").replace(",", "")
    if kind == "float":
        return repr(float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(v, v)) if isinstance(v, str) else float(v))
    if kind == "char":
        return v.ljust(5)  # char(n)::text drops the padding every destination keeps
    if kind == "bool":
        return v in (True, 1, "true", "t", "1")
    if kind in ("date", "ts"):
        return _stamp(v)
    if kind == "time":
        if isinstance(v, dt.timedelta):
            v = (dt.datetime(2000, 1, 1) + v).strftime("%H:%M:%S.%f")
        return v.rstrip("0").rstrip(".") if "." in v else v
    if kind == "interval":
        return _interval(v)
    if kind == "json":
        return json.loads(v) if isinstance(v, str) else v
    if kind == "bytes":
        if isinstance(v, bytes):
            return v
        if v.startswith("\\x") and not v.startswith("\\x", 4):  # PostgreSQL hex
            return bytes.fromhex(v[2:])
        if v.startswith("\\x") or v == "":  # DuckDB's escapes
            return v.encode().decode("unicode_escape").encode("latin-1")
        return base64.b64decode(v)
    if kind.startswith("list:"):
        items = v if isinstance(v, list) else (_pg_array(v) if v.startswith("{") else json.loads(v))
        if kind == "list:int":
            return [None if x is None else int(x) for x in items]
        if kind == "list:dec":  # inside JSON arrays decimals are numbers (docs/types.md)
            return [None if x is None else Decimal(str(x)).normalize() for x in items]
        return items
    return v


def _maria_cannot_hold(row: dict[str, str | None]) -> bool:
    """MariaDB has no NaN/infinity floats and no dates outside 0001–9999 (nor infinity)."""
    floats = {row["f4"], row["f8"]} & {"NaN", "Infinity", "-Infinity"}
    stamps = [row[c] for c in ("d", "ts", "tstz", "d_far", "ts_far", "tz_far") if row[c] is not None]
    return bool(floats) or any(_stamp(v)[0] in "+-i" for v in stamps)


def _maria_rows(url: str) -> dict[int, dict[str, Any]]:
    from urllib.parse import urlsplit
    u = urlsplit(url)
    with pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password or "", database=u.path[1:]) as c:
        cur = c.cursor(pymysql.cursors.DictCursor)
        cur.execute("SELECT * FROM alltypes")
        return {int(r["id"]): r for r in cur.fetchall()}


def _duck_select(c: duckdb.DuckDBPyConnection, relation: str) -> list[dict[str, Any]]:
    """Every row of ``relation`` as text: lists and structs as JSON, intervals as their
    (months, days, microseconds) parts, everything else ``CAST(… AS VARCHAR)``."""
    c.execute("SET TimeZone = 'UTC'")
    described = c.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    exprs = []
    for name, typ, *_ in described:
        q = f'"{name}"'
        if typ.endswith("[]") or typ.startswith("STRUCT"):
            exprs.append(f"CAST(to_json({q}) AS VARCHAR)")
        elif typ == "INTERVAL":
            exprs.append(f"CASE WHEN {q} IS NOT NULL THEN CAST([datepart('year', {q}) * 12 + datepart('month', {q}), datepart('day', {q}), "
                         f"datepart('hour', {q}) * 3600000000 + datepart('minute', {q}) * 60000000 "
                         f"+ datepart('microseconds', {q})] AS VARCHAR) END")
        else:
            exprs.append(f"CAST({q} AS VARCHAR)")
    names = [d[0] for d in described]
    return [dict(zip(names, r)) for r in c.execute(f"SELECT {', '.join(exprs)} FROM {relation}").fetchall()]


def _duck_rows(path: Path) -> dict[int, dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as c:
        return {int(r["id"]): r for r in _duck_select(c, "alltypes")}


def _lite_rows(path: Path) -> dict[int, dict[str, Any]]:
    with sqlite3.connect(path) as c:
        c.row_factory = sqlite3.Row
        rows = c.execute("SELECT * FROM alltypes").fetchall()
    return {int(r["id"]): dict(r) for r in rows}


def _files_rows(root: Path, fmt: str) -> dict[int, dict[str, Any]]:
    """The last version of each row in the change files (named by log offsets, so in order)."""
    out: dict[int, dict[str, Any]] = {}
    for f in sorted(root.rglob(f"*.{fmt}"), key=lambda p: p.name):
        if fmt == "parquet":  # read by DuckDB, which reads Arrow's ±(2^31-1) days, ±(2^63-1) µs as ±infinity
            with duckdb.connect() as c:
                rows = _duck_select(c, f"read_parquet('{f}')")
            exact = pq.read_table(f)  # DuckDB reads decimals wider than 38 digits as DOUBLE: pyarrow reads them exactly
            for field in exact.schema:
                if pa.types.is_decimal(field.type) and field.type.precision > 38:
                    for r, x in zip(rows, exact[field.name].to_pylist()):
                        r[field.name] = x
        elif fmt == "csv":  # every column as text; an unquoted empty field is NULL, "" the empty string
            names = f.read_text().splitlines()[0].replace('"', "").split(",")
            options = pcsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True, null_values=[""],
                                          quoted_strings_can_be_null=False)
            rows = pcsv.read_csv(f, convert_options=options).to_pylist()
        else:
            rows = [json.loads(line) for line in f.read_text().splitlines()]
        for r in rows:
            out[int(r["id"])] = r
    return out


def _records(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for r in records:
        out[int(r["data"]["id"])] = r["data"]
    return out
