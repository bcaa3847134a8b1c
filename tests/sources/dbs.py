"""Per-dialect database handles and read helpers for the SQL source tests."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pyarrow as pa
import pymysql

from replicant.config import SourceConfig
from replicant.model import ConnectorContext
from replicant.registry import source_class
from replicant.sources.base import ReadBatch
from replicant.sources.select import resolve_streams

KINDS = ["postgres", "mysql", "sqlite"]
#: The non-SQL toy source (:mod:`.toy`): Arrow files in a folder, kept in step with a DuckDB
#: file that the tests change with SQL (the source itself never sees SQL).
TOY = "arrow"
#: The http source, reading the toy source's Arrow files through a real API (:mod:`.http_api`,
#: ``/db/<table>``, pages linked by ``Link`` headers, bearer auth): the handle declares what a
#: user of an API declares (each table's path, key and column types), the source reads JSON.
HTTP = "http"
#: The singer source, running a Singer tap over the toy source's Arrow files
#: (:mod:`.singer_toy_tap`); it reads through its change feed (``log`` streams), see :func:`reads`.
SINGER = "singer"
#: The files source (:mod:`replicant.sources.files`): Parquet files in a folder, exported from
#: a DuckDB file that the tests change with SQL, like the toy source's.
FILES = "files"
#: Kinds whose test data lives in the toy store (a DuckDB file exported to Arrow files).
_TOY_STORE = (TOY, HTTP, SINGER, FILES)

#: The context of a source in these tests: a pipeline name and no work dir.
CONTEXT = ConnectorContext(pipeline="test")


@dataclass
class Db:
    kind: str  #: postgres | mysql | sqlite | arrow | http
    url: str  #: a URL, or the folder of the toy store (arrow, http)
    api: str | None = None  #: http: the API's base URL
    token: str | None = None  #: http: the bearer token the handle sends

    # ------------------------------------------------------------- names
    def t(self, snake: str) -> str:
        """A Chinook table name in this dialect (PG snake_case, else PascalCase)."""
        return snake if self.kind == "postgres" else "".join(p.capitalize() for p in snake.split("_"))

    c = t  #: a Chinook column name (``album_id`` / ``AlbumId``) follows the same rule

    def q(self, name: str) -> str:
        if self.kind == "mysql":
            return "`" + name.replace("`", "``") + "`"
        return '"' + name.replace('"', '""') + '"'

    # ------------------------------------------------------------- DDL words
    @property
    def timestamp(self) -> str:
        return {"postgres": "timestamp", "mysql": "datetime(6)", "sqlite": "DATETIME", TOY: "TIMESTAMP",
                HTTP: "TIMESTAMP", SINGER: "TIMESTAMP", FILES: "TIMESTAMP"}[self.kind]

    @property
    def text(self) -> str:
        return "varchar(200)" if self.kind == "mysql" else "text"

    # ------------------------------------------------------------- SQL
    def execute(self, *statements: str) -> None:
        if self.kind in _TOY_STORE:
            with _toy_store(self.url, self.kind) as con:
                for s in statements:
                    con.execute(s)
        elif self.kind == "postgres":
            with psycopg.connect(self.url, autocommit=True) as conn:
                for s in statements:
                    conn.execute(s)
        elif self.kind == "mysql":
            p = urlsplit(self.url)
            conn = pymysql.connect(host=p.hostname, port=p.port, user=p.username, password=p.password or "",
                                   database=p.path.lstrip("/"), charset="utf8mb4", autocommit=True)
            try:
                with conn.cursor() as cur:
                    for s in statements:
                        cur.execute(s)
            finally:
                conn.close()
        else:
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                for s in statements:
                    conn.execute(s)
                conn.commit()
            finally:
                conn.close()

    def insert(self, table: str, columns: list[str], rows: list[tuple]) -> None:
        """Inserts ``rows`` with the driver's parameters (values never in the SQL text)."""
        cols = ", ".join(self.q(c) for c in columns)
        mark = "?" if self.kind in ("sqlite", *_TOY_STORE) else "%s"
        sql = f"INSERT INTO {self.q(table)} ({cols}) VALUES ({', '.join([mark] * len(columns))})"
        if self.kind in _TOY_STORE:
            with _toy_store(self.url, self.kind) as con:
                con.executemany(sql, rows)
        elif self.kind == "postgres":
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.cursor().executemany(sql, rows)
        elif self.kind == "mysql":
            p = urlsplit(self.url)
            conn = pymysql.connect(host=p.hostname, port=p.port, user=p.username, password=p.password or "",
                                   database=p.path.lstrip("/"), charset="utf8mb4", autocommit=True)
            try:
                with conn.cursor() as cur:
                    cur.executemany(sql, rows)
            finally:
                conn.close()
        else:
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                conn.executemany(sql, rows)
                conn.commit()
            finally:
                conn.close()

    def scalar(self, sql: str) -> Any:
        if self.kind in _TOY_STORE:
            with _toy_store(self.url, self.kind) as con:
                return con.execute(sql).fetchone()[0]
        if self.kind == "postgres":
            with psycopg.connect(self.url) as conn:
                return conn.execute(sql).fetchone()[0]
        if self.kind == "mysql":
            p = urlsplit(self.url)
            conn = pymysql.connect(host=p.hostname, port=p.port, user=p.username, password=p.password or "",
                                   database=p.path.lstrip("/"), charset="utf8mb4")
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return cur.fetchone()[0]
            finally:
                conn.close()
        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()

    # ------------------------------------------------------------- credentials
    def with_bad_credentials(self, secret: str) -> Db:
        """The same server (or a missing file or folder) with credentials that cannot work."""
        if self.kind in ("postgres", "mysql"):
            scheme, rest = self.url.split("://", 1)
            return Db(self.kind, f"{scheme}://nobody_here:{secret}@{rest.split('@', 1)[1]}")
        if self.kind in (HTTP, SINGER):
            return Db(self.kind, self.url, self.api, secret)
        return Db(self.kind, self.url.rstrip("/") + "-missing")

    def where(self) -> str:
        """What a connection error must name: ``host:port``, or the file or folder."""
        if self.kind in ("postgres", "mysql"):
            p = urlsplit(self.url)
            return f"{p.hostname}:{p.port}"
        if self.kind == HTTP:
            return urlsplit(str(self.api)).netloc
        if self.kind == SINGER:
            return self.url
        return self.url.removeprefix("sqlite:///")

    # ------------------------------------------------------------- sources
    def config(self, streams: Any = "all", **kw: Any) -> SourceConfig:
        if self.kind == TOY:
            return SourceConfig(type=self.kind, streams=streams, folder=self.url, **kw)
        if self.kind == FILES:
            return SourceConfig(type="files", url=self.url, streams=_file_streams(self.url, streams), **kw)
        if self.kind == HTTP:
            return self._api_config(streams, **kw)
        if self.kind == SINGER:
            import sys

            tap = [sys.executable, str(Path(__file__).with_name("singer_toy_tap.py"))]
            every = kw.pop("batch_size", 1000)
            return SourceConfig.model_validate({"type": "singer", "command": tap, "streams": streams, "config": {
                "folder": self.url, "password": self.token, "state_every": every}, **kw})
        return SourceConfig(type=self.kind, url=self.url, streams=streams, **kw)

    def source(self, streams: Any = "all", *, context: ConnectorContext | None = None, **kw: Any) -> Any:
        return _class(self.kind)(self.config(streams, **kw), context or CONTEXT)

    def streams(self, streams: Any = "all", *, context: ConnectorContext | None = None, **kw: Any) -> tuple[Any, list]:
        """``(source, resolved streams)``; close the source when done."""
        cfg = self.config(streams, **kw)
        src = _class(self.kind)(cfg, context or CONTEXT)
        try:
            return src, resolve_streams(cfg, src.discover())
        except BaseException:
            src.close()
            raise


    def _api_config(self, streams: Any, batch_size: int = 100, **kw: Any) -> SourceConfig:
        """The http source's config for the toy store's tables: each ``streams`` entry (or every
        table for ``all``, or a probe when there is none) with its path, key and column types."""
        from urllib.parse import quote

        listed = [p.stem for p in sorted(Path(self.url).glob("*.arrow"))] if streams == "all" else list(streams)
        entries = []
        for item in listed or ["probe"]:
            given = dict(item) if isinstance(item, dict) else {}
            name = str(given.pop("table", item))
            path = Path(self.url) / f"{name}.arrow"
            entry: dict[str, Any] = {"name": name, "path": "/db/" + quote(name, safe="")}
            if path.is_file():
                schema = pa.ipc.open_file(path).schema
                entry["primary_key"] = [k for k in (schema.metadata or {}).get(b"primary_key", b"").decode().split(",") if k]
                entry["schema"] = {f.name: _api_type(f.type) for f in schema}
            entries.append({**entry, **given})
        return SourceConfig.model_validate({
            "type": "http", "base_url": self.api, "streams": entries, "params": {"limit": batch_size},
            "paginate": {"type": "link_header"}, "auth": {"type": "bearer", "token": self.token}, **kw})


