"""A poison record or stream never wedges a destination (issue 9 item 8), through ``replicant run``:

* a value MariaDB (strict mode) rejects goes to the dead letters, the run exits 0 with a
  warning naming the count, every later run proceeds, and fixing the source row delivers it;
* a kill -9 between storing the dead letter and committing the rest loses and doubles nothing;
* a stream whose columns the destination cannot hold (names equal when case is ignored, an
  emoji MariaDB refuses) pauses alone, named in ``status``, and the other streams are delivered.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql
import pytest

from replicant.state.store import StateStore


def mysql_query(url: str, sql: str) -> list[tuple]:
    parts = urlsplit(url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port, user=unquote(parts.username or "root"),
                           database=unquote(parts.path.lstrip("/")), charset="utf8mb4", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def _cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``replicant ARGS``, or ``python -c CODE ARGS`` (CODE patches, then runs the CLI)."""
    cmd = [sys.executable, "-m", "replicant.cli", *args] if code is None else [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))


def _letters(tmp_path: Path, pipeline: str) -> list[dict]:
    with StateStore(f"sqlite:///{tmp_path / '.replicant' / pipeline / 'state.db'}") as st:
        return st.dead_letters(pipeline, limit=1000)


def _sqlite_source(tmp_path: Path) -> Path:
    src = tmp_path / "src.db"
    with sqlite3.connect(src) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, rev INTEGER NOT NULL)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?)", [(1, "ok", 1), (2, "far too long", 2), (3, "fine", 3)])
    return src


def test_a_value_mariadb_rejects_is_dead_lettered_and_every_later_run_proceeds(tmp_path: Path, mysql_url: str) -> None:
    src = _sqlite_source(tmp_path)
    mysql_query(mysql_url, "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(5), rev BIGINT NOT NULL)")
    p = tmp_path / "p.yml"
    p.write_text(
        f"pipeline: poison\nsource: {{type: sqlite, url: 'sqlite:///{src}', streams: [{{table: items, mode: cursor, cursor: rev}}]}}\n"
        f"destinations: [{{name: maria, type: mysql, url: '{mysql_url}'}}]\n"
    )
    r = _cli("run", str(p))
    assert r.returncode == 0, r.stderr
    assert "warning: 1 records of items rejected by maria: in dead letters" in r.stderr
    assert sorted(mysql_query(mysql_url, "SELECT id, name FROM items")) == [(1, "ok"), (3, "fine")]
    [letter] = _letters(tmp_path, "poison")
    assert "1265: Data truncated for column 'name'" in letter["reason"]  # MariaDB's own words
    assert letter["payload"]["data"]["name"] == "far too long" and letter["origin"].startswith("log offset ")

    again = _cli("run", str(p))  # nothing new at the source: nothing to do, no second dead letter
    assert again.returncode == 0, again.stderr
    assert "rejected" not in again.stderr
    assert len(_letters(tmp_path, "poison")) == 1

    with sqlite3.connect(src) as c:
        c.execute("UPDATE items SET name = 'short', rev = 4 WHERE id = 2")
    fixed = _cli("run", str(p))
    assert fixed.returncode == 0, fixed.stderr
    assert sorted(mysql_query(mysql_url, "SELECT id, name FROM items")) == [(1, "ok"), (2, "short"), (3, "fine")]
    assert len(_letters(tmp_path, "poison")) == 1


_KILL_AFTER_DEAD_LETTERS = """
import os, signal, sys
from replicant.destinations import _bad_records
real = _bad_records.set_aside
def set_aside(*args, **kwargs):
    kept = real(*args, **kwargs)          # the dead letters are stored
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the rows with the offset never commit
_bad_records.set_aside = set_aside
from replicant.cli import main
sys.argv = ["replicant", *sys.argv[1:]]
main()
"""


def test_kill_between_dead_letter_and_commit_neither_loses_nor_doubles(tmp_path: Path) -> None:
    src = _sqlite_source(tmp_path)
    dst = tmp_path / "dst.sqlite"
    with sqlite3.connect(dst) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT CHECK (length(name) <= 5), rev INTEGER NOT NULL)")
    p = tmp_path / "p.yml"
    p.write_text(
        f"pipeline: crash\nsource: {{type: sqlite, url: 'sqlite:///{src}', streams: [{{table: items, mode: cursor, cursor: rev}}]}}\n"
        f"destinations: [{{name: lite, type: sqlite, path: '{dst}'}}]\n"
    )
    killed = _cli("run", str(p), code=_KILL_AFTER_DEAD_LETTERS)
    assert killed.returncode == -9, killed.stderr
    assert len(_letters(tmp_path, "crash")) == 1
    with sqlite3.connect(dst) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone() == (0,)
    r = _cli("run", str(p))
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(dst) as c:
        assert sorted(c.execute("SELECT id, name FROM items").fetchall()) == [(1, "ok"), (3, "fine")]
    [letter] = _letters(tmp_path, "crash")
    assert letter["payload"]["data"]["name"] == "far too long" and "CHECK constraint failed" in letter["reason"]


@pytest.mark.parametrize("kind", ["mysql", "duckdb"])
def test_a_stream_the_destination_cannot_hold_pauses_alone(tmp_path: Path, pg_url: str, kind: str, request: pytest.FixtureRequest) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE good (id int PRIMARY KEY, name text)")
        c.execute("INSERT INTO good VALUES (1, 'a'), (2, 'b')")
        c.execute('CREATE TABLE clash (id int PRIMARY KEY, "Name" text, "name" text)')
        c.execute("INSERT INTO clash VALUES (1, 'A', 'a')")
        c.execute('CREATE TABLE emoji (id int PRIMARY KEY, "\N{GRINNING FACE}" text)')
        c.execute("INSERT INTO emoji VALUES (1, 'x')")
    if kind == "mysql":
        url = request.getfixturevalue("mysql_url")
        dest = f"{{name: d, type: mysql, url: '{url}'}}"
    else:
        dest = f"{{name: d, type: duckdb, path: '{tmp_path / 'w.duckdb'}'}}"
    p = tmp_path / "p.yml"
    p.write_text(f"pipeline: streams\nsource: {{type: postgres, url: '{pg_url}', streams: [good, clash, emoji]}}\ndestinations: [{dest}]\n")
    r = _cli("run", str(p))
    assert r.returncode != 0  # a stream is paused: the run says so
    if kind == "mysql":
        assert sorted(mysql_query(url, "SELECT id, name FROM good")) == [(1, "a"), (2, "b")]
    else:
        import duckdb

        with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
            assert sorted(con.execute("SELECT id, name FROM good").fetchall()) == [(1, "a"), (2, "b")]
    with StateStore(f"sqlite:///{tmp_path / '.replicant' / 'streams' / 'state.db'}") as st:
        paused = st.pipeline_state("streams").tenant().paused
    assert ("d", "good") not in paused
    reason = paused[("d", "clash")].reason
    assert "'Name' and 'name' are one column name" in reason and "exclude:" in reason
    if kind == "mysql":
        assert "'\N{GRINNING FACE}' hold characters beyond U+FFFF" in paused[("d", "emoji")].reason
        assert "stream 'emoji'" in paused[("d", "emoji")].reason and "exclude:" in paused[("d", "emoji")].reason
    s = _cli("status", str(p))
    assert "clash" in s.stdout and "paused" in s.stdout.lower()
