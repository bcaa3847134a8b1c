"""The ways of copying a table that the benchmark times, each as a subprocess.

A *job* prepares a fresh target, runs one or two timed copies and verifies each one.
Jobs with two copies time a merge into an empty target and then a merge of the same
rows into the now loaded target (a fresh pipeline: new name, state and log, so it
re-reads everything and merges).

Method ids (what ``--only`` matches and what the tables print):

=============================  ===================================================
copy-devnull                   ``psql COPY … TO STDOUT (FORMAT binary) > /dev/null``
copy-pipe-pk / copy-pipe-nopk  ``psql COPY TO STDOUT | psql COPY FROM STDIN`` (binary)
                               into an identical table with / without its key
replicant-read                 the read floor: the table read through replicant's
                               PostgreSQL source and dropped (read_floor.py)
replicant-pg-merge[-loaded]    ``replicant run``, PostgreSQL → PostgreSQL, write: merge
replicant-pg-append            the same, write: append
replicant-duckdb-append        ``replicant run``, PostgreSQL → DuckDB file
replicant-duckdb-merge[-loaded]
dlt-pg-append, dlt-pg-merge[-loaded], dlt-duckdb-append, dlt-duckdb-merge[-loaded]
                               dlt ``sql_table(backend="connectorx")`` (dlt_copy.py)
=============================  ===================================================
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import verify
from common import BenchError, Measurement, checkpoint, recreate_database, run_measured

HERE = Path(__file__).resolve().parent


@dataclass
class Ctx:
    """What every job needs: the server, the work dir and the tools."""

    server: object
    work: Path
    timeout: float
    replicant_cmd: list[str] | None
    dlt_python: Path | None
    source_fingerprints: dict = field(default_factory=dict)


@dataclass
class Run:
    """One timed copy and its verification."""

    method: str
    measurement: Measurement
    problems: list[str]
    info: dict = field(default_factory=dict)


Wrap = Callable[[list[str], Path], list[str]]


def _no_wrap(cmd: list[str], _log: Path) -> list[str]:
    return cmd


@dataclass(frozen=True)
class Job:
    """A named copy procedure reporting one or more methods."""

    name: str
    methods: tuple[str, ...]
    needs: str  # "psql", "replicant" or "dlt"
    fn: Callable[..., Iterator[Run]]
    kwargs: dict

    def run(self, ctx: Ctx, ds, src_db: str, rep: int, *, loaded: bool = True,
            wrap: Wrap = _no_wrap) -> Iterator[Run]:
        return self.fn(ctx, ds, src_db, rep, loaded=loaded, wrap=wrap, **self.kwargs)


# --------------------------------------------------------------------------- helpers


def _psql(ctx: Ctx, db: str, sql: str) -> list[str]:
    s = ctx.server
    return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", s.host, "-p", str(s.port),
            "-U", s.user, "-d", db, "-c", sql]


def _source_fp(ctx: Ctx, ds, src_db: str) -> dict:
    key = (src_db, ds.table)
    if key not in ctx.source_fingerprints:
        with ctx.server.connect(src_db) as conn:
            ctx.source_fingerprints[key] = verify.fingerprint_pg(conn, "public", ds.table, ds.columns)
    return ctx.source_fingerprints[key]


def _verify_pg(ctx: Ctx, ds, src_db: str, dst_db: str, schema: str | None = None) -> tuple[list[str], dict]:
    with ctx.server.connect(dst_db) as conn:
        try:
            schema = verify.find_pg_table(conn, ds.table, schema)
        except LookupError as exc:
            return [str(exc)], {}
        got = verify.fingerprint_pg(conn, schema, ds.table, ds.columns)
        info = {"target": f"{dst_db}.{schema}.{ds.table}",
                "target_has_pk": verify.pg_has_primary_key(conn, schema, ds.table)}
    return verify.compare(_source_fp(ctx, ds, src_db), got, ds.columns), info


def _verify_duckdb(ctx: Ctx, ds, src_db: str, path: Path, schema: str | None = None) -> tuple[list[str], dict]:
    try:
        schema = verify.find_duckdb_table(str(path), ds.table, schema)
    except Exception as exc:  # noqa: BLE001 - a missing file or table is a verification failure
        return [f"{type(exc).__name__}: {exc}"], {}
    got = verify.fingerprint_duckdb(str(path), schema, ds.table, ds.columns)
    return verify.compare(_source_fp(ctx, ds, src_db), got, ds.columns), {"target": f"{path.name}:{schema}.{ds.table}"}


def _timed(ctx: Ctx, cmd: list[str], log: Path, wrap: Wrap, env: dict | None = None) -> Measurement:
    checkpoint(ctx.server)
    return run_measured(wrap(cmd, log), log_prefix=log, env=env, timeout=ctx.timeout, files_under=ctx.work)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- COPY baselines


def copy_devnull(ctx: Ctx, ds, src_db: str, rep: int, *, loaded: bool, wrap: Wrap) -> Iterator[Run]:
    log = ctx.work / "logs" / f"{ds.name}-copy-devnull-{rep}"
    cmd = ["bash", "-c", 'exec "$@" > /dev/null', "copy",
           *_psql(ctx, src_db, f'COPY "{ds.table}" TO STDOUT (FORMAT binary)')]
    yield Run("copy-devnull", _timed(ctx, cmd, log, wrap), [])


def copy_pipe(ctx: Ctx, ds, src_db: str, rep: int, *, loaded: bool, wrap: Wrap, with_key: bool) -> Iterator[Run]:
    method = "copy-pipe-pk" if with_key else "copy-pipe-nopk"
    dst = "dst_copy"
    recreate_database(ctx.server, dst)
    with ctx.server.connect(dst) as conn:
        ds.create_target(conn, with_key=with_key)
    out = " ".join(shlex.quote(a) for a in _psql(ctx, src_db, f'COPY "{ds.table}" TO STDOUT (FORMAT binary)'))
    inn = " ".join(shlex.quote(a) for a in _psql(ctx, dst, f'COPY "{ds.table}" FROM STDIN (FORMAT binary)'))
    cmd = ["bash", "-o", "pipefail", "-c", f"{out} | {inn}"]
    m = _timed(ctx, cmd, ctx.work / "logs" / f"{ds.name}-{method}-{rep}", wrap)
    problems, info = _verify_pg(ctx, ds, src_db, dst)
    yield Run(method, m, problems, info)


# --------------------------------------------------------------------------- replicant


def replicant_read(ctx: Ctx, ds, src_db: str, rep: int, *, loaded: bool, wrap: Wrap) -> Iterator[Run]:
    """read_floor.py: start-up and the source's read, what every run pays before it writes."""
    log = ctx.work / "logs" / f"{ds.name}-replicant-read-{rep}"
    cmd = [sys.executable, str(HERE / "read_floor.py"), "--url", ctx.server.url(src_db), "--table", ds.table]
    m = _timed(ctx, cmd, log, wrap)
    rows = json.loads(Path(f"{log}.out").read_text())["rows"]
    yield Run("replicant-read", m, [] if rows == ds.rows else [f"read {rows:,} rows of {ds.rows:,}"])


