"""End to end ``mode: log`` on PostgreSQL (issue 3, "done when"):

* ``test_follow_survives_sigkill_under_writes``: ``replicant run --follow`` is SIGKILLed at
  random instants (snapshot, hand-off, streaming) while a writer keeps changing the source;
  after every kill the slot's confirmed position is never ahead of what is durable (the
  staging log, the ``(capture)`` checkpoint); at the end the destinations equal the source,
  and the keyless ``history`` (``write: append``) holds every source row exactly once.
* ``test_pgbench_tpcb_60s``: pgbench TPC-B at about 1k tps for 60 s while following;
  accounts, tellers and branches equal the source, pgbench_history (no key, appended) holds
  every row exactly once.
* ``test_snapshot_hand_off_under_heavy_writes``: the engine snapshots a 200k-row table while
  a writer hammers it; destination == source, no duplicates.

Keyed streams go to a PostgreSQL ``merge`` destination, the keyless one to an ``append``
destination (``streams:`` of a destination picks the streams it receives).
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import yaml

from cdc._pipelines import (
    Follow,
    RandomWriter,
    dest_database,
    durable_lsn,
    exec_sql,
    fingerprint,
    make_crash_source,
    wait_slot_released,
    wait_until,
)
from compare import fetch
from replicant.config import parse
from replicant.engine import Engine, Observer
from servers import find_pg_bindir

ACCOUNTS = ["aid", "bid", "abalance", "filler"]
TELLERS = ["tid", "bid", "tbalance", "filler"]
HISTORY = ["hid", "tid", "aid", "delta", "mtime", "note"]
CRASH_TABLES = {"accounts": ACCOUNTS, "tellers": TELLERS, "history": HISTORY}
KILLS = 10


def _pipeline_yaml(name: str, src: str, merge_url: str, append_url: str, keyed: list[str], keyless: list[str], *,
                   batch_size: int, chunk_size: int, heartbeat: str = "2s") -> str:
    streams = "".join(f"    - {{table: {t}, mode: log}}\n" for t in keyed + keyless)
    return f"""
pipeline: {name}
source:
  type: postgres
  url: {src}
  batch_size: {batch_size}
  chunk_size: {chunk_size}
  slot: {name}_slot
  publication: {name}_pub
  flush_interval: 0.2
  heartbeat: {heartbeat}
  streams:
{streams}destinations:
  - name: merged
    type: postgres
    url: {merge_url}
    write: merge
    streams: [{", ".join(keyed)}]
  - name: appended
    type: postgres
    url: {append_url}
    write: append
    streams: [{", ".join(keyless)}]
"""


def _caught_up(src: str, targets: dict[str, tuple[str, list[str]]]) -> bool:
    """Every table's cheap fingerprint matches between the source and its destination."""
    for table, (dst, cols) in targets.items():
        try:
            if fingerprint(src, table, cols) != fingerprint(dst, table, cols):
                return False
        except psycopg.errors.UndefinedTable:
            return False
    return True


def _replicating(url: str, pipeline: str) -> bool:
    """A replication connection of the pipeline's slot is open (slot creation, snapshot export, streaming)."""
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s)",
                         (f"replicant {pipeline}_slot",)).fetchone()[0]


def _assert_equal(src: str, targets: dict[str, tuple[str, list[str]]], keyless: set[str], *,
                  big: int | None = None) -> dict[str, int]:
    """Destination == source for every table, compared as sorted normalised rows, i.e. as
    multisets: a keyless (appended) table passes only if it holds every source row exactly
    as often as the source does (once: ``history.hid`` is unique). Returns row counts.

    Tables with more than ``big`` rows are compared by count and md5 of their sorted row
    texts first (exact, and 5x cheaper); only a mismatch fetches them to show the difference."""
    counts = {}
    for table, (dst, cols) in targets.items():
        if big is not None and table not in keyless:  # keyed: a destination key rules out doubles
            n, digest = fingerprint(src, table, cols)
            if n > big and (n, digest) == fingerprint(dst, table, cols):
                counts[table] = n
                continue
        want = fetch("postgres", src, table, cols)
        got = fetch("postgres", dst, table, cols)
        if got != want:
            missing, extra = Counter(want) - Counter(got), Counter(got) - Counter(want)
            raise AssertionError(
                f"{table}: {len(got)} rows in the destination, {len(want)} in the source; "
                f"{sum(missing.values())} missing, e.g. {list(missing)[:5]}; {sum(extra.values())} extra, e.g. {list(extra)[:5]}")
        counts[table] = len(want)
    return counts


# --------------------------------------------------------------------------- crash


