"""The offset fence under real concurrency, on the servers that lock rows (PostgreSQL, MariaDB).

Two destination objects of one pipeline's stream (two workers, two runs) read the same applied
offset; the first writes a range and stays inside its transaction, after its offset statement;
the second writes the same range and is seen *waiting* for a lock on the server; then the first
commits. The second must then find the offset moved and be refused with its rows: before the
stream has an offset row (two first inserts), after (two updates of the row), and after a
deliberate reset to -1 (both expecting -1 of an existing row).
The sequential cases run for every SQL destination in the conformance suite
(``check_fenced_offset``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from replicant.errors import DestinationFencedError
from service.serve_proc import wait_for  # tests/ is on the path

from . import conformance as cf
from .test_conformance import KINDS
from .test_mysql import _query as mysql_query


def _pg_waiting(request: pytest.FixtureRequest) -> Callable[[], bool]:
    url = request.getfixturevalue("pg_url")

    def waiting() -> bool:
        with psycopg.connect(url, autocommit=True) as c:
            return bool(c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND wait_event_type = 'Lock'").fetchone()[0])  # type: ignore[index]

    return waiting


def _mysql_waiting(request: pytest.FixtureRequest) -> Callable[[], bool]:
    url = request.getfixturevalue("mysql_url")
    return lambda: bool(mysql_query(url, "SELECT count(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'")[0][0])


WAITING = {"postgres": _pg_waiting, "mysql": _mysql_waiting}


@pytest.mark.parametrize("kind", list(WAITING))
def test_a_concurrent_writer_waits_for_the_offset_row_then_is_refused(kind: str, request: pytest.FixtureRequest,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    h = KINDS[kind](request)
    waiting = WAITING[kind](request)
    s = cf.make_stream("items", cf.ITEMS)
    first, second = cf.opened(h, "append"), cf.opened(h, "append")
    holding, release = threading.Event(), threading.Event()
    store = first.store_offset

    def store_and_hold(stream: Any, last_offset: int) -> None:
        store(stream, last_offset)
        holding.set()
        assert release.wait(60), "never released"

    monkeypatch.setattr(first, "store_offset", store_and_hold)

    def race(rows: list[dict[str, Any]], last_offset: int, expected: int) -> None:
        holding.clear()
        release.clear()
        failed: list[BaseException] = []

        def write_first() -> None:
            try:
                first.write(s, cf.changes(s, rows, "insert"), last_offset=last_offset)
            except BaseException as e:  # noqa: BLE001 - re-raised by the test below
                failed.append(e)

        writer = threading.Thread(target=write_first)
        writer.start()
        try:
            assert holding.wait(60), failed
            refused: list[BaseException] = []

            def write_second() -> None:
                try:
                    second.write(s, cf.changes(s, rows, "insert"), last_offset=last_offset)
                except BaseException as e:  # noqa: BLE001 - asserted below
                    refused.append(e)

            other = threading.Thread(target=write_second)
            other.start()
            wait_for(waiting, timeout=60, what="the second writer to wait for the first's lock")
        finally:
            release.set()
            writer.join(60)
        other.join(60)
        assert not failed, failed
        assert len(refused) == 1 and isinstance(refused[0], DestinationFencedError), refused
        assert f"expected log offset {expected}, found {last_offset}" in str(refused[0])

    try:
        for d in (first, second):
            d.prepare(s)
            assert d.applied_offset(s) == -1
        race([{"id": 1, "name": "a", "qty": 1}, {"id": 2, "name": "b", "qty": 2}], 1, expected=-1)  # no row yet
        assert second.applied_offset(s) == 1
        race([{"id": 3, "name": "c", "qty": 3}], 2, expected=1)  # the row exists
        with second.transaction("reset", s):  # as `tenant drop` does: both expect -1 of an existing row
            second.reset_offset(s, -1)
        assert first.applied_offset(s) == -1
        race([{"id": 4, "name": "d", "qty": 4}], 0, expected=-1)
        assert second.applied_offset(s) == 0
    finally:
        first.close()
        second.close()
    assert h.rows("items") == [(1, "a", 1), (2, "b", 2), (3, "c", 3), (4, "d", 4)]
