"""The state store: runs, checkpoints, destination offsets, dead letters and leases.

One :class:`StateStore` per process, on SQLAlchemy Core: a SQLite file by default, or
PostgreSQL when several machines share the state. It is safe to use from several
threads (each thread checks a connection out of the engine's pool).

The store never receives connection URLs of sources or destinations; run errors and
dead-letter reasons are redacted (:func:`replicant.errors.redact`) before they are
stored anyway.

Time: every timestamp is taken from the store's ``clock`` (default: this host's UTC
clock) and read back timezone-aware in UTC. Leases compare expiry times written by
different hosts, so hosts sharing a PostgreSQL store need synchronised clocks (NTP) and
lease TTLs much longer than their skew.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from replicant.errors import ConnectionError, FatalError, RetriableError, redact
from replicant.model import DeadLetter, Position, decode_position, encode_position, utcnow
from replicant.state import dead_letters as dead
from replicant.state import schema
from replicant.state._engine import configure_sqlite, first_line, normalise_url
from replicant.state._leases import LeaseMixin
from replicant.state._queue import QueueMixin
from replicant.state._tenants import TenantStateMixin
from replicant.state.access import AccessMixin
from replicant.state.files_seen import FilesSeenMixin
from replicant.state.progress import ProgressMixin
from replicant.state.records import (
    ALL_TENANTS,
    AllTenants,
    Checkpoint,
    DestinationOffset,
    Pause,
    PipelineState,
    TenantState,
)
from replicant.state.schema import checkpoints, dead_letters, offsets, paused, runs
from replicant.state.validations import ValidationMixin

__all__ = [
    "StateStore",
    "Checkpoint",
    "DestinationOffset",
    "DeadLetter",
    "TenantState",
    "PipelineState",
    "ALL_TENANTS",
    "RUN_STATUSES",
]

#: The statuses a finished run may have.
RUN_STATUSES = ("succeeded", "failed", "interrupted")


class StateStore(LeaseMixin, ValidationMixin, FilesSeenMixin, TenantStateMixin, QueueMixin, AccessMixin, ProgressMixin):
    """Durable state of pipelines: runs, checkpoints, offsets, dead letters, leases.

    Construction only parses the URL; :meth:`open` connects and creates or migrates the
    schema; :meth:`close` releases the connections. Usable as a context manager.

    Identity is (pipeline, tenant, stream). Every method that reads or writes keyed rows
    (checkpoints, offsets, dead letters) takes a keyword ``tenant``: ``None`` (the default)
    is "no tenant", any other value a non-empty tenant id; a read returns exactly that
    tenant's rows, so callers without tenants work as before. A source feed's capture
    checkpoint is the stream ``"(capture)"`` of its tenant. Runs carry the tenant they were
    narrowed to (``None``: the whole pipeline); :meth:`runs` lists every tenant's unless
    asked for one. Every tenant's state at once: :meth:`pipeline_state` (and :meth:`tenants`).

    Args:
        url: ``sqlite:///path/state.db`` (or a bare file path), ``postgresql://…`` or
            ``postgresql+psycopg://…``. Plain PostgreSQL URLs use the psycopg 3 driver.
        clock: returns the current time, timezone-aware; injectable for tests.

    Raises:
        ConfigError: the URL is not a supported state store.
    """

    def __init__(self, url: str | os.PathLike[str], *, clock: Callable[[], datetime] = utcnow) -> None:
        self._url = normalise_url(url)
        self._clock = clock
        self._engine: Engine | None = None

    @property
    def url(self) -> str:
        """The store's URL with the password masked."""
        return self._url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._url.get_backend_name()

    def __repr__(self) -> str:
        return f"StateStore({self.url!r})"

    def __enter__(self) -> StateStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lifecycle -----------------------------------------------------------------

    def open(self) -> StateStore:
        """Connects and brings the schema to the current version (idempotent).

        Migrations run in one transaction: a failure leaves the schema as it was.

        Raises:
            ConfigError: the store was written by a newer replicant.
            ConnectionError: the database cannot be reached.
        """
        if self._engine is not None:
            return self
        if self.dialect == "sqlite" and self._url.database:
            Path(self._url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(self._url, pool_pre_ping=self.dialect == "postgresql")
        if self.dialect == "sqlite":
            configure_sqlite(engine)
        self._engine = engine
        try:
            with self._begin(write=True) as conn:
                schema.migrate(conn, self._clock(), schema.MIGRATIONS)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Closes every pooled connection. The store can be opened again."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def schema_version(self) -> int:
        """The schema version of the database."""
        with self._begin() as conn:
            return schema.current_version(conn)

    # -- runs ------------------------------------------------------------------------

    def start_run(
        self, pipeline: str, *, command: str = "run", owner: str | None = None, tenant: str | None = None
    ) -> int:
        """Records a run as ``running``, started now; returns its id.

        ``tenant``: the tenant the run was narrowed to (``--tenant``); ``None`` for a run of
        the whole pipeline (every tenant, or a pipeline without tenants).
        """
        values = {
            "pipeline": pipeline,
            "tenant": _key(tenant),
            "command": command,
            "owner": owner,
            "status": "running",
            "started_at": self._clock(),
            "rows": 0,
        }
        with self._begin(write=True) as conn:
            run_id = conn.execute(sa.insert(runs).values(**values).returning(runs.c.id)).scalar_one()
            return int(run_id)

    def finish_run(self, run_id: int, status: str, *, error: str | None = None, rows: int = 0) -> None:
        """Records how a run ended. The error text is redacted before it is stored.

        Raises:
            ValueError: ``status`` is not one of :data:`RUN_STATUSES`, or no run has this id.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        values = {
            "status": status,
            "finished_at": self._clock(),
            "rows": rows,
            "error": None if error is None else redact(error),
        }
        with self._begin(write=True) as conn:
            result = conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**values))
            if result.rowcount == 0:
                raise ValueError(f"no run with id {run_id}")

    def runs(
        self, pipeline: str, limit: int = 20, *, tenant: str | AllTenants | None = ALL_TENANTS
    ) -> list[dict[str, Any]]:
        """The pipeline's most recent runs, newest first.

        Runs are history, not keyed state: by default every run of the pipeline is listed,
        whatever tenant it was narrowed to; ``tenant=`` keeps only the runs of that tenant
        (``None``: only the runs of the whole pipeline).

        Each run is a dict with ``id``, ``pipeline``, ``tenant`` (``None`` for a run of the
        whole pipeline), ``command``, ``owner``, ``status`` (``running`` or one of
        :data:`RUN_STATUSES`), ``started_at``, ``finished_at`` (``None`` while running),
        ``rows`` and ``error``.
        """
        query = sa.select(runs).where(runs.c.pipeline == pipeline)
        if tenant is not ALL_TENANTS:
            query = query.where(runs.c.tenant == _key(tenant))
        query = query.order_by(runs.c.id.desc()).limit(limit)
        with self._begin() as conn:
            return [_run(row) for row in conn.execute(query).mappings()]

    def last_run(self, pipeline: str, *, tenant: str | AllTenants | None = ALL_TENANTS) -> dict[str, Any] | None:
        """The pipeline's most recent run (see :meth:`runs`, also for ``tenant``), or ``None``."""
        found = self.runs(pipeline, limit=1, tenant=tenant)
        return found[0] if found else None

    # -- checkpoints -----------------------------------------------------------------

    def save_checkpoint(
        self,
        pipeline: str,
        stream: str,
        position: Position | None,
        *,
        rows_total: int,
        log_offset: int,
        tenant: str | None = None,
    ) -> None:
        """Saves (replaces) the checkpoint of ``(pipeline, tenant, stream)``.

        ``position=None`` makes the stream start over. Call it only once the batch the
        position covers is durable in the staging log. A source feed's capture checkpoint
        is the stream ``"(capture)"`` of its tenant: one per tenant.
        """
        values = _checkpoint_row(pipeline, _key(tenant), stream, position, rows_total, log_offset, self._clock())
        with self._begin(write=True) as conn:
            conn.execute(self._upsert(checkpoints, values))

    def save_checkpoints(
        self, pipeline: str, items: list[tuple[str, Position | None, int, int]], *, tenant: str | None = None
    ) -> None:
        """Saves several checkpoints ``(stream, position, rows_total, log_offset)`` of one
        tenant in one transaction (a change set touching several streams)."""
        now = self._clock()
        key = _key(tenant)
        with self._begin(write=True) as conn:
            for stream, position, rows_total, log_offset in items:
                conn.execute(
                    self._upsert(checkpoints, _checkpoint_row(pipeline, key, stream, position, rows_total, log_offset, now))
                )

    def checkpoint(self, pipeline: str, stream: str, *, tenant: str | None = None) -> Checkpoint | None:
        """The checkpoint of ``(pipeline, tenant, stream)``, or ``None`` when it was never saved."""
        query = sa.select(checkpoints).where(
            checkpoints.c.pipeline == pipeline, checkpoints.c.tenant == _key(tenant), checkpoints.c.stream == stream
        )
        with self._begin() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _checkpoint(row)

    def checkpoints(self, pipeline: str, *, tenant: str | None = None) -> dict[str, Checkpoint]:
        """Every checkpoint of one tenant of the pipeline (``None``: no tenant), by stream name.

        Every tenant's at once: :meth:`pipeline_state`.
        """
        query = (
            sa.select(checkpoints)
            .where(checkpoints.c.pipeline == pipeline, checkpoints.c.tenant == _key(tenant))
            .order_by(checkpoints.c.stream)
        )
        with self._begin() as conn:
            return {row["stream"]: _checkpoint(row) for row in conn.execute(query).mappings()}

    # -- destination offsets -----------------------------------------------------------

    def save_offset(
        self, pipeline: str, destination: str, stream: str, offset: int, *, rows_total: int, tenant: str | None = None
    ) -> None:
        """Mirrors the log offset a destination has applied for ``(pipeline, tenant, stream)``.

        The transactional truth lives in the destination itself; this copy serves
        ``status`` and may lag behind it.
        """
        values = {
            "pipeline": pipeline,
            "tenant": _key(tenant),
            "destination": destination,
            "stream": stream,
            "log_offset": offset,
            "rows_total": rows_total,
            "updated_at": self._clock(),
        }
        with self._begin(write=True) as conn:
            conn.execute(self._upsert(offsets, values))

    def offsets(self, pipeline: str, *, tenant: str | None = None) -> dict[tuple[str, str], DestinationOffset]:
        """One tenant's mirrored offsets (``None``: no tenant), by ``(destination, stream)``.

        Every tenant's at once: :meth:`pipeline_state`.
        """
        query = sa.select(offsets).where(offsets.c.pipeline == pipeline, offsets.c.tenant == _key(tenant))
        with self._begin() as conn:
            return {(row["destination"], row["stream"]): _offset(row) for row in conn.execute(query).mappings()}

    # -- paused streams ----------------------------------------------------------------

    def pause_stream(
        self, pipeline: str, destination: str, stream: str, reason: str, *, tenant: str | None = None
    ) -> None:
        """Records that ``destination`` paused ``stream`` (schema drift, a fatal delivery
        error) and why; :meth:`resume_stream` ends it. ``reason`` must hold no secret."""
        values = {
            "pipeline": pipeline,
            "tenant": _key(tenant),
            "destination": destination,
            "stream": stream,
            "reason": reason,
            "paused_at": self._clock(),
        }
        with self._begin(write=True) as conn:
            conn.execute(self._upsert(paused, values))

    def resume_stream(self, pipeline: str, destination: str, stream: str, *, tenant: str | None = None) -> None:
        """Forgets a pause of ``stream`` at ``destination`` (a delivery of it succeeded); a no-op if none."""
        with self._begin(write=True) as conn:
            conn.execute(sa.delete(paused).where(
                paused.c.pipeline == pipeline, paused.c.tenant == _key(tenant),
                paused.c.destination == destination, paused.c.stream == stream,
            ))

    # -- dead letters ------------------------------------------------------------------

    def add_dead_letters(
        self, pipeline: str, stream: str, records: list[DeadLetter], *, tenant: str | None = None, once: bool = False
    ) -> int:
        """Stores rejected records of ``(pipeline, tenant, stream)`` in one bulk insert;
        returns how many were stored.

        ``once``: a record a destination rejected (``destination`` set) is stored once per
        destination and ``origin`` (its log offset), so a re-delivery of the same log records
        after a crash, or a replay, which rejects them again, adds nothing (the engine's
        destination sink sets it).
        """
        if not records:
            return 0
        now, key = self._clock(), _key(tenant)
        with self._begin(write=True) as conn:
            rows = dead.letter_rows(conn, pipeline, key, stream, records, now, once=once)
            if rows:
                conn.execute(sa.insert(dead_letters), rows)
        return len(rows)

    def dead_letters(
        self, pipeline: str, stream: str | None = None, limit: int = 100, *, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """One tenant's (``None``: no tenant) most recent dead letters, of the pipeline or of
        one stream, newest first (see :meth:`find_dead_letters` for every tenant's)."""
        return self.find_dead_letters(pipeline, stream=stream, tenant=tenant, limit=limit)

    def find_dead_letters(
        self, pipeline: str, *, ids: Sequence[int] | None = None, stream: str | None = None,
        destination: str | None = None, tenant: str | AllTenants | None = ALL_TENANTS, limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The pipeline's dead letters, newest first: those with these ``ids`` (if given), of
        ``stream``, ``destination`` and ``tenant`` (default: every tenant), at most ``limit``.

        Each is a dict with ``id``, ``tenant`` (``None``: no tenant), ``stream``,
        ``destination``, ``origin``, ``reason``, ``payload`` (decoded), ``created_at``,
        ``attempts`` (retries rejected again) and ``retried_at`` (the last, or ``None``).
        """
        key = tenant if tenant is ALL_TENANTS else _key(tenant)
        where = dead.matching(pipeline, ids=ids, stream=stream, destination=destination, tenant_key=key)
        query = sa.select(*dead.COLUMNS).where(*where).order_by(dead_letters.c.id.desc()).limit(limit)
        with self._begin() as conn:
            return [dead.decoded(row) for row in conn.execute(query).mappings()]

    def discard_dead_letters(
        self, pipeline: str, *, ids: Sequence[int] | None = None, stream: str | None = None,
        destination: str | None = None, tenant: str | AllTenants | None = ALL_TENANTS,
    ) -> int:
        """Deletes the dead letters :meth:`find_dead_letters` would list with these filters (no
        filter at all: every one of the pipeline); returns how many were deleted."""
        key = tenant if tenant is ALL_TENANTS else _key(tenant)
        where = dead.matching(pipeline, ids=ids, stream=stream, destination=destination, tenant_key=key)
        with self._begin(write=True) as conn:
            return int(conn.execute(sa.delete(dead_letters).where(*where)).rowcount)

    def rejected_again(self, pipeline: str, letter_id: int, reason: str) -> None:
        """A retried dead letter was rejected again: keeps it with ``reason`` (redacted),
        ``attempts`` one higher and ``retried_at`` now."""
        values = {"reason": redact(reason), "attempts": dead_letters.c.attempts + 1, "retried_at": self._clock()}
        with self._begin(write=True) as conn:
            conn.execute(sa.update(dead_letters).where(*dead.matching(pipeline, ids=[letter_id])).values(**values))

    def dead_letter_count(self, pipeline: str, *, tenant: str | None = None) -> dict[str, int]:
        """How many dead letters each stream of one tenant (``None``: no tenant) has
        (streams with none are absent). Every tenant's at once: :meth:`pipeline_state`."""
        query = (
            sa.select(dead_letters.c.stream, sa.func.count())
            .where(dead_letters.c.pipeline == pipeline, dead_letters.c.tenant == _key(tenant))
            .group_by(dead_letters.c.stream)
        )
        with self._begin() as conn:
            return {stream: int(count) for stream, count in conn.execute(query)}

    # -- every tenant at once ------------------------------------------------------------

    def tenants(self, pipeline: str) -> list[str | None]:
        """Every tenant with a checkpoint, an offset, a dead letter or a run in the pipeline;
        ``None`` (no tenant / whole pipeline) first, then by name."""
        return list(self.pipeline_state(pipeline).tenants)

    def pipeline_state(self, pipeline: str) -> PipelineState:
        """Everything the store knows of a pipeline, per tenant, read in one transaction.

        This is the data behind ``replicant status`` (and ``--json``, and the API): per
        tenant, its checkpoints by stream (the capture checkpoint included, as stream
        ``"(capture)"``), its mirrored destination offsets, its dead-letter counts and its
        last run; plus the pipeline's last run of any tenant.
        """
        where_cp = checkpoints.c.pipeline == pipeline
        where_off = offsets.c.pipeline == pipeline
        where_dl = dead_letters.c.pipeline == pipeline
        where_paused = paused.c.pipeline == pipeline
        latest = (
            sa.select(sa.func.max(runs.c.id)).where(runs.c.pipeline == pipeline).group_by(runs.c.tenant).scalar_subquery()
        )
        with self._begin() as conn:
            cps = conn.execute(sa.select(checkpoints).where(where_cp).order_by(checkpoints.c.stream)).mappings().all()
            offs = conn.execute(sa.select(offsets).where(where_off)).mappings().all()
            counts = conn.execute(
                sa.select(dead_letters.c.tenant, dead_letters.c.stream, sa.func.count())
                .where(where_dl)
                .group_by(dead_letters.c.tenant, dead_letters.c.stream)
            ).all()
            last = conn.execute(sa.select(runs).where(runs.c.id.in_(latest)).order_by(runs.c.id.desc())).mappings().all()
            pauses = conn.execute(sa.select(paused).where(where_paused)).mappings().all()
        tenants: dict[str | None, TenantState] = {}

        def of(key: str) -> TenantState:
            tenant = key or None
            if tenant not in tenants:
                tenants[tenant] = TenantState(tenant=tenant)
            return tenants[tenant]

        for row in cps:
            of(row["tenant"]).checkpoints[row["stream"]] = _checkpoint(row)
        for row in offs:
            of(row["tenant"]).offsets[(row["destination"], row["stream"])] = _offset(row)
        for key, stream, count in counts:
            of(key).dead_letters[stream] = int(count)
        for row in pauses:
            of(row["tenant"]).paused[(row["destination"], row["stream"])] = Pause(row["reason"], row["paused_at"])
        for row in last:
            of(row["tenant"]).last_run = _run(row)
        ordered = dict(sorted(tenants.items(), key=lambda item: (item[0] is not None, item[0] or "")))
        return PipelineState(pipeline=pipeline, tenants=ordered, last_run=_run(last[0]) if last else None)

    # -- plumbing ----------------------------------------------------------------------

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def _upsert(self, table: sa.Table, values: dict[str, Any]) -> sa.Executable:
        """INSERT … ON CONFLICT (primary key) DO UPDATE of the other columns."""
        insert = self._insert(table).values(**values)
        keys = [c.name for c in table.primary_key.columns]
        return insert.on_conflict_do_update(
            index_elements=keys,
            set_={name: insert.excluded[name] for name in values if name not in keys},
        )

    @contextmanager
    def _begin(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction, committed on success, with driver errors translated.

        ``write=True`` takes SQLite's write lock up front (``BEGIN IMMEDIATE``), so a
        transaction never fails upgrading a read lock; waits follow ``busy_timeout``.
        """
        if self._engine is None:
            raise RuntimeError(f"{self!r} is not open: call open() first")
        try:
            conn = self._engine.connect()
        except sa_exc.DBAPIError as exc:
            raise ConnectionError(f"cannot reach the state store {self.url}: {first_line(exc)}") from None
        try:
            with conn:
                if write:
                    conn.execution_options(replicant_begin="BEGIN IMMEDIATE")
                with conn.begin():
                    yield conn
        except sa_exc.OperationalError as exc:
            # Lost connection, serialisation failure, SQLite lock timeout: worth a retry.
            raise RetriableError(f"state store {self.url}: {first_line(exc)}") from exc
        except sa_exc.DBAPIError as exc:
            raise FatalError(f"state store {self.url}: {first_line(exc)}") from exc
        except sa_exc.StatementError as exc:
            # A value refused while binding (a naive datetime): the caller's mistake, unwrapped.
            if isinstance(exc.orig, ValueError):
                raise exc.orig from None
            raise


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        position=decode_position(row["position"]),
        rows_total=row["rows_total"],
        log_offset=row["log_offset"],
        updated_at=row["updated_at"],
    )


def _key(tenant: str | None) -> str:
    """The stored tenant key: ``''`` for no tenant (NULLs never match in a key)."""
    if tenant is None:
        return ""
    if not isinstance(tenant, str) or not tenant:
        raise ValueError(f"tenant must be a non-empty string, or None for no tenant; not {tenant!r}")
    return tenant


def _run(row: Any) -> dict[str, Any]:
    run = dict(row)
    run["tenant"] = run["tenant"] or None
    return run


def _offset(row: Any) -> DestinationOffset:
    return DestinationOffset(row["log_offset"], row["rows_total"], row["updated_at"])


def _checkpoint_row(
    pipeline: str, tenant: str, stream: str, position: Position | None, rows_total: int, log_offset: int, now: datetime
) -> dict[str, Any]:
    return {
        "pipeline": pipeline,
        "tenant": tenant,
        "stream": stream,
        "position": None if position is None else encode_position(position),
        "rows_total": rows_total,
        "log_offset": log_offset,
        "updated_at": now,
    }