def _api_type(t: pa.DataType) -> str:
    """The ``schema:`` type an API user declares for a column of this Arrow type."""
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "number"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_boolean(t):
        return "boolean"
    return "string"


def db_for(kind: str, request: Any) -> Db:
    """A fresh, empty database of ``kind`` for the test of ``request`` (dropped afterwards)."""
    if kind == "postgres":
        return Db(kind, request.getfixturevalue("pg_url"))
    if kind == "mysql":
        return Db(kind, request.getfixturevalue("mysql_url"))
    if kind in (TOY, FILES):
        folder = request.getfixturevalue("tmp_path") / kind
        folder.mkdir()
        return Db(kind, str(folder))
    if kind == SINGER:
        from .singer_toy_tap import PASSWORD

        folder = request.getfixturevalue("tmp_path") / "tap"
        folder.mkdir()
        return Db(kind, str(folder), None, PASSWORD)
    if kind == HTTP:
        from .http_api import TOKEN, Api

        folder = request.getfixturevalue("tmp_path") / "api"
        folder.mkdir()
        api = Api(auth="bearer", folder=str(folder)).start()
        request.addfinalizer(api.stop)
        return Db(kind, str(folder), api.url, TOKEN)
    path = request.getfixturevalue("sqlite_path")
    sqlite3.connect(path).close()
    return Db(kind, "sqlite:///" + str(Path(path).resolve()))


