"""Tenants on SQLite sources (fast): the ``tenants:`` key, ``_tenant`` on every row and in the
key, per-tenant transforms, drift pausing one tenant's stream, ``run --tenant``, ``replay
--tenant``, ``resync --tenant`` and ``tenant drop``. Real servers: test_tenants_servers.py."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from replicant.config import parse
from replicant.errors import ConfigError
from replicant.tenants.runner import TenantRunner


def _source(path: Path, rows: list[tuple[int, str]], *, column: str = "v") -> None:
    with sqlite3.connect(path) as con:
        con.execute(f"CREATE TABLE orders (id INTEGER PRIMARY KEY, {column} TEXT NOT NULL)")
        con.executemany("INSERT INTO orders VALUES (?, ?)", rows)


def _pipeline(tmp_path: Path, tenants: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "pipeline": "shop",
        "source": {"type": "sqlite", "url": "sqlite:///acme.db", "streams": [{"table": "orders", "mode": "snapshot_diff"}]},
        "tenants": tenants,
        "destinations": [{"name": "w", "type": "duckdb", "path": "w.duckdb", "write": "merge",
                          "tables": {"orders": "all_orders"}}],
        **extra,
    }


def _rows(tmp_path: Path, sql: str = "SELECT * FROM all_orders ORDER BY 1, 2") -> list[tuple[Any, ...]]:
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def replicant(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------- the file


def test_tenant_ids_are_checked_with_their_key_paths(tmp_path: Path) -> None:
    data = _pipeline(tmp_path, [
        {"id": "acme"}, {"id": "Acme Corp"}, {"id": "acme"}, {"id": "a-b"}, {"id": "a_b"}, {"url": "sqlite:///x.db"},
        {"id": "globex", "slott": "x"},
    ])
    with pytest.raises(ConfigError) as e:
        parse(data, base_dir=tmp_path)
    problems = dict(e.value.problems)
    assert "not a valid tenant id" in problems["tenants[1].id"] and "lowercase" in problems["tenants[1].id"]
    assert problems["tenants[2].id"] == "'acme' repeats tenants[0].id: tenant ids must be unique"
    assert "same replication slot" in problems["tenants[4].id"]
    assert problems["tenants[5].id"] == "required key is missing"
    assert problems["tenants[6].slott"].startswith("unknown key")
    assert not any(k.startswith(("tenants[0]", "tenants[3]")) for k in problems)


def test_a_tenant_may_override_the_source_type_and_its_own_keys_are_checked(tmp_path: Path) -> None:
    data = _pipeline(tmp_path, [{"id": "acme"}, {"id": "globex", "type": "postgres", "url": "postgresql://u@h/db",
                                                  "slot": "s1", "publication": "p1"}])
    cfg = parse(data, base_dir=tmp_path)
    from replicant.tenants.config import source_for

    assert source_for(cfg, "globex").type == "postgres" and source_for(cfg, "globex").options["slot"] == "s1"
    assert source_for(cfg, "acme").type == "sqlite"
    data["tenants"][0]["slot"] = "s2"  # a sqlite source has no slot
    data["tenants"].append({"id": "initech", "type": "oracle"})
    data["tenants"].append({"id": "hooli", "batch_size": -1})
    with pytest.raises(ConfigError) as e:
        parse(data, base_dir=tmp_path)
    assert [k for k, _ in e.value.problems] == ["tenants[0].slot", "tenants[2].type", "tenants[3].batch_size"]


def test_replace_is_refused_with_tenants(tmp_path: Path) -> None:
    _source(tmp_path / "acme.db", [(1, "a")])
    data = _pipeline(tmp_path, [{"id": "acme"}])
    data["destinations"][0]["write"] = "replace"
    result = TenantRunner(parse(data, base_dir=tmp_path)).run()
    assert not result.ok
    assert result.errors[0].tenant == "acme" and "replace swaps the whole table" in result.errors[0].message


# ---------------------------------------------------------------------------- running


def test_every_row_carries_its_tenant_and_keys_include_it(tmp_path: Path) -> None:
    _source(tmp_path / "acme.db", [(1, "a1"), (2, "a2")])
    _source(tmp_path / "globex.db", [(1, "g1"), (3, "g3")], column="value")  # an older app: the column has another name
    cfg = parse(_pipeline(tmp_path, [
        {"id": "acme"},
        {"id": "globex", "url": "sqlite:///globex.db", "transforms": [{"rename": {"value": "v"}}]},
    ], transforms=[{"rename": {"v": "label"}}]), base_dir=tmp_path)
    result = TenantRunner(cfg).run()
    assert result.ok, result.errors
    assert result.rows_read == {"acme/orders": 2, "globex/orders": 2}
    # id 1 twice: the key is (_tenant, id)
    assert _rows(tmp_path) == [("acme", 1, "a1"), ("acme", 2, "a2"), ("globex", 1, "g1"), ("globex", 3, "g3")]
    from replicant.log import open_log
    from replicant.plan import log_key

    lg = open_log(str(tmp_path / ".replicant" / "shop" / "log"), read_only=True)
    try:
        for t in ("acme", "globex"):
            schema = lg.schemas(f"{t}/orders")[-1]
            assert log_key(schema) == ["_tenant", "id"] and schema.names[:3] == ["_tenant", "id", "label"]
    finally:
        lg.close()

    with sqlite3.connect(tmp_path / "acme.db") as con:  # a change at one tenant reaches only its rows
        con.execute("UPDATE orders SET v = 'a1*' WHERE id = 1")
        con.execute("DELETE FROM orders WHERE id = 2")
    assert TenantRunner(cfg).run().ok
    assert _rows(tmp_path) == [("acme", 1, "a1*"), ("globex", 1, "g1"), ("globex", 3, "g3")]


@pytest.mark.slow
def test_four_tenants_write_one_table_at_once(tmp_path: Path, pg_url: str, mysql_url: str) -> None:
    """Each tenant's feed has its own connection to each destination; the merge stages are
    per connection (DuckDB's registered batch, PostgreSQL's pg_temp, MariaDB's TEMPORARY
    table), table creation is serialised: 4 tenants × many small batches into one DuckDB, one
    PostgreSQL and one MariaDB table, every write right the first time (no retry)."""
    import psycopg

    n = 3000
    tenants = [f"t{i}" for i in range(4)]
    for t in tenants:
        _source(tmp_path / f"{t}.db", [(k, f"{t}-{k}") for k in range(n)])
    data = _pipeline(tmp_path, [{"id": t, "url": f"sqlite:///{t}.db"} for t in tenants])
    data["source"]["batch_size"] = 100
    data["destinations"].append({"name": "pg", "type": "postgres", "url": pg_url, "write": "merge",
                                 "tables": {"orders": "all_orders"}})
    data["destinations"].append({"name": "my", "type": "mysql", "url": mysql_url, "write": "merge",
                                 "tables": {"orders": "all_orders"}})
    cfg = parse(data, base_dir=tmp_path)
    first = TenantRunner(cfg, retries=0).run()
    assert first.ok, first.errors
    for t in tenants:  # the second run merges (updates and deletes) into a table holding all four
        with sqlite3.connect(tmp_path / f"{t}.db") as con:
            con.execute("UPDATE orders SET v = v || '*' WHERE id % 3 = 0")
            con.execute("DELETE FROM orders WHERE id % 7 = 0")
    result = TenantRunner(cfg, retries=0).run()  # no retry: every write must succeed the first time
    assert result.ok, result.errors
    expected = sorted((t, k, f"{t}-{k}" + ("*" if k % 3 == 0 else "")) for t in tenants for k in range(n) if k % 7)
    assert _rows(tmp_path) == expected
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT * FROM all_orders ORDER BY 1, 2").fetchall() == expected
    from urllib.parse import urlsplit

    import pymysql

    u = urlsplit(mysql_url)
    con = pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password or "", database=u.path[1:])
    try:
        with con.cursor() as cur:
            cur.execute("SELECT * FROM all_orders ORDER BY 1, 2")
            assert [tuple(r) for r in cur.fetchall()] == expected
    finally:
        con.close()


def test_drift_in_one_tenant_pauses_only_its_stream(tmp_path: Path) -> None:
    _source(tmp_path / "acme.db", [(1, "a1")])
    _source(tmp_path / "globex.db", [(1, "g1")])
    cfg = parse(_pipeline(tmp_path, [{"id": "acme"}, {"id": "globex", "url": "sqlite:///globex.db"}]), base_dir=tmp_path)
    assert TenantRunner(cfg).run().ok
    with sqlite3.connect(tmp_path / "acme.db") as con:  # a type change the destination cannot follow
        con.execute("DROP TABLE orders")
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        con.execute("INSERT INTO orders VALUES (1, 10), (2, 20)")
    with sqlite3.connect(tmp_path / "globex.db") as con:
        con.execute("INSERT INTO orders VALUES (2, 'g2')")
    result = TenantRunner(cfg, retries=0).run()
    assert [(e.tenant, e.stream, e.destination) for e in result.errors] == [("acme", "orders", "w")]
    message = str(result.errors[0])
    assert "column v changed" in message and message.startswith("tenant acme, destination w, stream orders: "), message
    assert _rows(tmp_path) == [("acme", 1, "a1"), ("globex", 1, "g1"), ("globex", 2, "g2")]
    from replicant.engine import Engine

    st = Engine(cfg).status()
    paused = [(d.tenant, d.stream) for d in st.destinations if d.paused]
    assert paused == [("acme", "orders")]


# ---------------------------------------------------------------------------- the CLI


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "shop.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_run_replay_resync_and_drop_per_tenant(tmp_path: Path) -> None:
    _source(tmp_path / "acme.db", [(1, "a1"), (2, "a2")])
    _source(tmp_path / "globex.db", [(1, "g1")])
    _source(tmp_path / "initech.db", [(5, "i5")])
    data = _pipeline(tmp_path, [{"id": "acme"}, {"id": "globex", "url": "sqlite:///globex.db"},
                                {"id": "initech", "url": "sqlite:///initech.db"}])
    data["source"]["streams"] = [{"table": "orders", "mode": "cursor", "cursor": "id"}]
    path = _write(tmp_path, data)

    r = replicant("run", str(path), "--tenant", "globex", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _rows(tmp_path) == [("globex", 1, "g1")]
    r = replicant("status", str(path), cwd=tmp_path)
    assert r.returncode == 0 and "tenants not read yet: acme, initech" in r.stdout, r.stdout + r.stderr
    r = replicant("run", str(path), "--tenant", "nobody", cwd=tmp_path)
    assert r.returncode != 0 and "nobody" in r.stderr and "acme, globex, initech" in r.stderr
    r = replicant("run", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "acme/orders" in r.stdout and "initech/orders" in r.stdout
    assert len(_rows(tmp_path)) == 4

    r = replicant("status", str(path), cwd=tmp_path)
    assert r.returncode == 0 and "globex/orders" in r.stdout, r.stdout + r.stderr

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:  # lost rows at the destination: a replay of one tenant
        con.execute("DELETE FROM all_orders WHERE _tenant = 'acme'")
    r = replicant("replay", str(path), "--destination", "w", "--from-start", "--tenant", "acme", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(_rows(tmp_path)) == 4

    # a cursor stream does not see deletes: a resync of one tenant's stream does
    with sqlite3.connect(tmp_path / "acme.db") as con:
        con.execute("DELETE FROM orders WHERE id = 1")
        con.execute("UPDATE orders SET v = 'a2*' WHERE id = 2")  # the cursor did not move: only a new snapshot sees it
    r = replicant("resync", str(path), "--stream", "orders", "--tenant", "acme", cwd=tmp_path)
    assert r.returncode == 0 and "orders of tenant acme" in r.stdout, r.stderr
    r = replicant("resync", str(path), "--stream", "order", "--tenant", "acme", cwd=tmp_path)
    assert r.returncode != 0 and "did you mean 'orders'" in r.stderr
    assert replicant("run", str(path), cwd=tmp_path).returncode == 0
    assert _rows(tmp_path) == [("acme", 2, "a2*"), ("globex", 1, "g1"), ("initech", 5, "i5")]

    r = replicant("tenant", "drop", str(path), "--tenant", "globex", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 rows of tenant globex deleted" in r.stdout
    assert _rows(tmp_path) == [("acme", 2, "a2*"), ("initech", 5, "i5")]
    from replicant.state import StateStore

    with StateStore(f"sqlite:///{tmp_path / '.replicant' / 'shop' / 'state.db'}") as store:
        assert store.checkpoints("shop", tenant="globex") == {}
        assert "orders" in store.checkpoints("shop", tenant="acme")


def _sqlite_rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    if not (tmp_path / "w.sqlite").exists():
        return []
    with sqlite3.connect(tmp_path / "w.sqlite") as con:
        try:
            return con.execute("SELECT _tenant, id, v FROM all_orders ORDER BY 1, 2").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []


def _waiter(proc: subprocess.Popen[str]) -> Any:
    import time

    def wait(check: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline and proc.poll() is None, f"timed out waiting for {what}: {proc.poll()}"
            time.sleep(0.1)

    return wait


def _follow(tmp_path: Path, tenants: list[dict[str, Any]]) -> tuple[dict[str, Any], Path, subprocess.Popen[str]]:
    data = _pipeline(tmp_path, tenants)
    data["source"]["streams"] = [{"table": "orders", "mode": "cursor", "cursor": "id"}]
    data["source"]["poll_interval"] = "0.1s"
    data["destinations"] = [{"name": "w", "type": "sqlite", "path": "w.sqlite", "write": "merge", "tables": {"orders": "all_orders"}}]
    path = _write(tmp_path, data)
    proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "run", str(path), "--follow"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return data, path, proc


def test_follow_takes_tenants_added_to_and_removed_from_the_file(tmp_path: Path) -> None:
    import signal

    _source(tmp_path / "acme.db", [(1, "a1")])
    _source(tmp_path / "globex.db", [(1, "g1")])
    data, _, proc = _follow(tmp_path, [{"id": "acme"}])
    wait = _waiter(proc)

    def dest_rows() -> list[tuple[Any, ...]]:
        return _sqlite_rows(tmp_path)

    try:
        wait(lambda: dest_rows() == [("acme", 1, "a1")], "acme")
        data["tenants"].append({"id": "globex", "url": "sqlite:///globex.db"})
        _write(tmp_path, data)
        wait(lambda: ("globex", 1, "g1") in dest_rows(), "globex, added to the file")
        with sqlite3.connect(tmp_path / "acme.db") as con:
            con.execute("INSERT INTO orders VALUES (2, 'a2')")
        wait(lambda: ("acme", 2, "a2") in dest_rows(), "acme's new row")

        data["tenants"] = [{"id": "globex", "url": "sqlite:///globex.db"}]  # acme leaves the file
        _write(tmp_path, data)
        from replicant.state import StateStore

        def acme_stopped() -> bool:
            with StateStore(f"sqlite:///{tmp_path / '.replicant' / 'shop' / 'state.db'}") as store:
                last = store.last_run("shop", tenant="acme")
            return last is not None and last["status"] != "running"

        wait(acme_stopped, "acme's feed to stop")
        with sqlite3.connect(tmp_path / "acme.db") as con:
            con.execute("INSERT INTO orders VALUES (3, 'a3')")
        with sqlite3.connect(tmp_path / "globex.db") as con:
            con.execute("INSERT INTO orders VALUES (2, 'g2')")
        wait(lambda: ("globex", 2, "g2") in dest_rows(), "globex's new row")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs
    assert ("acme", 3, "a3") not in dest_rows()  # its feed stopped; its rows stay until `tenant drop`
    assert "tenant acme is no longer in the pipeline file" in errs and "replicant tenant drop" in errs, errs
    r = replicant("tenant", "drop", str(tmp_path / "shop.yml"), "--tenant", "acme", cwd=tmp_path)  # no longer in the file
    assert r.returncode == 0 and "2 rows of tenant acme deleted" in r.stdout, r.stdout + r.stderr
    assert dest_rows() == [("globex", 1, "g1"), ("globex", 2, "g2")]


def test_cdc_install_and_uninstall_reach_every_tenants_source(tmp_path: Path) -> None:
    _source(tmp_path / "acme.db", [(1, "a1")])
    _source(tmp_path / "globex.db", [(1, "g1")])
    data = _pipeline(tmp_path, [{"id": "acme"}, {"id": "globex", "url": "sqlite:///globex.db"}])
    data["source"]["streams"] = [{"table": "orders", "mode": "trigger"}]
    path = _write(tmp_path, data)

    def triggers(db: str) -> int:
        with sqlite3.connect(tmp_path / db) as con:
            return con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]

    r = replicant("cdc", "install", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "tenant acme:" in r.stdout and "tenant globex:" in r.stdout
    assert triggers("acme.db") > 0 and triggers("globex.db") > 0
    r = replicant("cdc", "uninstall", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert triggers("acme.db") == 0 and triggers("globex.db") == 0

    assert replicant("cdc", "install", str(path), cwd=tmp_path).returncode == 0
    assert replicant("run", str(path), cwd=tmp_path).returncode == 0
    r = replicant("tenant", "drop", str(path), "--tenant", "globex", "--uninstall-cdc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "source of tenant globex:" in r.stdout and "1 rows of tenant globex deleted" in r.stdout, r.stdout
    assert triggers("globex.db") == 0 and triggers("acme.db") > 0  # the other tenant's capture stays
    assert _rows(tmp_path) == [("acme", 1, "a1")]


def test_resync_while_following_restarts_only_that_tenant(tmp_path: Path) -> None:
    import signal

    _source(tmp_path / "acme.db", [(1, "a1"), (2, "a2")])
    _source(tmp_path / "globex.db", [(1, "g1")])
    _, path, proc = _follow(tmp_path, [{"id": "acme"}, {"id": "globex", "url": "sqlite:///globex.db"}])
    wait = _waiter(proc)
    try:
        wait(lambda: _sqlite_rows(tmp_path) == [("acme", 1, "a1"), ("acme", 2, "a2"), ("globex", 1, "g1")], "both tenants")
        with sqlite3.connect(tmp_path / "acme.db") as con:
            con.execute("DELETE FROM orders WHERE id = 1")  # a cursor never sees it
        r = replicant("resync", str(path), "--stream", "orders", "--tenant", "acme", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "handed to the running `run --follow`" in r.stdout, r.stdout
        with sqlite3.connect(tmp_path / "globex.db") as con:
            con.execute("INSERT INTO orders VALUES (2, 'g2')")
        wait(lambda: _sqlite_rows(tmp_path) == [("acme", 2, "a2"), ("globex", 1, "g1"), ("globex", 2, "g2")],
             "acme resynced while globex flows")
        wait(lambda: not list((tmp_path / ".replicant" / "shop" / "requests").glob("*.json")), "the request taken")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs


def test_source_without_url_is_fine_when_every_tenant_has_one_and_a_missing_one_is_named(tmp_path: Path) -> None:
    _source(tmp_path / "acme.db", [(1, "a1")])
    data = _pipeline(tmp_path, [{"id": "acme", "url": "sqlite:///acme.db"}, {"id": "globex", "url": "sqlite:///nowhere.db"}])
    del data["source"]["url"]
    r = replicant("run", str(_write(tmp_path, data)), cwd=tmp_path)
    assert r.returncode != 0
    assert "tenants[1]" in r.stderr and "nowhere.db" in r.stderr and "tenants[0]" not in r.stderr, r.stderr
    data["tenants"].pop()
    r = replicant("run", str(_write(tmp_path, data)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _rows(tmp_path) == [("acme", 1, "a1")]
