"""Throwaway PostgreSQL, MariaDB and NATS servers for the test suite.

Each ``start_*`` function creates a private data directory under the system
temp dir, starts the server on a free TCP port bound to 127.0.0.1, polls a real
connection until it answers (or a deadline passes) and returns a handle whose
``stop()`` shuts the server down and deletes the directory. When a start fails,
the raised :class:`ServerStartError` carries the tail of the server log, and the
directory is kept for inspection.

If the test process dies without its teardown, a watchdog process stops the
server and removes its directory (server_procs.py).

``existing_postgres`` / ``existing_mysql`` / ``existing_nats`` wrap an already
running server given by URL (env ``REPLICANT_TEST_PG_URL`` /
``REPLICANT_TEST_MYSQL_URL`` / ``REPLICANT_TEST_NATS_URL`` in conftest); their
``stop()`` does nothing.

Nothing here runs at import time.
"""

from __future__ import annotations

import glob
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pymysql

try:  # tests/ as a package
    from .server_procs import (
        START_TIMEOUT,
        ServerStartError,
        as_user,
        free_port,
        is_root,
        make_base_dir,
        parse_url,
        retry_port_races,
        run_setup,
        start_watchdog,
        stop_process,
        stop_watchdog,
        url_auth,
        wait_until,
    )
except ImportError:  # default layout: pytest puts tests/ on sys.path
    from server_procs import (
        START_TIMEOUT,
        ServerStartError,
        as_user,
        free_port,
        is_root,
        make_base_dir,
        parse_url,
        retry_port_races,
        run_setup,
        start_watchdog,
        stop_process,
        stop_watchdog,
        url_auth,
        wait_until,
    )

__all__ = [
    "START_TIMEOUT", "MysqlServer", "NatsServer", "PgServer", "ServerStartError",
    "existing_mysql", "existing_nats", "existing_postgres", "find_pg_bindir", "free_port",
    "start_mysql", "start_nats", "start_postgres",
]

# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bindir() -> Path:
    """Return the newest ``/usr/lib/postgresql/<ver>/bin`` holding initdb.

    Falls back to the directory of ``initdb`` / ``pg_ctl`` on PATH.

    Raises:
        ServerStartError: no PostgreSQL server binaries are installed.
    """
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        def version(path: str) -> tuple[int, ...]:
            ver = Path(path).parent.parent.name
            return tuple(int(p) for p in re.findall(r"\d+", ver))

        return Path(max(found, key=version)).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServerStartError("PostgreSQL server binaries not found (apt-get install postgresql)")