@pytest.mark.slow
def test_follow_survives_sigkill_under_writes(tmp_path: Path, pg_url: str, pg_server, unique_name: str) -> None:
    make_crash_source(pg_url, 100_000)
    name = "cdc_crash"
    with dest_database(pg_server, unique_name + "_m") as merged, dest_database(pg_server, unique_name + "_a") as appended:
        pipeline = tmp_path / "p.yml"
        pipeline.write_text(_pipeline_yaml(name, pg_url, merged, appended, ["accounts", "tellers"], ["history"],
                                           batch_size=2000, chunk_size=10_000))
        targets = {"accounts": (merged, ACCOUNTS), "tellers": (merged, TELLERS), "history": (appended, HISTORY)}
        rnd = random.Random(20261121)
        writer = RandomWriter(pg_url, seed=11, first_new_aid=100_000)
        writer.start()
        procs: list[Follow] = []
        try:
            killed, checked, mid_snapshot, baseline, snapshot_open = 0, 0, 0, None, True
            started = time.monotonic()
            for attempt in range(3 * KILLS):
                if killed >= KILLS:
                    break
                f = Follow(pipeline, f"run{attempt}")
                procs.append(f)
                # most kills count from the moment it replicates (past the start-up); while a snapshot
                # is unfinished, early ones, so that snapshots and resumed snapshots get killed too
                if snapshot_open or rnd.random() >= 0.25:
                    wait_until(lambda f=f: _replicating(pg_url, name) or not f.alive(), 60, "a replication connection", every=0.02)
                time.sleep(rnd.uniform(0.3, 1.2) if snapshot_open else rnd.uniform(0.3, 3.0))
                mid_way = f.kill()
                assert writer.is_alive(), f"writer failed: {writer.error!r}"
                assert mid_way, f"--follow exited on its own (code {f.proc.returncode}):\n{f.output()[-3000:]}"
                killed += 1
                # nothing may be confirmed to the slot that the next run could not resume from
                confirmed = wait_slot_released(pg_url, f"{name}_slot")
                if confirmed is None:
                    continue  # killed before the slot was created
                cp_lsn, log_lsn, snapshotting = durable_lsn(tmp_path, name, list(CRASH_TABLES))
                snapshot_open = bool(snapshotting) or (cp_lsn is None and log_lsn is None)
                mid_snapshot += bool(snapshotting)
                durable = max((x for x in (cp_lsn, log_lsn) if x is not None), default=None)
                if durable is None:
                    # no position durable yet: the slot must still be where it was created
                    baseline = confirmed if baseline is None else baseline
                    assert confirmed == baseline, "the slot moved before anything was durable"
                else:
                    assert confirmed <= durable, (
                        f"kill {killed}: slot confirmed {confirmed:X} is ahead of the durable positions "
                        f"(capture checkpoint {cp_lsn}, log {log_lsn})")
                    checked += 1
                assert time.monotonic() - started < 600, "crash loop took too long"
            assert killed >= KILLS
            assert checked >= KILLS // 2, f"only {checked} kills happened after a position was durable"
            commits = writer.stop()
            assert commits > 200, f"the writer committed only {commits} transactions"

            final = Follow(pipeline, "final")
            procs.append(final)
            try:
                waited = wait_until(lambda: _caught_up(pg_url, targets) or not final.alive(), 180, "the destination to catch up")
            except AssertionError:
                final.terminate(timeout=15)
                _assert_equal(pg_url, targets, keyless={"history"})  # says which table differs, and how
                raise AssertionError(f"not caught up, yet equal?\n{final.output()[-3000:]}") from None
            assert final.alive(), f"--follow exited on its own:\n{final.output()[-3000:]}"
            code, seconds = final.terminate(timeout=15)
            assert code == 0, f"--follow exited {code} on SIGTERM:\n{final.output()[-3000:]}"
            counts = _assert_equal(pg_url, targets, keyless={"history"})
            print(f"\n{killed} kills ({mid_snapshot} with a snapshot unfinished), {checked} slot checks, "
                  f"{commits} writer commits, caught up in {waited:.1f} s, stopped in {seconds:.1f} s, rows {counts}")
        finally:
            writer.stop_event.set()
            for p in procs:
                if p.alive():
                    p.kill()


# --------------------------------------------------------------------------- pgbench TPC-B


PGBENCH_TABLES = {
    "pgbench_accounts": ["aid", "bid", "abalance", "filler"],
    "pgbench_tellers": ["tid", "bid", "tbalance", "filler"],
    "pgbench_branches": ["bid", "bbalance", "filler"],
    "pgbench_history": ["tid", "bid", "aid", "delta", "mtime", "filler"],
}


