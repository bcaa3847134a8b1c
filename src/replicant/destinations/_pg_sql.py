"""SQL text of the PostgreSQL destination: quoting, catalog queries, statement builders.

Identifiers are always quoted here (``"`` doubled); values never appear in SQL text, they
are parameters (``$1``…) or bulk-loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "COLUMNS_SQL",
    "MAX_IDENT_BYTES",
    "KEY_PENDING_COMMENT",
    "KEY_PENDING_SQL",
    "UNIQUE_KEYS_SQL",
    "create_table",
    "dedupe_keys",
    "delete_using",
    "insert_select",
    "offsets_ddl",
    "pending_name",
    "pg_name",
    "qualified",
    "quote",
    "select_offset",
    "insert_offset",
    "upsert_offset",
]

#: PostgreSQL truncates identifiers to NAMEDATALEN-1 = 63 bytes.
MAX_IDENT_BYTES = 63
_PENDING_SUFFIX = "__replicant_pending"


def quote(name: str) -> str:
    """A PostgreSQL quoted identifier (``a"b`` → ``"a""b"``); NUL is refused."""
    if "\x00" in name:
        raise ValueError(f"identifier {name!r} contains a NUL character, which PostgreSQL does not allow")
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote(schema)}.{quote(name)}"


def _clip(name: str, limit: int) -> str:
    data = name.encode("utf-8")
    if len(data) <= limit:
        return name
    return data[:limit].decode("utf-8", errors="ignore")  # cut at a character boundary, as pg_mbcliplen


def pg_name(name: str) -> str:
    """The name PostgreSQL stores for identifier ``name`` (clipped to 63 bytes, like the server)."""
    return _clip(name, MAX_IDENT_BYTES)


def pending_name(table: str) -> str:
    """The pending table of ``replace`` for ``table``: ``<table>__replicant_pending``.

    A long name is shortened with a hash so that the pending name never clips back to the
    table's own name (which would make ``DROP TABLE pending`` drop the live table).
    """
    name = pg_name(table) + _PENDING_SUFFIX
    if len(name.encode("utf-8")) <= MAX_IDENT_BYTES:
        return name
    digest = hashlib.sha1(table.encode("utf-8")).hexdigest()[:8]
    room = MAX_IDENT_BYTES - len(_PENDING_SUFFIX) - len(digest) - 1
    return f"{_clip(table, room)}_{digest}{_PENDING_SUFFIX}"