def _class(kind: str) -> Any:
    if kind == TOY:
        from .toy import ArrowFolderSource

        return ArrowFolderSource
    return source_class(kind)


def _file_streams(folder: str, streams: Any) -> list[dict[str, Any]]:
    """``streams:`` of the files source over the Parquet exports: each table's file, mode full
    (the suite reads snapshots), its key from the DuckDB file (the origin columns left out of a
    keyed stream: a key identifies its rows across files)."""
    keys: dict[str, list[str]] = {}
    store = Path(folder) / "store.duckdb"
    if store.exists():
        import duckdb

        with duckdb.connect(str(store), read_only=True) as con:
            keys = {t: list(cols) for t, cols in con.execute(
                "SELECT table_name, constraint_column_names FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'"
            ).fetchall()}
            names = [n for (n,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    else:
        names = []
    listed = names if streams == "all" else list(streams)
    out = []
    for name in listed:
        entry: dict[str, Any] = {"name": name, "glob": f"{name}.parquet", "mode": "full"}
        if keys.get(name):
            entry.update(primary_key=keys[name], exclude=["_file", "_line"])
        out.append(entry)
    return out


@contextlib.contextmanager
def _toy_store(folder: str, kind: str = TOY) -> Iterator[Any]:
    """The toy (or files) source's DuckDB file; on leaving, every table is exported to
    ``<table>.arrow`` (key columns in the schema metadata; ``<table>.parquet`` for the files
    source), replaced atomically."""
    import duckdb

    con = duckdb.connect(str(Path(folder) / "store.duckdb"))
    try:
        yield con
        keys = {t: ",".join(cols) for t, cols in con.execute(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'"
        ).fetchall()}
        for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            table = con.sql("SELECT * FROM " + '"' + name.replace('"', '""') + '"').to_arrow_table()
            if kind == FILES:
                import pyarrow.parquet as pq

                tmp = Path(folder) / f"{name}.parquet.tmp"
                pq.write_table(table, tmp, row_group_size=5)
                os.replace(tmp, Path(folder) / f"{name}.parquet")
                continue
            table = table.replace_schema_metadata({"primary_key": keys.get(name, "")})
            tmp = Path(folder) / f"{name}.arrow.tmp"
            with pa.ipc.new_file(tmp, table.schema) as w:
                w.write_table(table)
            os.replace(tmp, Path(folder) / f"{name}.arrow")
    finally:
        con.close()


def reads(source: Any, stream: Any, position: Any = None) -> Iterator[ReadBatch]:
    """``stream`` read after ``position``: by :meth:`~replicant.sources.base.Source.read`, or, for
    a ``log`` stream, by the source's change feed (``capture``, resumed from ``position``), each
    change set as one batch (empty when it only moves the position)."""
    if stream.mode != "log":
        yield from source.read(stream, position)
        return
    import threading

    feed = source.capture([stream], {stream.name: None}, resume=position, follow=False, stop=threading.Event())
    try:
        for cs in feed:
            batch = cs.batches.get(stream.name)
            if batch is None:
                batch = pa.RecordBatch.from_pylist([], schema=stream.change_schema)
            yield ReadBatch(batch, cs.position)
    finally:
        feed.close()


def read_all(source: Any, stream: Any, position: Any = None) -> list[ReadBatch]:
    return list(reads(source, stream, position))


def data_of(batches: list[ReadBatch]) -> pa.Table:
    """The data columns of the batches as one table."""
    table = pa.Table.from_batches([b.data for b in batches])
    return table.drop_columns(["_op", "_pos", "_ts"])


