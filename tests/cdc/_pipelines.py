"""Helpers for the end-to-end ``mode: log`` tests: follow processes, a random writer, the
slot's confirmed position against what is durable, and destination databases.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from replicant.engine import CAPTURE_CHECKPOINT
from replicant.log import open_log
from replicant.state import StateStore

__all__ = [
    "Follow",
    "RandomWriter",
    "confirmed_lsn",
    "dest_database",
    "durable_lsn",
    "exec_sql",
    "fingerprint",
    "make_crash_source",
    "wait_slot_released",
    "wait_until",
]


def exec_sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for s in statements:
            c.execute(s)


def fingerprint(url: str, table: str, columns: list[str]) -> tuple[int, str | None]:
    """(rows, md5 of the rows' text sorted): a cheap "caught up?" probe; the tests compare
    with :func:`compare.fetch` once it matches."""
    cols = ", ".join('"' + c + '"' for c in columns)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET TimeZone TO 'UTC'")
        row = c.execute(f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) "
                        f'FROM (SELECT {cols} FROM "{table}") t').fetchone()
    return int(row[0]), row[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> float:
    """Polls ``check`` until it holds; returns the seconds it took, fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - started


@contextmanager
def slot_pipeline(pg_url: str, name: str) -> Iterator[str]:
    """``name`` (lower case, at most 40 characters) as a pipeline name of its own: slots are per
    server, not per database; its replication slot, which would hold WAL for the rest of the
    session, is dropped afterwards unless a process still holds it."""
    name = name[:40].lower()
    yield name
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s "
                  "AND active_pid IS NULL", (f"replicant_{name}",))


@contextmanager
def dest_database(server: Any, name: str) -> Iterator[str]:
    """A fresh database on ``server`` for a destination; dropped afterwards."""
    server.create_database(name)
    try:
        yield server.url(name)
    finally:
        try:
            server.drop_database(name)
        except psycopg.Error:
            pass  # teardown: never hide the test's outcome


# --------------------------------------------------------------------------- follow process


class Follow:
    """``replicant run PIPELINE --follow`` as a subprocess (output kept in files, so a chatty
    run never blocks on a full pipe)."""

    def __init__(self, pipeline: Path, tag: str) -> None:
        self.pipeline = pipeline
        folder = pipeline.parent / "out"
        folder.mkdir(exist_ok=True)
        self.out_path = folder / f"{tag}.out"
        self.err_path = folder / f"{tag}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "replicant.cli", "run", str(pipeline), "--follow"],
                stdout=out, stderr=err, cwd=pipeline.parent,
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL; True if it was still running (a kill mid-way), False if it had exited."""
        was_running = self.alive()
        if was_running:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return was_running

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; waits at most ``timeout`` s for the exit. Returns (exit code, seconds)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(f"--follow did not stop within {timeout} s of SIGTERM:\n{self.output()[-3000:]}") from None
        return code, time.monotonic() - started


# --------------------------------------------------------------------------- positions


def _lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def confirmed_lsn(url: str, slot: str) -> tuple[int | None, int | None]:
    """The slot's (confirmed_flush_lsn as an int, active_pid); (None, None) if there is no slot."""
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots WHERE slot_name = %s",
                        (slot,)).fetchone()
    if row is None:
        return None, None
    return (_lsn_int(row[0]) if row[0] else None), row[1]


def wait_slot_released(url: str, slot: str, timeout: float = 20) -> int | None:
    """Waits until no walsender holds the slot (its client was killed); returns the confirmed
    LSN then (no more status updates can move it), or None without a slot."""
    holder: list[int | None] = [None]

    def released() -> bool:
        lsn, pid = confirmed_lsn(url, slot)
        holder[0] = lsn
        return pid is None

    wait_until(released, timeout, f"slot {slot} to be released", every=0.05)
    return holder[0]


def durable_lsn(base: Path, pipeline: str, streams: list[str]) -> tuple[int | None, int | None, list[str]]:
    """What survived a kill: (lsn of the ``(capture)`` checkpoint in the state store, highest
    ``lsn`` of the streams' last log positions, streams whose snapshot is unfinished in the
    log). None where nothing is there."""
    home = base / ".replicant" / pipeline
    cp_lsn = None
    if (home / "state.db").exists():
        store = StateStore(f"sqlite:///{home / 'state.db'}").open()
        try:
            cp = store.checkpoint(pipeline, CAPTURE_CHECKPOINT)
            if cp is not None and cp.position and cp.position.get("lsn") is not None:
                cp_lsn = int(cp.position["lsn"])
        finally:
            store.close()
    log_lsn = None
    snapshotting = []
    if (home / "log").exists():
        lg = open_log(home / "log", read_only=True)
        try:
            for name in streams:
                if name not in lg.streams():
                    continue
                pos = lg.last_position(name) or {}
                if pos.get("lsn") is not None:
                    log_lsn = max(log_lsn or 0, int(pos["lsn"]))
                if "snapshot" in pos:
                    snapshotting.append(name)
        finally:
            lg.close()
    return cp_lsn, log_lsn, snapshotting


