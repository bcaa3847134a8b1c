"""The connections of :class:`~replicant.sources.postgres.capture.PgLogCapture` (moved out of
:mod:`replicant.sources.postgres.capture`, whose docstring describes the whole capture).

:class:`_Replication`, a mixin of :class:`~replicant.sources.postgres.capture.PgLogCapture`: the
autocommit *control* connection (psycopg, catalog queries; errors mapped to
:mod:`replicant.errors`), and the replication-protocol connection (libpq ``pq.PGconn`` with
``replication=database``): opening it, its commands (``CREATE_REPLICATION_SLOT …
EXPORT_SNAPSHOT``, ``START_REPLICATION``) and the standby status updates that confirm the
slot up to the acknowledged LSN.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

from replicant.errors import ConnectionError, FatalError, RetriableError
from replicant.timeouts import libpq_seconds

from .pgoutput import SESSION_OPTIONS, lsn_text, parse_lsn

_PG_EPOCH_US = 946_684_800_000_000


class _Replication:
    """The connection methods of :class:`~replicant.sources.postgres.capture.PgLogCapture` (uses its
    ``source``, ``slot``, ``publication`` and ``_qi``; owns ``_ctl``, ``_repl``, ``_io``,
    ``_acked``, ``_sent_flush``, ``_last_status``, set by its ``__init__``)."""

    source: Any
    slot: str
    publication: str
    _ctl: Any
    _repl: Any
    _io: threading.Lock
    _acked: int
    _sent_flush: int
    _last_status: float

    def _control(self) -> Any:
        if self._ctl is None or self._ctl.closed:
            import psycopg

            try:
                self._ctl = psycopg.connect(self.source._url, autocommit=True, connect_timeout=libpq_seconds(self.source.connect_timeout))
            except psycopg.Error as e:
                raise ConnectionError(f"cannot connect to {self.source.location()}: {self.source.scrub(str(e)).strip()}") from None
        return self._ctl

    def _sql(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        try:
            cur = self._control().execute(sql, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as e:
            msg = self.source.scrub(str(e)).strip()
            if (e.sqlstate or "").startswith("08") or self._ctl is None or self._ctl.closed or self._ctl.broken:
                self._close_control()
                raise RetriableError(f"lost the connection to {self.source.location()}: {msg}") from None
            if isinstance(e, psycopg.errors.InsufficientPrivilege):
                raise
            raise FatalError(f"{self.source.location()}: {msg}") from None

    def _close_control(self) -> None:
        if self._ctl is not None:
            try:
                self._ctl.close()
            finally:
                self._ctl = None

    def _open_repl(self) -> Any:
        from psycopg import pq
        from psycopg.conninfo import make_conninfo

        info = make_conninfo(self.source._url, replication="database", options=SESSION_OPTIONS,
                             connect_timeout=str(libpq_seconds(self.source.connect_timeout)), application_name=f"replicant {self.slot}")
        conn = pq.PGconn.connect(info.encode())
        if conn.status != pq.ConnStatus.OK:
            msg = self.source.scrub(conn.error_message.decode(errors="replace"))
            conn.finish()
            raise ConnectionError(f"cannot open a replication connection to {self.source.location()}: {msg.strip()}")
        return conn

    def _repl_exec(self, conn: Any, sql: str) -> Any:
        from psycopg import pq

        res = conn.exec_(sql.encode())
        if res.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COPY_BOTH):
            msg = (res.error_message or conn.error_message).decode(errors="replace").strip()
            raise FatalError(f"replication command failed on {self.source.location()}: {msg}")
        return res

    def _finish(self, conn: Any) -> None:
        if conn is not None:
            try:
                conn.finish()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _wal_lsn(self) -> int:
        return parse_lsn(self._sql("SELECT pg_current_wal_lsn()::text")[0][0])

    def _create_slot(self, conn: Any, name: str, *, temporary: bool) -> tuple[int, str]:
        temp = " TEMPORARY" if temporary else ""
        res = self._repl_exec(conn, f"CREATE_REPLICATION_SLOT {self._qi(name)}{temp} LOGICAL pgoutput EXPORT_SNAPSHOT")
        return parse_lsn(res.get_value(0, 1).decode()), res.get_value(0, 2).decode()

    def _status(self, conn: Any, *, reply: bool, received: int = 0) -> None:
        """A standby status update: flush = the acknowledged LSN (0: none, ignored by the server)."""
        flush = self._acked
        now_us = int(time.time() * 1e6) - _PG_EPOCH_US
        msg = b"r" + struct.pack(">QQQqB", max(received, flush), flush, flush, now_us, 1 if reply else 0)
        if conn.put_copy_data(msg) != 1 or conn.flush() != 0:
            raise RetriableError(f"lost the replication connection to {self.source.location()}")
        self._sent_flush = flush
        self._last_status = time.monotonic()

    def _start(self, lsn: int) -> Any:
        conn = self._open_repl()
        pub = self.publication.replace('"', '""').replace("'", "''")
        try:
            self._repl_exec(conn, f"START_REPLICATION SLOT {self._qi(self.slot)} LOGICAL {lsn_text(lsn)} "
                            f"(proto_version '1', publication_names '\"{pub}\"')")
        except BaseException:
            conn.finish()
            raise
        conn.nonblocking = 1
        with self._io:
            self._repl = conn
            self._last_status = 0.0
        return conn