@dataclass
class PgServer:
    """A PostgreSQL server reachable over TCP.

    Attributes:
        host: TCP host (127.0.0.1 for throwaway servers).
        port: TCP port.
        user: superuser name ("postgres").
        password: password, or None (throwaway servers use trust auth).
        base_dir: temp directory holding data, socket and log; None if external.
        bindir: directory of the server binaries; None if external.
    """

    host: str
    port: int
    user: str = "postgres"
    password: str | None = None
    base_dir: Path | None = None
    bindir: Path | None = None
    _stopped: bool = field(default=False, repr=False)
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)
    _start_cmd: list[str] | None = field(default=None, repr=False)

    def url(self, dbname: str = "postgres") -> str:
        """Return ``postgresql://user@host:port/dbname`` for ``dbname``."""
        return f"postgresql://{url_auth(self.user, self.password)}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        """Open an autocommit psycopg connection; the caller closes it."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.url(dbname), **kwargs)

    def create_database(self, name: str, template: str | None = None) -> None:
        """Create database ``name`` (optionally as a copy of ``template``)."""
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with self.connect() as conn:
            conn.execute(sql)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, with its sessions and replication slots.

        Ends every session on the database first (walsenders included, so
        their slots become inactive), then drops the logical slots that pin
        WAL, then the database itself.

        Raises:
            psycopg.Error: the drop failed.
        """
        with self.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()", [name])
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s", [name])
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @property
    def log_path(self) -> Path | None:
        """Server log file of a throwaway server."""
        return self.base_dir / "server.log" if self.base_dir else None

    def crash(self) -> None:
        """Stop a throwaway server the way a crash does (``pg_ctl stop -m immediate``: no
        shutdown checkpoint, clients cut off); :meth:`start` brings it back (with crash recovery)."""
        if self.base_dir is None or self.bindir is None or self._start_cmd is None:
            raise RuntimeError("only a throwaway server can be crashed")
        subprocess.run(_pg_stop_cmd(self.bindir, self.base_dir / "data", "immediate"),
                       cwd=self.base_dir, capture_output=True, check=True)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start a throwaway server again after :meth:`crash`, on the same port; returns
        once it accepts connections."""
        if self.base_dir is None or self._start_cmd is None:
            raise RuntimeError("only a throwaway server can be started again")
        log = self.base_dir / "server.log"
        run_setup(self._start_cmd, cwd=self.base_dir, what="pg_ctl start", log=log)
        wait_until(lambda: self.connect().close(), timeout, "PostgreSQL", log)

    def stop(self) -> None:
        """Stop a throwaway server (fast shutdown) and delete its directory.

        Idempotent; a no-op for an external server.
        """
        if self._stopped or self.base_dir is None or self.bindir is None:
            return
        self._stopped = True
        stop_watchdog(self._watchdog)
        self._watchdog = None
        subprocess.run(_pg_stop_cmd(self.bindir, self.base_dir / "data", "fast"),
                       cwd=self.base_dir, capture_output=True, check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _pg_stop_cmd(bindir: Path, data: Path, mode: str) -> list[str]:
    return [*as_user("postgres"), str(bindir / "pg_ctl"), "-D", str(data), "-m", mode,
            "-w", "-t", "60", "stop"]


def start_postgres(timeout: float = START_TIMEOUT) -> PgServer:
    """Create and start a throwaway PostgreSQL cluster.

    The cluster uses trust auth, UTF8, locale C.UTF-8, ``wal_level=logical``
    and listens on 127.0.0.1 at a free port, with its unix socket in the temp
    directory. As root, initdb and pg_ctl run as the ``postgres`` OS user.

    Raises:
        ServerStartError: initdb or startup failed, or no connection succeeded
            before ``timeout`` seconds; the message holds the log tail.
    """
    return retry_port_races(_start_postgres_once, timeout)


#: A role that throwaway PostgreSQL servers make log in with a password over TCP
#: (``CREATE ROLE replicant_pw LOGIN PASSWORD ...`` it first).
PASSWORD_ROLE = "replicant_pw"


def _start_postgres_once(timeout: float) -> PgServer:
    bindir = find_pg_bindir()
    base = make_base_dir("replicant-pg-", "postgres")
    data, log = base / "data", base / "server.log"
    as_pg = as_user("postgres")
    run_setup([*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
          "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"], cwd=base, what="initdb")
    # Trust everyone except PASSWORD_ROLE, which must log in with its password over TCP:
    # tests of wrong-password handling need a server that can say no.
    hba = data / "pg_hba.conf"
    hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    port = free_port()
    options = " ".join([
        f"-p {port}", f"-k {base}",
        "-c listen_addresses=127.0.0.1", "-c wal_level=logical",
        "-c max_replication_slots=20", "-c max_wal_senders=20", "-c fsync=on",
        "-c max_connections=200",
    ])
    start = [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
             "-w", "-t", str(int(timeout)), "start"]
    server = PgServer(host="127.0.0.1", port=port, base_dir=base, bindir=bindir,
                      _watchdog=start_watchdog("pg", base, _pg_stop_cmd(bindir, data, "fast")), _start_cmd=start)
    try:
        run_setup(start, cwd=base, what="pg_ctl start", log=log)
        wait_until(lambda: server.connect().close(), timeout, "PostgreSQL", log)
    except BaseException as exc:
        # Leave the directory for inspection, but do not leave a server running.
        exc.base_dir = base
        stop_watchdog(server._watchdog)
        subprocess.run(_pg_stop_cmd(bindir, data, "immediate"), cwd=base, capture_output=True,
                       check=False)
        server._stopped = True
        raise
    return server


def existing_postgres(url: str) -> PgServer:
    """Wrap an already running PostgreSQL server given by URL (never stopped)."""
    host, port, user, password = parse_url(url, 5432)
    return PgServer(host=host, port=port, user=user or "postgres", password=password)


# --------------------------------------------------------------------------- MariaDB


@dataclass
class MysqlServer:
    """A MariaDB/MySQL server reachable over TCP.

    Attributes:
        host: TCP host (127.0.0.1 for throwaway servers).
        port: TCP port.
        user: user with all privileges ("root").
        password: password, or None (throwaway servers have none).
        base_dir: temp directory holding data, socket, binlogs and log.
    """

    host: str
    port: int
    user: str = "root"
    password: str | None = None
    base_dir: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)

    def url(self, dbname: str = "") -> str:
        """Return ``mysql://user@host:port/dbname`` for ``dbname``."""
        return f"mysql://{url_auth(self.user, self.password)}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str | None = None, **kwargs) -> pymysql.connections.Connection:
        """Open an autocommit PyMySQL connection over TCP; the caller closes it."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        kwargs.setdefault("charset", "utf8mb4")
        return pymysql.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password or "", database=dbname, **kwargs)

    def create_database(self, name: str) -> None:
        """Create database ``name`` (server default charset utf8mb4)."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        """Kill the sessions using ``name``, then drop it if it exists.

        Raises:
            pymysql.MySQLError: the drop failed.
        """
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION lock_wait_timeout = 10")
                cur.execute(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE db = %s AND id <> CONNECTION_ID()", [name])
                for (session_id,) in cur.fetchall():
                    try:
                        cur.execute(f"KILL {int(session_id)}")
                    except pymysql.MySQLError:
                        pass  # the session ended meanwhile (unknown thread id)
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    @property
    def log_path(self) -> Path | None:
        """Error log file of a throwaway server."""
        return self.base_dir / "error.log" if self.base_dir else None

    def stop(self) -> None:
        """Stop a throwaway server (SIGTERM, then SIGKILL after 60 s) and delete its directory.

        Idempotent; a no-op for an external server.
        """
        proc, self._proc = self._proc, None
        stop_process(proc, self._watchdog, self.base_dir)
        self._watchdog = None


def start_mysql(timeout: float = START_TIMEOUT) -> MysqlServer:
    """Create and start a throwaway MariaDB server.

    Row-format binlog (server-id 1), utf8mb4, ``local_infile`` on, durable
    commits, listening on 127.0.0.1 at a free port. ``root`` has no password and
    is reachable over TCP from 127.0.0.1 (the account is created if the
    installer did not make one).

    Raises:
        ServerStartError: install or startup failed, or no connection succeeded
            before ``timeout`` seconds; the message holds the log tail.
    """
    return retry_port_races(_start_mysql_once, timeout)


def _start_mysql_once(timeout: float) -> MysqlServer:
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if not Path(mariadbd).exists() or not install:
        raise ServerStartError("MariaDB binaries not found (apt-get install mariadb-server)")
    base = make_base_dir("replicant-my-", "mysql")
    data, log, sock = base / "data", base / "error.log", base / "mysqld.sock"
    user_opt = ["--user=mysql"] if is_root() else []
    run_setup([install, "--no-defaults", *user_opt, f"--datadir={data}",
          "--auth-root-authentication-method=normal", "--skip-test-db"],
         cwd=base, what="mariadb-install-db")
    port = free_port()
    tmpdir = base / "tmp"
    tmpdir.mkdir(exist_ok=True)
    if is_root():  # mariadbd runs as mysql and must write there
        shutil.chown(tmpdir, user="mysql", group="mysql")
    cmd = [
        mariadbd, "--no-defaults", *user_opt, f"--datadir={data}", f"--port={port}",
        "--bind-address=127.0.0.1", f"--socket={sock}", f"--pid-file={base / 'mariadbd.pid'}",
        f"--log-error={log}", "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci", f"--log-bin={base / 'binlog'}",
        "--binlog-format=ROW", "--server-id=1", "--local-infile=1",
        "--innodb-flush-log-at-trx-commit=1", "--skip-name-resolve", "--max-connections=300",
        # its own temp dir: a shared /tmp can be cleaned under a running server
        f"--tmpdir={tmpdir}",
    ]
    # New session: a Ctrl-C in the terminal must not kill the server before teardown.
    proc = subprocess.Popen(cmd, cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    server = MysqlServer(host="127.0.0.1", port=port, base_dir=base, _proc=proc,
                         _watchdog=start_watchdog("my", base, "mariadbd.pid"))
    try:
        def probe() -> None:
            if proc.poll() is not None:
                raise ServerStartError(f"mariadbd exited with {proc.returncode}")
            # PyMySQL leaks its unix socket when connect() fails (a ResourceWarning,
            # an error under filterwarnings=error), so probe the socket ourselves first.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.settimeout(2)
                raw.connect(str(sock))
            pymysql.connect(unix_socket=str(sock), user="root", connect_timeout=2).close()

        wait_until(probe, timeout, "MariaDB", log)
        _ensure_tcp_root(sock)
        server.connect().close()
    except BaseException as exc:
        exc.base_dir = base
        server.base_dir = None  # keep the directory for inspection
        server.stop()
        raise
    return server


def _ensure_tcp_root(sock: Path) -> None:
    """Make 'root'@'127.0.0.1' exist with no password and all privileges.

    With --skip-name-resolve, a TCP client from 127.0.0.1 matches only host
    '127.0.0.1' or '%', never 'localhost' (which means the unix socket).
    """
    conn = pymysql.connect(unix_socket=str(sock), user="root", connect_timeout=5, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
    finally:
        conn.close()


def existing_mysql(url: str) -> MysqlServer:
    """Wrap an already running MariaDB/MySQL server given by URL (never stopped)."""
    host, port, user, password = parse_url(url, 3306)
    return MysqlServer(host=host, port=port, user=user or "root", password=password)


# --------------------------------------------------------------------------- NATS


@dataclass
class NatsServer:
    """A NATS server with JetStream.

    Attributes:
        host: TCP host (127.0.0.1 for throwaway servers).
        port: client port.
        base_dir: temp directory holding the JetStream store and log.
    """

    host: str
    port: int
    base_dir: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``nats://host:port``."""
        return f"nats://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop a throwaway server and delete its directory (idempotent; no-op if external)."""
        proc, self._proc = self._proc, None
        stop_process(proc, self._watchdog, self.base_dir)
        self._watchdog = None