# --------------------------------------------------------------------------- writer


class RandomWriter(threading.Thread):
    """Keeps applying random transactions to the crash-test source until stopped.

    Tables (see ``make_crash_source``): ``accounts`` (key ``aid``), ``tellers`` (key ``tid``),
    ``history`` (no key, insert only, REPLICA IDENTITY FULL). Transactions: TPC-B-like
    (account + teller update + history insert), inserts of new accounts, deletes, key
    changes, multi-row updates, and now and then one large update across many accounts.
    """

    def __init__(self, url: str, seed: int, *, first_new_aid: int, pause: float = 0.003) -> None:
        super().__init__(name="random-writer", daemon=True)
        self.url = url
        self.rnd = random.Random(seed)
        self.next_aid = first_new_aid
        self.pause = pause
        self.stop_event = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url) as c:
                while not self.stop_event.is_set():
                    with c.transaction():
                        for _ in range(self.rnd.randint(1, 3)):
                            self._statement(c)
                    self.commits += 1
                    if self.pause:
                        time.sleep(self.pause)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test in `stop`
            self.error = e

    def _statement(self, c: psycopg.Connection) -> None:
        r = self.rnd.random()
        hi = self.next_aid
        aid = self.rnd.randint(1, hi)
        if r < 0.45:  # TPC-B: three tables in one transaction
            delta = self.rnd.randint(-5000, 5000)
            tid = self.rnd.randint(1, 100)
            c.execute("UPDATE accounts SET abalance = abalance + %s WHERE aid = %s", (delta, aid))
            c.execute("UPDATE tellers SET tbalance = tbalance + %s WHERE tid = %s", (delta, tid))
            c.execute("INSERT INTO history (tid, aid, delta, note) VALUES (%s, %s, %s, %s)",
                      (tid, aid, delta, self.rnd.choice([None, "x", "note " + str(delta)])))
        elif r < 0.65:
            n = self.rnd.randint(1, 20)
            c.execute("INSERT INTO accounts SELECT g, g %% 10 + 1, 0, md5(g::text) FROM generate_series(%s::int, %s::int) g",
                      (self.next_aid + 1, self.next_aid + n))
            self.next_aid += n
        elif r < 0.78:
            c.execute("DELETE FROM accounts WHERE aid BETWEEN %s::int AND %s::int", (aid, aid + self.rnd.randint(0, 3)))
        elif r < 0.86:  # a key change: the log has a delete of the old key, then the new row
            self.next_aid += 1
            c.execute("UPDATE accounts SET aid = %s WHERE aid = %s", (self.next_aid, aid))
        elif r < 0.97:
            c.execute("UPDATE accounts SET filler = CASE WHEN filler IS NULL THEN md5(aid::text) END, "
                      "bid = bid %% 10 + 1 WHERE aid BETWEEN %s::int AND %s::int", (aid, aid + self.rnd.randint(1, 50)))
        elif r < 0.99:
            c.execute("UPDATE accounts SET abalance = abalance + 1 WHERE aid BETWEEN %s::int AND %s::int", (aid, aid + 3000))
        else:
            c.execute("DELETE FROM tellers WHERE tid = %s", (self.rnd.randint(1, 100),))
            c.execute("INSERT INTO tellers VALUES (%s, 1, 0, 'back') ON CONFLICT (tid) DO NOTHING", (self.rnd.randint(1, 100),))

    def stop(self) -> int:
        """Stops and joins the writer; raises its error if it failed. Returns its commits."""
        self.stop_event.set()
        self.join(timeout=60)
        assert not self.is_alive(), "writer did not stop"
        if self.error is not None:
            raise AssertionError(f"writer failed: {self.error!r}") from self.error
        return self.commits


def make_crash_source(url: str, accounts: int) -> None:
    """accounts (20k-like, keyed), tellers (100, keyed), history (no key, REPLICA IDENTITY FULL)."""
    exec_sql(
        url,
        "CREATE TABLE accounts (aid integer PRIMARY KEY, bid integer NOT NULL, abalance integer NOT NULL, filler character(84))",
        f"INSERT INTO accounts SELECT g, g % 10 + 1, 0, CASE WHEN g % 7 = 0 THEN NULL ELSE md5(g::text) END "
        f"FROM generate_series(1, {int(accounts)}) g",
        "CREATE TABLE tellers (tid integer PRIMARY KEY, bid integer NOT NULL, tbalance integer NOT NULL, filler character(84))",
        "INSERT INTO tellers SELECT g, g % 10 + 1, 0, NULL FROM generate_series(1, 100) g",
        "CREATE TABLE history (hid bigserial NOT NULL, tid integer, aid integer, delta integer, "
        "mtime timestamptz NOT NULL DEFAULT clock_timestamp(), note text)",
        "ALTER TABLE history REPLICA IDENTITY FULL",
        "INSERT INTO history (tid, aid, delta, note) SELECT g % 100 + 1, g, g, NULL FROM generate_series(1, 500) g",
        "ANALYZE",
    )
