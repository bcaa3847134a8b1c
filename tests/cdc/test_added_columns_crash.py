"""Issue 9 item 4 under ``kill -9``: ``replicant run --follow`` (``mode: log``, PostgreSQL) is
SIGKILLed at random instants while a writer changes the table and columns with a value for
the existing rows are added (a constant default, then a volatile one), so kills land before,
during and after the stream's re-snapshot hand-off. A last run must converge to destination
== source, every column of every row.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import psycopg
import pytest

from cdc._pipelines import Follow, dest_database, durable_lsn, exec_sql, fingerprint, wait_slot_released, wait_until
from compare import fetch
from replicant.log import open_log
from replicant.log.base import MARKER_TRUNCATE

KILLS = 8
ROWS = 20_000


class _Writer(threading.Thread):
    """Updates, inserts and deletes rows of ``t`` (seeded), one short transaction at a time."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rnd = random.Random(seed)
        self.stop_event = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None
        self.next_id = ROWS + 1

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as c:
                while not self.stop_event.wait(0.005):
                    r = self.rnd.random()
                    k = self.rnd.randint(1, ROWS)
                    if r < 0.6:
                        c.execute("UPDATE t SET v = %s WHERE id = %s", (f"u{self.commits}", k))
                    elif r < 0.8:
                        c.execute("INSERT INTO t (id, v) VALUES (%s, 'new')", (self.next_id,))
                        self.next_id += 1
                    else:
                        c.execute("DELETE FROM t WHERE id = %s", (k,))
                    self.commits += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def stop(self) -> int:
        self.stop_event.set()
        self.join(timeout=30)
        return self.commits


def _pipeline(path: Path, name: str, src: str, dst: str) -> None:
    path.write_text(f"""
pipeline: {name}
source:
  type: postgres
  url: {src}
  slot: {name}_slot
  publication: {name}_pub
  batch_size: 2000
  chunk_size: 5000
  flush_interval: 0.2
  streams:
    - {{table: t, mode: log}}
destinations:
  - name: merged
    type: postgres
    url: {dst}
    write: merge
""")


def _truncate_markers(base: Path, pipeline: str) -> int:
    """Truncate markers in stream ``t``'s staging log: one per (re-)snapshot begun."""
    lg = open_log(base / ".replicant" / pipeline / "log", read_only=True)
    try:
        return sum(1 for r in lg.read("t") if r.marker is not None and r.marker.get("kind") == MARKER_TRUNCATE)
    finally:
        lg.close()


def _same(src: str, dst: str, cols: list[str]) -> bool:
    try:
        return fingerprint(src, "t", cols) == fingerprint(dst, "t", cols)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return False


@pytest.mark.slow
def test_follow_killed_around_the_re_snapshot_of_an_added_default_converges(tmp_path: Path, pg_url: str, pg_server,
                                                                            unique_name: str) -> None:
    exec_sql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text)",
             f"INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g")
    name = f"acc_{unique_name}"[:30]
    alters = {2: "ALTER TABLE t ADD COLUMN c int DEFAULT 7",
              5: "ALTER TABLE t ADD COLUMN d int NOT NULL DEFAULT (random() * 1000)::int"}
    rnd = random.Random(20261206)
    with dest_database(pg_server, unique_name + "_d") as dst:
        pipeline = tmp_path / "p.yml"
        _pipeline(pipeline, name, pg_url, dst)
        writer = _Writer(pg_url, seed=4)
        writer.start()
        procs: list[Follow] = []
        mid_snapshot = 0
        try:
            for kill in range(KILLS):
                f = Follow(pipeline, f"run{kill}")
                procs.append(f)
                if kill in alters:  # while this run streams (or re-snapshots what the last one left)
                    time.sleep(rnd.uniform(0.2, 1.5))
                    exec_sql(pg_url, alters[kill])
                time.sleep(rnd.uniform(0.3, 2.5))
                assert f.kill(), f"--follow exited on its own:\n{f.output()[-3000:]}"
                assert writer.error is None, f"writer failed: {writer.error!r}"
                wait_slot_released(pg_url, f"{name}_slot")
                mid_snapshot += bool(durable_lsn(tmp_path, name, ["t"])[2])
            commits = writer.stop()
            assert writer.error is None and commits > 100, (commits, writer.error)
            final = Follow(pipeline, "final")
            procs.append(final)
            cols = ["id", "v", "c", "d"]
            wait_until(lambda: _same(pg_url, dst, cols) or not final.alive(), 240, "the destination to catch up")
            assert final.alive(), f"--follow exited on its own:\n{final.output()[-3000:]}"
            code, _ = final.terminate(timeout=30)
            assert code == 0, final.output()[-3000:]
            want = fetch("postgres", pg_url, "t", cols)
            assert all(r[2] is not None and r[3] is not None for r in want)
            assert fetch("postgres", dst, "t", cols) == want
            truncates = _truncate_markers(tmp_path, name)
            # each ALTER is followed by a re-snapshot, but when the second lands while the first
            # one's snapshot is unfinished, that snapshot starts over (no second truncate
            # marker) and covers both: the equality above is the guarantee, this the evidence
            assert truncates >= 1, f"the ALTERs snapshot the stream again ({truncates} truncate markers)"
            print(f"\n{KILLS} kills ({mid_snapshot} with a snapshot unfinished), {commits} writer commits, "
                  f"{truncates} re-snapshots begun")
        finally:
            writer.stop_event.set()
            for p in procs:
                if p.alive():
                    p.kill()
            wait_slot_released(pg_url, f"{name}_slot")
            with psycopg.connect(pg_url, autocommit=True) as c:
                c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                          (f"{name}_slot",))
