"""A host that accepts TCP but never answers (a "black hole") fails the connection within
``connect_timeout`` with an error naming the host and the key, and SIGTERM/SIGINT end
``replicant run`` promptly in every phase, also while a driver is blocked connecting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_cli import replicant


class BlackHole:
    """A TCP listener that accepts every connection and never sends or reads a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def wait_for_connection(self, deadline: float) -> None:
        while not self.accepted:
            assert time.monotonic() < deadline, "nothing connected to the black hole"
            time.sleep(0.05)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _pipeline(tmp_path: Path, source: str, destination: str) -> Path:
    p = tmp_path / "pipeline.yml"
    p.write_text(f"pipeline: hole\nsource: {source}\ndestinations: [{destination}]\n", encoding="utf-8")
    return p


def _sqlite_source(path: Path) -> str:
    return f"{{type: sqlite, url: 'sqlite:///{path}', streams: [Genre]}}"


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_black_hole_source_fails_within_connect_timeout(tmp_path: Path, black_hole: BlackHole, kind: str) -> None:
    url = {"postgres": "postgresql", "mysql": "mysql"}[kind] + f"://app:pw@127.0.0.1:{black_hole.port}/shop"
    p = _pipeline(tmp_path, f"{{type: {kind}, url: '{url}', connect_timeout: 2s, streams: all}}",
                  f"{{name: w, path: '{tmp_path / 'w.duckdb'}'}}")
    started = time.monotonic()
    r = replicant("run", str(p))
    took = time.monotonic() - started
    out = r.stderr + r.stdout
    assert r.returncode == 1, out
    assert took < 30, f"took {took:.0f} s"
    assert f"127.0.0.1:{black_hole.port}" in out and "source.connect_timeout" in out and "2 s" in out, out
    assert "Traceback" not in out and ":pw@" not in out


@pytest.mark.parametrize("kind", ["postgres", "mysql", "http", "nats"])
def test_a_black_hole_destination_fails_within_its_timeout(
    tmp_path: Path, black_hole: BlackHole, chinook_sqlite_path: Path, kind: str
) -> None:
    url = {"postgres": "postgresql://app:pw@", "mysql": "mysql://app:pw@", "http": "http://", "nats": "nats://"}[kind]
    url += f"127.0.0.1:{black_hole.port}/" + ("shop" if kind in ("postgres", "mysql") else "")
    extra = ", timeout: 2s, max_retries: 0" if kind == "http" else ""
    key = "timeout" if kind == "http" else "connect_timeout"
    p = _pipeline(tmp_path, _sqlite_source(chinook_sqlite_path),
                  f"{{name: far, type: {kind}, url: '{url}', connect_timeout: 2s{extra}}}")
    started = time.monotonic()
    r = replicant("run", str(p))
    took = time.monotonic() - started
    out = r.stderr + r.stdout
    assert r.returncode == 1, out
    # nats-py makes up to 5 attempts of connect_timeout each
    assert took < (40 if kind == "nats" else 30), f"took {took:.0f} s"
    assert f"127.0.0.1:{black_hole.port}" in out.replace("host 127.0.0.1 port ", "127.0.0.1:"), out
    assert f"destinations.far.{key}" in out, out
    assert "Traceback" not in out and ":pw@" not in out


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "replicant.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_libpq_is_connecting_ends_the_run(tmp_path: Path, black_hole: BlackHole, signum: int, code: int) -> None:
    """libpq blocks the calling thread in C while it connects: a Python handler in that thread
    never runs. The signal must still end the run, within the stop grace."""
    url = f"postgresql://app:pw@127.0.0.1:{black_hole.port}/shop"
    p = _pipeline(tmp_path, f"{{type: postgres, url: '{url}', connect_timeout: 120s, streams: all}}",
                  f"{{name: w, path: '{tmp_path / 'w.duckdb'}'}}")
    proc = _spawn("run", str(p), "--stop-grace", "1")
    try:
        black_hole.wait_for_connection(time.monotonic() + 60)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert took < 10, f"took {took:.1f} s after the signal"
    assert "exiting now" in stderr and "Traceback" not in stderr