def start_nats(timeout: float = START_TIMEOUT) -> NatsServer:
    """Start a throwaway ``nats-server -js`` on 127.0.0.1 at a free port.

    Raises:
        ServerStartError: the binary is missing, or the server did not greet
            with a JetStream-enabled INFO before ``timeout``; holds the log tail.
    """
    return retry_port_races(_start_nats_once, timeout)


def _start_nats_once(timeout: float) -> NatsServer:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        raise ServerStartError("nats-server not found (apt-get install nats-server)")
    base = Path(tempfile.mkdtemp(prefix="replicant-nats-"))
    log, port = base / "nats.log", free_port()
    cmd = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(base / "js"),
           "-P", str(base / "nats.pid"), "-l", str(log)]
    proc = subprocess.Popen(cmd, cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    server = NatsServer(host="127.0.0.1", port=port, base_dir=base, _proc=proc,
                        _watchdog=start_watchdog("nats", base, "nats.pid"))

    def probe() -> None:
        if proc.poll() is not None:
            raise ServerStartError(f"nats-server exited with {proc.returncode}")
        with socket.create_connection((server.host, port), timeout=2) as conn, \
                conn.makefile("rb") as stream:
            greeting = stream.readline()
        if not greeting.startswith(b"INFO ") or b'"jetstream":true' not in greeting:
            raise OSError(f"unexpected greeting {greeting[:200]!r}")

    try:
        wait_until(probe, timeout, "NATS", log)
    except BaseException as exc:
        exc.base_dir = base
        server.base_dir = None  # keep the directory for inspection
        server.stop()
        raise
    return server


def existing_nats(url: str) -> NatsServer:
    """Wrap an already running NATS server given by URL (never stopped)."""
    host, port, _, _ = parse_url(url, 4222)
    return NatsServer(host=host, port=port)