#: Columns of one table: name, format_type, base type name (a domain's base), category,
#: array element type name and category, nullable, has a default. Parameters: schema, table.
COLUMNS_SQL = """
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), bt.typname::text, bt.typcategory::text,
       coalesce(et.typname::text, ''), coalesce(et.typcategory::text, ''), NOT a.attnotnull, a.atthasdef
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_catalog.pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

#: The column lists of the unique, immediate, non-partial, column-only indexes of a table
#: (the ones ``ON CONFLICT (cols)`` can use). Parameters: schema, table.
UNIQUE_KEYS_SQL = """
SELECT string_agg(a.attname::text, chr(1) ORDER BY k.ord)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
"""


def create_table(
    schema: str, table: str, columns: Sequence[tuple[str, str]], key: Sequence[str], *, primary: bool = True
) -> str:
    """``CREATE TABLE`` with the given ``(name, type)`` columns, the ``key`` columns ``NOT NULL``
    and, unless ``primary`` is false, the primary key on them.

    ``type`` is trusted SQL: a mapped type or a declared type the server parsed with
    ``to_regtype``.
    """
    parts = [f"{quote(n)} {t}" + (" NOT NULL" if n in key else "") for n, t in columns]
    if key and primary:
        parts.append(f"PRIMARY KEY ({', '.join(quote(k) for k in key)})")
    return f"CREATE TABLE {qualified(schema, table)} ({', '.join(parts)})"


#: The comment on a table created without its primary key (:func:`create_table` with
#: ``primary=False``) until the key is built: what tells a later run that the missing key is
#: replicant's to build, and not a table made without one by hand.
KEY_PENDING_COMMENT = "replicant: primary key pending (built when the bulk load ends)"

#: The table's comment and whether it has a primary key. Parameters: schema, table.
KEY_PENDING_SQL = """
SELECT obj_description(c.oid, 'pg_class'),
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2
"""


def dedupe_keys(schema: str, table: str, key: Sequence[str]) -> str:
    """``DELETE`` every row of ``table`` whose ``key`` another row holds and that was written
    before it: by an older transaction (``age(xmin)`` is larger: wraparound-safe, and xmin stays
    readable on frozen rows), within one transaction at a lower ``ctid``."""
    match = " AND ".join(f"a.{quote(k)} = b.{quote(k)}" for k in key)
    return (
        f"DELETE FROM {qualified(schema, table)} AS a USING {qualified(schema, table)} AS b "
        f"WHERE {match} AND (age(a.xmin), b.ctid) > (age(b.xmin), a.ctid)"
    )


def offsets_ddl(schema: str, table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, table)} ("
        "pipeline text NOT NULL, stream text NOT NULL, log_offset bigint NOT NULL, "
        "updated_at timestamp with time zone NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, stream))"
    )


def upsert_offset(schema: str, table: str) -> str:
    """Parameters: pipeline, stream, offset."""
    return (
        f"INSERT INTO {qualified(schema, table)} AS o (pipeline, stream, log_offset, updated_at) "
        "VALUES ($1, $2, $3, now()) ON CONFLICT (pipeline, stream) "
        "DO UPDATE SET log_offset = EXCLUDED.log_offset, updated_at = EXCLUDED.updated_at"
    )


def select_offset(schema: str, table: str) -> str:
    """Parameters: pipeline, stream."""
    return f"SELECT log_offset FROM {qualified(schema, table)} WHERE pipeline = $1 AND stream = $2"


def insert_offset(schema: str, table: str) -> str:
    """The stream's row with offset -1 unless it exists (a concurrent insert of it is waited
    for). Parameters: pipeline, stream."""
    return (
        f"INSERT INTO {qualified(schema, table)} (pipeline, stream, log_offset, updated_at) "
        "VALUES ($1, $2, -1, now()) ON CONFLICT (pipeline, stream) DO NOTHING"
    )


def insert_select(
    schema: str,
    table: str,
    stage: str,
    exprs: dict[str, str],
    *,
    where: str = "",
    conflict: Sequence[str] = (),
    comparable: dict[str, bool] | None = None,
) -> str:
    """``INSERT INTO table (cols) SELECT exprs FROM pg_temp.stage s [WHERE …]``, with
    ``ON CONFLICT (conflict) DO UPDATE`` of every non-key column when ``conflict`` is given.

    The update skips rows whose values are all unchanged (``IS DISTINCT FROM``): a
    re-delivered snapshot row then costs an index probe, not a new row version and WAL.

    Args:
        exprs: column name → SQL expression over the stage alias ``s``.
        comparable: column name → whether its type has an equality operator; columns
            without one (``json``, ``xml``…) are compared as text.
    """
    cols = list(exprs)
    sql = (
        f"INSERT INTO {qualified(schema, table)} AS t ({', '.join(quote(c) for c in cols)}) "
        f"SELECT {', '.join(exprs[c] for c in cols)} FROM pg_temp.{quote(stage)} AS s"
    )
    if where:
        sql += f" WHERE {where}"
    if conflict:
        rest = [c for c in cols if c not in conflict]
        target = ", ".join(quote(k) for k in conflict)
        if rest:
            sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in rest)
            cast = {c: "" if (comparable or {}).get(c, False) else "::text" for c in rest}
            old = ", ".join(f"t.{quote(c)}{cast[c]}" for c in rest)
            new = ", ".join(f"EXCLUDED.{quote(c)}{cast[c]}" for c in rest)
            sql += f" ON CONFLICT ({target}) DO UPDATE SET {sets} WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
        else:
            sql += f" ON CONFLICT ({target}) DO NOTHING"
    return sql


def delete_using(schema: str, table: str, stage: str, key_exprs: dict[str, str], *, where: str = "") -> str:
    """``DELETE FROM table t USING pg_temp.stage s WHERE t.key = <expr over s> … [AND where]``."""
    match = [f"t.{quote(k)} = {e}" for k, e in key_exprs.items()]
    if where:
        match.append(where)
    return f"DELETE FROM {qualified(schema, table)} AS t USING pg_temp.{quote(stage)} AS s WHERE {' AND '.join(match)}"


def column_list(names: Iterable[str]) -> str:
    return ", ".join(quote(n) for n in names)
