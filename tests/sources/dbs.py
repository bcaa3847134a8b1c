"""Per-dialect database handles and read helpers for the SQL source tests."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
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
        return {"postgres": "timestamp", "mysql": "datetime(6)", "sqlite": "DATETIME"}[self.kind]

    @property
    def text(self) -> str:
        return "varchar(200)" if self.kind == "mysql" else "text"

    # ------------------------------------------------------------- SQL
    def execute(self, *statements: str) -> None:
        if self.kind == "postgres":
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
        mark = "?" if self.kind == "sqlite" else "%s"
        sql = f"INSERT INTO {self.q(table)} ({cols}) VALUES ({', '.join([mark] * len(columns))})"
        if self.kind == "postgres":
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

    # ------------------------------------------------------------- sources
    def config(self, streams: Any = "all", **kw: Any) -> SourceConfig:
        return SourceConfig(type=self.kind, url=self.url, streams=streams, **kw)

    def source(self, streams: Any = "all", *, context: ConnectorContext | None = None, **kw: Any) -> Any:
        return source_class(self.kind)(self.config(streams, **kw), context or CONTEXT)

    def streams(self, streams: Any = "all", *, context: ConnectorContext | None = None, **kw: Any) -> tuple[Any, list]:
        """``(source, resolved streams)``; close the source when done."""
        cfg = self.config(streams, **kw)
        src = source_class(self.kind)(cfg, context or CONTEXT)
        try:
            return src, resolve_streams(cfg, src.discover())
        except BaseException:
            src.close()
            raise


def read_all(source: Any, stream: Any, position: Any = None) -> list[ReadBatch]:
    return list(source.read(stream, position))


def data_of(batches: list[ReadBatch]) -> pa.Table:
    """The data columns of the batches as one table."""
    table = pa.Table.from_batches([b.data for b in batches])
    return table.drop_columns(["_op", "_pos", "_ts"])


