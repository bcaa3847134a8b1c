"""The two source tables of the initial-sync benchmark, and how to build them.

* ``narrow``: ``pgbench -i -s SCALE`` → ``pgbench_accounts`` (SCALE × 100,000 rows:
  int key, two ints, char(84)).
* ``wide``: N rows of 11 columns covering the common scalar types (bigint key, int,
  bigint, numeric(12,2), float8, text, text with NULLs, timestamptz, timestamp, bool,
  date), generated in SQL.

Each dataset knows the kind of each column, which is what ``verify.py`` needs to build
type-tolerant checksums in PostgreSQL and in DuckDB.
"""

from __future__ import annotations

from dataclasses import dataclass

from common import checkpoint, recreate_database, run_checked


@dataclass(frozen=True)
class Dataset:
    """One source table.

    Attributes:
        name: short name used in results ("narrow", "wide").
        table: table name in the source database (schema public).
        key: primary-key column.
        columns: (name, kind) in table order; kind is one of int, numeric, float,
            text, char, ts, date, bool.
        ddl: CREATE TABLE statement without the key (for the COPY baseline's target).
        rows: row count once built.
    """

    name: str
    table: str
    key: str
    columns: tuple[tuple[str, str], ...]
    ddl: str
    rows: int

    def create_target(self, conn, *, with_key: bool) -> None:
        """Create an identical empty table in ``conn``'s database, with or without its key."""
        conn.execute(f'DROP TABLE IF EXISTS "{self.table}"')
        conn.execute(self.ddl)
        if with_key:
            conn.execute(f'ALTER TABLE "{self.table}" ADD PRIMARY KEY ("{self.key}")')


def narrow(scale: int) -> Dataset:
    return Dataset(
        name="narrow",
        table="pgbench_accounts",
        key="aid",
        columns=(("aid", "int"), ("bid", "int"), ("abalance", "int"), ("filler", "char")),
        # pgbench's own definition (src/bin/pgbench/pgbench.c, initCreateTables)
        ddl="CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, "
            "filler char(84)) WITH (fillfactor=100)",
        rows=scale * 100_000,
    )


def wide(rows: int) -> Dataset:
    return Dataset(
        name="wide",
        table="wide",
        key="id",
        columns=(
            ("id", "int"), ("i", "int"), ("b", "int"), ("amount", "numeric"), ("f", "float"),
            ("t", "text"), ("tn", "text"), ("ts", "ts"), ("tsn", "ts"), ("flag", "bool"),
            ("d", "date"),
        ),
        ddl="CREATE TABLE wide (id bigint NOT NULL, i int NOT NULL, b bigint NOT NULL, "
            "amount numeric(12,2) NOT NULL, f double precision NOT NULL, t text NOT NULL, "
            "tn text, ts timestamptz NOT NULL, tsn timestamp NOT NULL, flag boolean NOT NULL, "
            "d date NOT NULL)",
        rows=rows,
    )


# Deterministic, varied values: negative numbers, fractional cents, microseconds,
# a third of `tn` NULL, texts of varying length. (`%%` is modulo: the query has parameters.)
_WIDE_FILL = """
INSERT INTO wide
SELECT g,
       ((g * 7919) %% 2000001 - 1000000)::int,
       g * 1000003 - 5000000000,
       round(((g * 104729) %% 100000000 - 50000000) / 100.0, 2),
       (g * 0.3183098861837907) - 1234.5,
       'customer-' || md5(g::text),
       CASE WHEN g %% 3 = 0 THEN NULL ELSE repeat('x', (g %% 40)::int) || g::text END,
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1.000123 second',
       timestamp '1999-12-31 23:59:59' + g * interval '37.5 second',
       g %% 2 = 0,
       date '1990-01-01' + (g %% 20000)::int
FROM generate_series(1::bigint, %(rows)s::bigint) AS g
"""


def build(server, dbname: str, dataset: Dataset, *, scale: int | None = None) -> None:
    """Create and fill ``dataset``'s table (with its key) in ``dbname``, then VACUUM ANALYZE it."""
    if dataset.name == "narrow":
        assert scale is not None
        run_checked(
            [str(server.bindir / "pgbench") if server.bindir else "pgbench", "-i", "-q",
             "-s", str(scale), "-h", server.host, "-p", str(server.port), "-U", server.user,
             dbname],
            what=f"pgbench -i -s {scale}",
        )
    else:
        with server.connect(dbname) as conn:
            conn.execute("DROP TABLE IF EXISTS wide")
            conn.execute(dataset.ddl)
            conn.execute(_WIDE_FILL, {"rows": dataset.rows})
            conn.execute(f'ALTER TABLE wide ADD PRIMARY KEY ("{dataset.key}")')
    with server.connect(dbname) as conn:
        conn.execute(f'VACUUM (FREEZE, ANALYZE) "{dataset.table}"')
        got = conn.execute(f'SELECT count(*) FROM "{dataset.table}"').fetchone()[0]
    if got != dataset.rows:
        raise RuntimeError(f"{dataset.table}: built {got} rows, expected {dataset.rows}")
    checkpoint(server)


def build_pair(server, rows: int) -> list[Dataset]:
    """Databases ``src`` and ``dst`` made afresh, and ``src`` filled with the narrow and wide
    tables of ``rows`` rows each (narrow: rounded down to a multiple of 100k): the setup of
    the per-component benchmarks (``driver_build.py``, ``pg_writer.py``)."""
    recreate_database(server, "src")
    recreate_database(server, "dst")
    tables = [narrow(rows // 100_000), wide(rows)]
    for ds in tables:
        build(server, "src", ds, scale=rows // 100_000)
    return tables
