"""Dead letters from the command line, end to end against a real HTTP receiver.

* ``replicant run`` counts only the rows a destination accepted as written; dead-lettered ones
  are reported on their own line, once (issue 9 item 17: they were counted as written and the
  warning printed twice).
* ``replicant dead-letters list|show|retry|discard``: filters, JSON output, the full record,
  re-sending through the destination (accepted ones leave the store, rejected ones stay with
  the new reason and one more attempt), discarding by id or by filter.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from http_receiver import Receiver
from replicant.state import DeadLetter, StateStore

CLI = [sys.executable, "-m", "replicant.cli"]
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=120)


def _source(path: Path, n: int) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, updated_at INTEGER NOT NULL)")
        c.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", [(i, f"item {i}", i * 0.25, i) for i in range(1, n + 1)])


def _pipeline(tmp: Path, url: str, *, name: str = "dl", extra: list[dict] | None = None) -> Path:
    src = tmp / "src.db"
    f = tmp / "p.yml"
    f.write_text(yaml.safe_dump({
        "pipeline": name,
        "source": {"type": "sqlite", "url": f"sqlite:///{src}", "batch_size": 500,
                   "streams": [{"table": "items", "mode": "cursor", "cursor": "updated_at"}]},
        "destinations": [{"name": "push", "type": "http", "url": url, "batch_size": 100}, *(extra or [])],
    }))
    return f


def _summary(stdout: str) -> dict[str, list[str]]:
    """The run's summary table: stream → its cells."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) > 1 and cells[0] and not cells[0].startswith(("stream", "━", "─")):
            rows[cells[0]] = cells[1:]
    return rows


def _letters(tmp: Path, pipeline: str = "dl") -> list[dict[str, Any]]:
    with StateStore(f"sqlite:///{tmp / '.replicant' / pipeline / 'state.db'}") as st:
        return st.dead_letters(pipeline, limit=10_000)


def test_run_counts_only_accepted_rows_and_warns_once(tmp_path: Path) -> None:
    """Failed before the fix: the table said 1,000 rows went to ``push`` although some were
    rejected, and stderr carried the rejection three times (twice logged by the destination,
    once by the CLI). (Since issue 9 item 8 only the rejected records themselves are dead
    letters, not their whole requests: 2, not 200.)"""
    _source(tmp_path / "src.db", 1000)
    with Receiver(reject=lambda r: r["key"]["id"] in (7, 507), reject_status=422) as rcv:
        p = _cli("run", str(_pipeline(tmp_path, rcv.url)))
    assert p.returncode == 0, p.stderr
    assert _summary(p.stdout)["items"] == ["1,000", "998"], p.stdout
    # without a terminal, INFO lines narrate the run (issue 9 item 16); warnings are the rest
    rejected_lines = [line for line in p.stderr.splitlines() if "rejected" in line and " INFO " not in line]
    assert rejected_lines == ["warning: 2 records of items rejected by push: in dead letters (see `replicant status`)"], p.stderr


def test_list_show_and_discard(tmp_path: Path) -> None:
    _source(tmp_path / "src.db", 300)
    with Receiver(reject=lambda r: r["key"]["id"] % 10 == 7, reject_status=422) as rcv:  # 7, 17, … 297
        f = _pipeline(tmp_path, rcv.url)
        assert _cli("run", str(f)).returncode == 0
    letters = _letters(tmp_path)
    assert len(letters) == 30

    p = _cli("dead-letters", "list", str(f), "--limit", "3", "--json")
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    assert [x["id"] for x in listed] == [x["id"] for x in letters[:3]], "newest first, at most --limit"
    assert set(listed[0]) == {"id", "tenant", "stream", "destination", "origin", "reason", "created_at", "attempts", "retried_at"}
    assert listed[0]["destination"] == "push" and listed[0]["reason"].startswith("HTTP 422")
    assert json.loads(_cli("dead-letters", "list", str(f), "--json", "--destination", "nowhere").stdout) == []
    assert len(json.loads(_cli("dead-letters", "list", str(f), "--json", "--stream", "items", "--limit", "500").stdout)) == 30
    table = _cli("dead-letters", "list", str(f), "--limit", "2")
    assert table.returncode == 0 and str(letters[0]["id"]) in table.stdout and "log offset" in table.stdout
    assert "more than 2" in table.stdout and "more than" not in _cli("dead-letters", "list", str(f), "--limit", "30").stdout

    one = letters[-1]
    p = _cli("dead-letters", "show", str(f), str(one["id"]))
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert shown["payload"] == one["payload"] and shown["payload"]["data"]["id"] == 7
    assert shown["reason"] == one["reason"] and shown["origin"] == one["origin"]
    missing = _cli("dead-letters", "show", str(f), "999999")
    assert missing.returncode == 2 and "no dead letter 999999" in missing.stderr

    nothing_said = _cli("dead-letters", "discard", str(f))
    assert nothing_said.returncode == 2 and "ids or --all" in nothing_said.stderr
    assert len(_letters(tmp_path)) == 30, "discard without ids or --all deletes nothing"
    p = _cli("dead-letters", "discard", str(f), str(letters[0]["id"]), str(letters[1]["id"]))
    assert p.returncode == 0 and "discarded 2 dead letters" in p.stdout, p.stdout + p.stderr
    p = _cli("dead-letters", "discard", str(f), "--all", "--destination", "push")
    assert p.returncode == 0 and "discarded 28 dead letters" in p.stdout
    assert _letters(tmp_path) == []


