"""Hostile identifiers and values in every SQL source: names with spaces, quotes, unicode,
mixed case and reserved words, as table, columns and a composite key that is chunked."""

from __future__ import annotations

import pyarrow as pa

from .dbs import Db, data_of, read_all

TABLE = "Order Details"
QUOTED = 'naïve "quoted" col'
COLUMNS = ["select", QUOTED, "MixedCase", "with space", "t", "from`back"]
# key strings with quotes, backslashes, a hex-looking text, unicode (BMP: MariaDB utf8mb3 too)
KEYS = ["a'b", 'a"b', "a\\b", "X'00'", "ünï", "z ", "%_", "--", "é$1"]


def test_hostile_names_and_key_values_read_correctly(empty_db: Db) -> None:
    db = empty_db
    q = db.q
    text = "varchar(40)" if db.kind == "mysql" else "text"
    bin_coll = " COLLATE utf8mb4_bin" if db.kind == "mysql" else ""
    db.execute(
        f"CREATE TABLE {q(TABLE)} ({q('select')} {text}{bin_coll} NOT NULL, {q(QUOTED)} integer NOT NULL, "
        f"{q('MixedCase')} {text}, {q('with space')} integer, {q('t')} integer, {q('from`back')} {text}, "
        f"PRIMARY KEY ({q('select')}, {q(QUOTED)}))"
        + (" DEFAULT CHARSET utf8mb4" if db.kind == "mysql" else "")
    )
    rows = [(k, i, f"v{k}", i * 10, -i, k[::-1]) for k in KEYS for i in (1, 2)]
    db.insert(TABLE, COLUMNS, rows)

    # the name written as-is, and schema-qualified with quotes
    schema_name = {"postgres": "public", "mysql": db.url.rsplit("/", 1)[1], "sqlite": "main"}[db.kind]
    for written in (TABLE, f'"{schema_name}"."{TABLE}"'):
        src, (s,) = db.streams([written], batch_size=2, chunk_size=5)
        with src:
            assert s.name == written and s.table == (schema_name, TABLE)
            assert s.primary_key == ("select", QUOTED)
            assert s.schema.names == COLUMNS
            batches = read_all(src, s)
            got = data_of(batches)
            assert got.num_rows == len(rows)
            assert sorted(tuple(r.values()) for r in got.to_pylist()) == sorted(rows)
            # resume from every position: exactly the rest, every time
            for cut in range(1, len(batches)):
                rest = read_all(src, s, batches[cut - 1].position)
                assert pa.concat_tables([data_of(batches[:cut]), data_of(rest)]).equals(got), cut

        src, (s,) = db.streams([{"table": TABLE, "include": ["MixedCase"], "mode": "cursor", "cursor": "t"}])
        with src:
            assert s.schema.names == ["select", QUOTED, "MixedCase", "t"]
            assert data_of(read_all(src, s)).num_rows == len(rows)
