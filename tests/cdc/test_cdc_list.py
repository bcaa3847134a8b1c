"""`replicant cdc list` and `replicant cdc drop-slot` against a real PostgreSQL with real logical
slots (issue 9 item 21): a pipeline whose file is gone leaves a slot that retains WAL; a minimal
file (``pipeline:`` and ``source:`` only) lists it as not this pipeline's, with the WAL it
retains, and drops it; an active slot and the pipeline's own slot are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import yaml

from ._pipelines import Follow, confirmed_lsn, exec_sql, wait_until

CLI = [sys.executable, "-m", "replicant.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})


def _file(path: Path, name: str, url: str, *, full: bool = True) -> Path:
    doc: dict = {"pipeline": name, "source": {"type": "postgres", "url": url}}
    if full:
        doc["source"]["streams"] = [{"table": "public.items", "mode": "log"}]
        doc["destinations"] = [{"name": "d", "type": "sqlite", "path": f"{name}.db"}]
    path.write_text(yaml.safe_dump(doc))
    return path


def _slots(listing: dict) -> dict[str, dict]:
    return {s["slot"]: s for s in listing["slots"]}


def test_cdc_list_shows_an_orphaned_slot_and_drop_slot_removes_it(tmp_path: Path, pg_url: str, unique_name: str) -> None:
    exec_sql(pg_url, "CREATE TABLE items (id int PRIMARY KEY, name text)",
             "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g")
    gone_name, own_name = f"gone_{unique_name}"[:40], f"own_{unique_name}"[:40]
    gone = _file(tmp_path / "gone.yml", gone_name, pg_url)
    p = _cli("run", str(gone))
    assert p.returncode == 0, p.stderr
    gone.unlink()  # the pipeline is gone; its slot is not
    exec_sql(pg_url, "INSERT INTO items SELECT g, repeat('x', 1000) FROM generate_series(101, 3000) g")  # WAL it retains

    minimal = _file(tmp_path / "own.yml", own_name, pg_url, full=False)
    p = _cli("cdc", "list", str(minimal), "--json")
    assert p.returncode == 0, p.stderr
    listing = json.loads(p.stdout)
    orphan = _slots(listing)[f"replicant_{gone_name}"]
    assert orphan["owner"] == "other pipeline or orphan?" and orphan["active"] is False
    assert orphan["plugin"] == "pgoutput" and orphan["database"] == listing["database"]
    assert orphan["retained_wal_bytes"] > 2_000_000, "the slot holds the WAL of the 2,900 rows written since"
    assert orphan["confirmed_flush_lsn"] and orphan["restart_lsn"]
    pubs = {x["publication"]: x for x in listing["publications"]}
    assert pubs[f"replicant_{gone_name}"]["tables"] == "public.items"
    assert pubs[f"replicant_{gone_name}"]["owner"] == "other pipeline or orphan?"
    assert "secret" not in p.stdout

    table = _cli("cdc", "list", str(minimal))
    assert table.returncode == 0 and f"replicant_{gone_name}" in table.stdout and "MB" in table.stdout
    assert "cdc drop-slot" in table.stdout

    p = _cli("cdc", "drop-slot", str(minimal), "--slot", f"replicant_{gone_name}", "--publication", f"replicant_{gone_name}")
    assert p.returncode == 0, p.stderr
    assert f"dropped replication slot replicant_{gone_name}" in p.stdout and "of WAL" in p.stdout
    assert f"dropped publication replicant_{gone_name}" in p.stdout
    assert confirmed_lsn(pg_url, f"replicant_{gone_name}") == (None, None)
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (f"replicant_{gone_name}",)).fetchone() == (0,)
    missing = _cli("cdc", "drop-slot", str(minimal), "--slot", f"replicant_{gone_name}")
    assert missing.returncode == 1 and "no replication slot" in missing.stderr


def test_drop_slot_refuses_an_active_slot_and_the_pipelines_own(tmp_path: Path, pg_url: str, unique_name: str) -> None:
    exec_sql(pg_url, "CREATE TABLE items (id int PRIMARY KEY, name text)", "INSERT INTO items VALUES (1, 'a')")
    name = f"live_{unique_name}"[:40]
    slot = f"replicant_{name}"
    live = _file(tmp_path / "live.yml", name, pg_url)
    other = _file(tmp_path / "other.yml", f"other_{unique_name}"[:40], pg_url, full=False)
    follow = Follow(live, "live")
    try:
        wait_until(lambda: confirmed_lsn(pg_url, slot)[1] is not None, 60, "the follow run to hold its slot")
        listing = json.loads(_cli("cdc", "list", str(live), "--json").stdout)
        assert _slots(listing)[slot]["owner"] == "this pipeline" and _slots(listing)[slot]["active"] is True
        p = _cli("cdc", "drop-slot", str(other), "--slot", slot)
        assert p.returncode == 1 and "is active" in p.stderr, p.stderr
        assert confirmed_lsn(pg_url, slot)[0] is not None, "still there"
    finally:
        follow.terminate(60)
    wait_until(lambda: confirmed_lsn(pg_url, slot)[1] is None, 30, "the slot to be released")
    own = _slots(json.loads(_cli("cdc", "list", str(live), "--json").stdout))[slot]
    assert own["active"] is False and "/" in own["checkpoint_lsn"], "the pipeline's own slot shows its state's capture checkpoint"
    p = _cli("cdc", "drop-slot", str(live), "--slot", slot)
    assert p.returncode == 1 and "this pipeline's own" in p.stderr and "cdc uninstall" in p.stderr
    assert confirmed_lsn(pg_url, slot)[0] is not None
    p = _cli("cdc", "drop-slot", str(live), "--slot", slot, "--force")
    assert p.returncode == 0 and f"dropped replication slot {slot}" in p.stdout
    assert confirmed_lsn(pg_url, slot) == (None, None)


def test_cdc_list_says_a_mariadb_source_has_no_slots(tmp_path: Path, mysql_url: str) -> None:
    f = tmp_path / "m.yml"
    f.write_text(yaml.safe_dump({"pipeline": "m", "source": {"type": "mysql", "url": mysql_url}}))
    p = _cli("cdc", "list", str(f))
    assert p.returncode == 0, p.stderr
    assert "binlog" in p.stdout and "no replication slots" in p.stdout
    p = _cli("cdc", "drop-slot", str(f), "--slot", "replicant_m")
    assert p.returncode == 1 and "no replication slots" in p.stderr