def test_retry_resends_accepted_ones_are_removed_rejected_ones_stay(tmp_path: Path) -> None:
    _source(tmp_path / "src.db", 1000)
    refused = {7, 507, 508, 509}
    with Receiver(reject=lambda r: r["key"]["id"] in refused, reject_status=422) as rcv:
        f = _pipeline(tmp_path, rcv.url)
        assert _cli("run", str(f)).returncode == 0
        assert len(_letters(tmp_path)) == 4
        first_keys = set(rcv.accepted())

        refused.difference_update({507, 508, 509})  # the receiver was fixed for those; 7 is still refused
        p = _cli("dead-letters", "retry", str(f), "--all")
        assert p.returncode == 0, p.stderr
        assert "retried 4: 3 accepted (removed), 1 rejected again (kept)" in p.stdout, p.stdout
        (left,) = _letters(tmp_path)
        assert left["payload"]["key"] == {"id": 7} and left["attempts"] == 1 and left["retried_at"] is not None
        assert left["reason"].startswith("HTTP 422") and '"keys": [{"id": 7}]' in left["reason"]

        # every record arrived exactly once, with the data it had, and the retries under new batch ids
        got = {r["data"]["id"]: r for r in rcv.records()}
        assert sorted(got) == [i for i in range(1, 1001) if i != 7]
        assert len(rcv.records()) == 999, "no record twice"
        assert all(got[i]["data"] == {"id": i, "name": f"item {i}", "price": i * 0.25, "updated_at": i} for i in got)
        retried = set(rcv.accepted()) - first_keys
        assert len(retried) == 3, "each dead letter is re-sent on its own, under its own idempotency key"

        p = _cli("dead-letters", "retry", str(f), str(left["id"]))
        assert p.returncode == 0 and "1 rejected again" in p.stdout
        assert _letters(tmp_path)[0]["attempts"] == 2

        refused.clear()
        p = _cli("dead-letters", "retry", str(f), str(left["id"]))
        assert p.returncode == 0 and "retried 1: 1 accepted (removed), 0 rejected again" in p.stdout, p.stdout
        assert _letters(tmp_path) == []
        assert sorted(r["data"]["id"] for r in rcv.records()) == list(range(1, 1001))
        p = _cli("run", str(f))
        assert p.returncode == 0 and "rejected" not in p.stderr, "the applied offset did not move back: nothing re-sent"
        assert len(rcv.records()) == 1000


def test_retry_refuses_while_the_pipeline_runs(tmp_path: Path) -> None:
    from replicant.log import open_log

    _source(tmp_path / "src.db", 200)
    with Receiver(reject=lambda r: r["key"]["id"] == 7) as rcv:
        f = _pipeline(tmp_path, rcv.url)
        assert _cli("run", str(f)).returncode == 0
        sent = len(rcv.requests)
        running = open_log(str(tmp_path / ".replicant" / "dl" / "log"))  # what a run holds: the log's writer lock
        try:
            p = _cli("dead-letters", "retry", str(f), "--all")
        finally:
            running.close()
        assert p.returncode == 1 and "log" in p.stderr, p.stderr
        assert len(_letters(tmp_path)) == 1 and all(x["attempts"] == 0 for x in _letters(tmp_path))
        assert len(rcv.requests) == sent, "nothing was sent"


def test_show_and_list_never_print_a_password(tmp_path: Path) -> None:
    _source(tmp_path / "src.db", 1)
    f = _pipeline(tmp_path, "http://127.0.0.1:9/push")
    home = tmp_path / ".replicant" / "dl"
    home.mkdir(parents=True)
    with StateStore(f"sqlite:///{home / 'state.db'}") as st:
        st.add_dead_letters("dl", "items", [DeadLetter(
            reason="refused", payload={"id": 1, "dsn": "postgresql://app:hunter2@db/shop", "note": "password=hunter2"},
            origin="file mysql://root:hunter2@h/x line 3", destination="push")])
        (letter,) = st.find_dead_letters("dl")
    shown = _cli("dead-letters", "show", str(f), str(letter["id"]))
    listed = _cli("dead-letters", "list", str(f))
    as_json = _cli("dead-letters", "list", str(f), "--json")
    for p in (shown, listed, as_json):
        assert p.returncode == 0, p.stderr
        assert "hunter2" not in p.stdout + p.stderr
    assert json.loads(shown.stdout)["payload"]["dsn"] == "postgresql://app:***@db/shop"
    (tmp_path / "never").mkdir()
    never = _pipeline(tmp_path / "never", "http://127.0.0.1:9/push", name="never")
    assert "no dead letters in never" in _cli("dead-letters", "list", str(never)).stdout
    assert not (tmp_path / "never" / ".replicant").exists(), "listing a pipeline that never ran creates nothing"
