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
#: The files source (:mod:`replicant.sources.files`): Parquet files in a folder, exported from
#: a DuckDB file that the tests change with SQL, like the toy source's.
FILES = "files"

#: The context of a source in these tests: a pipeline name and no work dir.
CONTEXT = ConnectorContext(pipeline="test")


@dataclass
class Db:
    kind: str  #: postgres | mysql | sqlite
    url: str

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
                FILES: "TIMESTAMP"}[self.kind]

    @property
    def text(self) -> str:
        return "varchar(200)" if self.kind == "mysql" else "text"

    # ------------------------------------------------------------- SQL
    def execute(self, *statements: str) -> None:
        if self.kind in (TOY, FILES):
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
        mark = "?" if self.kind in ("sqlite", TOY, FILES) else "%s"
        sql = f"INSERT INTO {self.q(table)} ({cols}) VALUES ({', '.join([mark] * len(columns))})"
        if self.kind in (TOY, FILES):
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
        if self.kind in (TOY, FILES):
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
        return Db(self.kind, self.url.rstrip("/") + "-missing")

    def where(self) -> str:
        """What a connection error must name: ``host:port``, or the file or folder."""
        if self.kind in ("postgres", "mysql"):
            p = urlsplit(self.url)
            return f"{p.hostname}:{p.port}"
        return self.url.removeprefix("sqlite:///")

    # ------------------------------------------------------------- sources
    def config(self, streams: Any = "all", **kw: Any) -> SourceConfig:
        if self.kind == TOY:
            return SourceConfig(type=self.kind, streams=streams, folder=self.url, **kw)
        if self.kind == FILES:
            return SourceConfig(type="files", url=self.url, streams=_file_streams(self.url, streams), **kw)
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


def read_all(source: Any, stream: Any, position: Any = None) -> list[ReadBatch]:
    return list(source.read(stream, position))


def data_of(batches: list[ReadBatch]) -> pa.Table:
    """The data columns of the batches as one table."""
    table = pa.Table.from_batches([b.data for b in batches])
    return table.drop_columns(["_op", "_pos", "_ts"])