def _pipeline_file(directory: Path, name: str, source_url: str, ds, destination: dict) -> Path:
    import yaml

    doc = {
        "pipeline": name,
        "source": {"type": "postgres", "url": source_url, "streams": [{"table": ds.table}]},
        "destinations": [destination],
        "state": f"sqlite:///{directory / 'state.db'}",
        "log": str(directory / "log"),
    }
    path = directory / "pipeline.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def replicant(ctx: Ctx, ds, src_db: str, rep: int, *, loaded: bool, wrap: Wrap,
              dest: str, write: str) -> Iterator[Run]:
    """``replicant run`` into PostgreSQL (database dst_rep) or a DuckDB file.

    For write=merge with ``loaded``, a second pipeline (new name, state and log) then
    merges the same rows into the loaded target.
    """
    if not ctx.replicant_cmd:
        raise BenchError("replicant CLI not available")
    base = ctx.work / f"replicant-{dest}"
    shutil.rmtree(base, ignore_errors=True)
    duck = base / "target.duckdb"
    if dest == "pg":
        recreate_database(ctx.server, "dst_rep")
        destination = {"name": "pg", "type": "postgres", "url": ctx.server.url("dst_rep"), "write": write}
    else:
        destination = {"name": "duck", "type": "duckdb", "path": str(duck), "write": write}
    steps = [("", f"replicant-{dest}-{write}")]
    if write == "merge" and loaded:
        steps.append(("_loaded", f"replicant-{dest}-{write}-loaded"))
    for suffix, method in steps:
        run_dir = _fresh_dir(base / f"run{suffix}")
        yml = _pipeline_file(run_dir, f"bench_{dest}_{write}{suffix}", ctx.server.url(src_db), ds, destination)
        log = ctx.work / "logs" / f"{ds.name}-{method}-{rep}"
        m = _timed(ctx, [*ctx.replicant_cmd, "run", str(yml)], log, wrap)
        if dest == "pg":
            problems, info = _verify_pg(ctx, ds, src_db, "dst_rep")
        else:
            problems, info = _verify_duckdb(ctx, ds, src_db, duck)
        info["log_bytes"] = sum(p.stat().st_size for p in (run_dir / "log").rglob("*") if p.is_file()) \
            if (run_dir / "log").exists() else 0
        yield Run(method, m, problems, info)