@pytest.mark.slow
def test_pgbench_tpcb_60s(tmp_path: Path, pg_url: str, pg_server, unique_name: str) -> None:
    pgbench = find_pg_bindir() / "pgbench"
    dbname = pg_url.rsplit("/", 1)[1]
    conn = ["-h", pg_server.host, "-p", str(pg_server.port), "-U", pg_server.user]
    subprocess.run([str(pgbench), "-i", "-s", "1", "-q", *conn, dbname], check=True, capture_output=True, timeout=120)
    # no key: `mode: log` needs every column in the old row image
    exec_sql(pg_url, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
    name = "cdc_tpcb"
    keyed = ["pgbench_accounts", "pgbench_tellers", "pgbench_branches"]
    with dest_database(pg_server, unique_name + "_m") as merged, dest_database(pg_server, unique_name + "_a") as appended:
        pipeline = tmp_path / "p.yml"
        pipeline.write_text(_pipeline_yaml(name, pg_url, merged, appended, keyed, ["pgbench_history"],
                                           batch_size=20_000, chunk_size=50_000, heartbeat="5s"))
        targets = {t: (merged if t in keyed else appended, cols) for t, cols in PGBENCH_TABLES.items()}
        f = Follow(pipeline, "follow")
        try:
            wait_until(lambda: _caught_up(pg_url, targets) or not f.alive(), 120, "the initial snapshot")
            assert f.alive(), f.output()[-3000:]
            started = time.monotonic()
            bench = subprocess.run([str(pgbench), "-c", "4", "-j", "2", "-T", "60", "-R", "1000", "-n", *conn, dbname],
                                   capture_output=True, text=True, timeout=300)
            bench_seconds = time.monotonic() - started
            assert bench.returncode == 0, bench.stderr + bench.stdout
            tps = next((ln for ln in bench.stdout.splitlines() if ln.startswith("tps")), "")
            with psycopg.connect(pg_url) as c:
                history = c.execute("SELECT count(*) FROM pgbench_history").fetchone()[0]
            assert history > 10_000, f"pgbench committed only {history} transactions: {bench.stdout}"
            waited = wait_until(lambda: _caught_up(pg_url, targets) or not f.alive(), 300, "the destination to catch up", every=1)
            assert f.alive(), f"--follow exited on its own:\n{f.output()[-3000:]}"
            code, seconds = f.terminate(timeout=15)
            assert code == 0, f"--follow exited {code} on SIGTERM:\n{f.output()[-3000:]}"
            counts = _assert_equal(pg_url, targets, keyless={"pgbench_history"})
            assert counts["pgbench_history"] == history
            print(f"\npgbench {bench_seconds:.0f} s ({tps.strip()}), {history} transactions, caught up {waited:.1f} s "
                  f"after pgbench ended, stopped in {seconds:.1f} s")
        finally:
            if f.alive():
                f.kill()


# --------------------------------------------------------------------------- hand-off through the engine


class _Rows(Observer):
    def __init__(self) -> None:
        self.read: Counter[str] = Counter()
        self.lock = threading.Lock()

    def rows_read(self, stream: str, rows: int) -> None:
        with self.lock:
            self.read[stream] += rows


@pytest.mark.slow
def test_snapshot_hand_off_under_heavy_writes(tmp_path: Path, pg_url: str, pg_server, unique_name: str) -> None:
    rows = 200_000
    make_crash_source(pg_url, rows)
    name = "cdc_handoff"
    with dest_database(pg_server, unique_name + "_m") as merged, dest_database(pg_server, unique_name + "_a") as appended:
        cfg = parse(yaml.safe_load(_pipeline_yaml(
            name, pg_url, merged, appended, ["accounts", "tellers"], ["history"], batch_size=10_000, chunk_size=50_000)),
            base_dir=tmp_path)
        targets = {"accounts": (merged, ACCOUNTS), "tellers": (merged, TELLERS), "history": (appended, HISTORY)}
        writer = RandomWriter(pg_url, seed=5, first_new_aid=rows, pause=0)
        observer = _Rows()
        engine = Engine(cfg, observer=observer)
        out: dict = {}
        runner = threading.Thread(target=lambda: out.setdefault("result", engine.run(follow=True)), daemon=True)
        writer.start()
        time.sleep(0.3)  # writes before the snapshot point too
        commits_before = writer.commits
        runner.start()
        try:
            # keep writing through the whole snapshot of accounts, and a moment after
            wait_until(lambda: observer.read["accounts"] >= rows or not runner.is_alive(), 120, "the snapshot", every=0.05)
            commits_during = writer.commits - commits_before
            time.sleep(1.0)
            commits = writer.stop()
            assert commits_during > 50, f"only {commits_during} transactions committed during the snapshot"
            waited = wait_until(lambda: _caught_up(pg_url, targets) or not runner.is_alive(), 120, "the destination to catch up")
        finally:
            writer.stop_event.set()
            engine.stop_event.set()
            runner.join(timeout=30)
        assert not runner.is_alive(), "the engine did not stop"
        result = out["result"]
        assert result.ok, result.errors
        assert result.rows_read["accounts"] > rows, "the changes made during the snapshot were not captured"
        counts = _assert_equal(pg_url, targets, keyless={"history"}, big=50_000)
        with psycopg.connect(merged) as c:
            total, distinct = c.execute("SELECT count(*), count(DISTINCT aid) FROM accounts").fetchone()
        assert total == distinct == counts["accounts"]
        print(f"\n{commits} writer commits ({commits_during} during the snapshot), caught up in {waited:.1f} s, rows {counts}")