def test_a_second_signal_exits_at_once(tmp_path: Path, black_hole: BlackHole) -> None:
    url = f"mysql://app:pw@127.0.0.1:{black_hole.port}/shop"
    p = _pipeline(tmp_path, f"{{type: mysql, url: '{url}', connect_timeout: 120s, streams: all}}",
                  f"{{name: w, path: '{tmp_path / 'w.duckdb'}'}}")
    proc = _spawn("run", str(p))  # the default grace (10 s) is not waited for
    try:
        black_hole.wait_for_connection(time.monotonic() + 60)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        stderr_seen = ""
        while "stopping" not in stderr_seen:  # the first signal was heard
            assert time.monotonic() < deadline, "the first SIGINT was not acknowledged"
            stderr_seen += proc.stderr.readline() if proc.stderr else ""
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert took < 5, f"took {took:.1f} s after the second signal"


def test_the_operations_doc_example_is_a_valid_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md's timeouts example parses, with the durations it states."""
    import re

    import yaml

    from replicant.config import parse

    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    example = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", text, re.S)[0])
    for name in ("PGPASSWORD", "MYSQL_PASSWORD"):
        monkeypatch.setenv(name, "pw")
    cfg = parse(example)
    assert cfg.source.connect_timeout == 30.0
    assert {d.name: d.connect_timeout for d in cfg.destinations} == {"reporting": 5.0, "push": 5.0, "events": 5.0}
    assert parse({**example, "source": {k: v for k, v in example["source"].items() if k != "connect_timeout"}}
                 ).source.connect_timeout == 10.0  # the default


@pytest.mark.parametrize("value", ["soon", 0, "-1s"])
def test_a_bad_connect_timeout_names_its_key(tmp_path: Path, value: object) -> None:
    from replicant.config import parse
    from replicant.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse({"pipeline": "p", "source": {"type": "sqlite", "url": "sqlite:///x.db"},
               "destinations": [{"name": "d", "connect_timeout": value}]}, base_dir=tmp_path)
    assert [k for k, _ in caught.value.problems] == ["destinations[0].connect_timeout"]


def test_sigterm_while_a_read_waits_in_libpq_ends_the_run_and_the_next_run_completes(tmp_path: Path, pg_url: str) -> None:
    """The snapshot's query waits for a lock inside libpq (a C call): SIGTERM still ends the
    run within the grace, and the next run copies everything (the state stayed consistent)."""
    import duckdb
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g")
    p = _pipeline(tmp_path, f"{{type: postgres, url: '{pg_url}', streams: [public.t]}}",
                  f"{{name: w, path: '{tmp_path / 'w.duckdb'}'}}")
    with psycopg.connect(pg_url) as locker:
        locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        proc = _spawn("run", str(p), "--stop-grace", "1")
        try:
            deadline = time.monotonic() + 60
            with psycopg.connect(pg_url, autocommit=True) as watcher:
                while not watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND datname = current_database()").fetchone()[0]:
                    assert time.monotonic() < deadline and proc.poll() is None, "the read never waited for the lock"
                    time.sleep(0.05)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=20)
            took = time.monotonic() - sent
        finally:
            proc.kill()
        locker.rollback()
    assert proc.returncode == 143, stderr
    assert took < 10, f"took {took:.1f} s after the signal"
    again = replicant("run", str(p))
    assert again.returncode == 0, again.stderr
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchone() == (100, 100)


def test_sigterm_while_a_destination_write_hangs_ends_the_run(
    tmp_path: Path, black_hole: BlackHole, chinook_sqlite_path: Path
) -> None:
    p = _pipeline(tmp_path, _sqlite_source(chinook_sqlite_path),
                  f"{{name: far, type: http, url: 'http://127.0.0.1:{black_hole.port}/', timeout: 120s}}")
    proc = _spawn("run", str(p), "--stop-grace", "1")
    try:
        black_hole.wait_for_connection(time.monotonic() + 60)  # the write is waiting for an answer
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert took < 10, f"took {took:.1f} s after the signal"