# --------------------------------------------------------------------------- dlt


def dlt(ctx: Ctx, ds, src_db: str, rep: int, *, loaded: bool, wrap: Wrap,
        dest: str, write: str) -> Iterator[Run]:
    """dlt ``sql_table(backend="connectorx")`` via dlt_copy.py in bench/.venv-dlt."""
    if not ctx.dlt_python:
        raise BenchError("dlt virtualenv not available")
    s = ctx.server
    pw = "bench"  # dlt insists on a password; the server's trust auth ignores it
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; dlt's extra installs psycopg2
    src_url = f"postgresql+psycopg2://{s.user}:{pw}@{s.host}:{s.port}/{src_db}"
    base = _fresh_dir(ctx.work / f"dlt-{dest}")
    duck = base / "target.duckdb"
    dataset = f"dlt_{write}"
    cmd = [str(ctx.dlt_python), str(HERE / "dlt_copy.py"), "--source-url", src_url,
           "--table", ds.table, "--primary-key", ds.key, "--write", write,
           "--dataset", dataset, "--pipelines-dir", str(base / "pipelines")]
    if dest == "pg":
        recreate_database(s, "dst_dlt")
        cmd += ["--destination", "postgres", "--dest-url", f"postgresql://{s.user}:{pw}@{s.host}:{s.port}/dst_dlt"]
    else:
        cmd += ["--destination", "duckdb", "--duckdb-path", str(duck)]
    steps = [f"dlt-{dest}-{write}"]
    if write == "merge" and loaded:
        steps.append(f"dlt-{dest}-{write}-loaded")  # same pipeline again: re-reads, merges
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "RUNTIME__DLTHUB_TELEMETRY": "false"}
    for method in steps:
        log = ctx.work / "logs" / f"{ds.name}-{method}-{rep}"
        m = _timed(ctx, cmd, log, wrap, env=env)
        if dest == "pg":
            problems, info = _verify_pg(ctx, ds, src_db, "dst_dlt", dataset)
        else:
            problems, info = _verify_duckdb(ctx, ds, src_db, duck, dataset)
        err = Path(f"{log}.err").read_text(errors="replace")
        info["loader_file_formats"] = next((ln.split(":", 1)[1].strip() for ln in err.splitlines()
                                            if ln.startswith("loader file formats:")), "?")
        yield Run(method, m, problems, info)


JOBS: tuple[Job, ...] = (
    Job("copy-devnull", ("copy-devnull",), "psql", copy_devnull, {}),
    Job("copy-pipe-nopk", ("copy-pipe-nopk",), "psql", copy_pipe, {"with_key": False}),
    Job("copy-pipe-pk", ("copy-pipe-pk",), "psql", copy_pipe, {"with_key": True}),
    Job("replicant-read", ("replicant-read",), "replicant", replicant_read, {}),
    Job("replicant-pg-merge", ("replicant-pg-merge", "replicant-pg-merge-loaded"), "replicant",
        replicant, {"dest": "pg", "write": "merge"}),
    Job("replicant-pg-append", ("replicant-pg-append",), "replicant", replicant, {"dest": "pg", "write": "append"}),
    Job("replicant-duckdb-append", ("replicant-duckdb-append",), "replicant", replicant,
        {"dest": "duckdb", "write": "append"}),
    Job("replicant-duckdb-merge", ("replicant-duckdb-merge", "replicant-duckdb-merge-loaded"), "replicant",
        replicant, {"dest": "duckdb", "write": "merge"}),
    Job("dlt-pg-append", ("dlt-pg-append",), "dlt", dlt, {"dest": "pg", "write": "append"}),
    Job("dlt-pg-merge", ("dlt-pg-merge", "dlt-pg-merge-loaded"), "dlt", dlt, {"dest": "pg", "write": "merge"}),
    Job("dlt-duckdb-append", ("dlt-duckdb-append",), "dlt", dlt, {"dest": "duckdb", "write": "append"}),
    Job("dlt-duckdb-merge", ("dlt-duckdb-merge", "dlt-duckdb-merge-loaded"), "dlt", dlt,
        {"dest": "duckdb", "write": "merge"}),
)

METHODS: tuple[str, ...] = tuple(m for j in JOBS for m in j.methods)


def replicant_command() -> list[str] | None:
    """The replicant CLI as a command (beside this Python first, then on PATH), or None."""
    beside = Path(sys.executable).with_name("replicant")
    exe = str(beside) if beside.exists() else shutil.which("replicant")
    return [exe] if exe else None

