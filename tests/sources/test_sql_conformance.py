"""The conformance suite every SQL source passes: PostgreSQL, MariaDB and SQLite on Chinook.

Discover, read all, resume inside a chunk, composite keys, empty and keyless tables,
include/exclude, bad credentials, config errors, a table dropped before reading.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from replicant.errors import ConfigError, ConnectionError, FatalError
from replicant.model import DIALECT_KEY, SQL_TYPE_KEY, decode_position
from replicant.registry import source_class

from .dbs import CONTEXT, Db, data_of, read_all

CHINOOK_PKS = {
    "album": ("album_id",), "artist": ("artist_id",), "customer": ("customer_id",),
    "employee": ("employee_id",), "genre": ("genre_id",), "invoice": ("invoice_id",),
    "invoice_line": ("invoice_line_id",), "media_type": ("media_type_id",),
    "playlist": ("playlist_id",), "playlist_track": ("playlist_id", "track_id"), "track": ("track_id",),
}
DIALECTS = {"postgres": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}


def test_discover_finds_the_eleven_tables_with_their_keys(chinook_db: Db) -> None:
    with chinook_db.source() as src:
        found = {s.name: s for s in src.discover()}
    assert set(found) == {chinook_db.t(t) for t in CHINOOK_PKS}
    for snake, pk in CHINOOK_PKS.items():
        s = found[chinook_db.t(snake)]
        assert s.primary_key == tuple(chinook_db.c(c) for c in pk)
        assert s.table[-1] == chinook_db.t(snake) and len(s.table) == 2
        assert s.mode == "full"
        assert s.schema.metadata[DIALECT_KEY] == DIALECTS[chinook_db.kind].encode()
        assert all(SQL_TYPE_KEY in f.metadata for f in s.schema)
        assert all(not s.schema.field(k).nullable for k in s.primary_key)


def test_read_all_rows_of_every_table_with_exact_content(chinook_db: Db, chinook_counts: dict[str, int]) -> None:
    db = chinook_db
    src, streams = db.streams("all", batch_size=1000, chunk_size=3000)
    with src:
        assert len(streams) == 11
        tables = {}
        for s in streams:
            batches = read_all(src, s)
            assert batches[-1].final and batches[-1].position["done"] is True
            assert batches[-1].data.num_rows == 0
            assert not any(b.final for b in batches[:-1])
            assert all(b.data.schema == s.change_schema for b in batches)
            assert {op for b in batches for op in b.data.column("_op").to_pylist()} <= {"read"}
            tables[s.name] = data_of(batches)
    for snake, n in chinook_counts.items():
        assert tables[db.t(snake)].num_rows == n, snake

    # content, exactly, in the types of the mapping
    album = tables[db.t("album")].to_pylist()
    assert album[0] == {db.c("album_id"): 1, db.c("title"): "For Those About To Rock We Salute You", db.c("artist_id"): 1}
    track = {r[db.c("track_id")]: r for r in tables[db.t("track")].to_pylist()}
    assert track[3448][db.c("name")] == "Lamentations of Jeremiah, First Set \\ Incipit Lamentatio"
    assert track[1][db.c("unit_price")] == Decimal("0.99")
    invoice = tables[db.t("invoice")]
    assert invoice.schema.field(db.c("total")).type == pa.decimal128(10, 2)
    assert invoice.schema.field(db.c("invoice_date")).type == pa.timestamp("us")
    first = invoice.slice(0, 1).to_pylist()[0]
    assert first[db.c("invoice_date")] == datetime(2021, 1, 1)
    assert first[db.c("total")] == Decimal("1.98")
    # the exact decimal sum (SQLite stores REAL; rounding to the declared scale restores it)
    assert sum(invoice.column(db.c("total")).to_pylist()) == Decimal("2328.60")
    # key order
    ids = tables[db.t("invoice_line")].column(db.c("invoice_line_id")).to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("cut", [1, 3, 6])
def test_resume_from_a_mid_table_position_yields_exactly_the_rest(chinook_db: Db, cut: int) -> None:
    """Batches of 500 in chunks of 1200: cut 1 is inside chunk 1, 3 inside chunk 2, 6 at its end."""
    db = chinook_db
    src, streams = db.streams([db.t("track")], batch_size=500, chunk_size=1200)
    with src:
        s = streams[0]
        full = read_all(src, s)
        assert sum(b.data.num_rows for b in full) == 3503
        pos = full[cut - 1].position
        assert pos["mode"] == "full" and "after" in pos and full[cut - 1].resumable
        # each row's _pos is the position after its batch, without the snapshot id (kept in the log only)
        assert decode_position(full[cut - 1].data.column("_pos")[0].as_py()) == {k: v for k, v in pos.items() if k != "snapshot"}
        rest = read_all(src, s, pos)
    assert rest[0].position["snapshot"] == pos["snapshot"], "a resumed read continues the same snapshot"
    before = data_of(full[:cut])
    combined = pa.concat_tables([before, data_of(rest)])
    assert combined.equals(data_of(full))
    ids = combined.column(db.c("track_id")).to_pylist()
    assert len(ids) == len(set(ids)) == 3503


def test_composite_key_is_chunked_and_resumes(chinook_db: Db) -> None:
    db = chinook_db
    pid, tid = db.c("playlist_id"), db.c("track_id")
    src, streams = db.streams([db.t("playlist_track")], batch_size=300, chunk_size=1000)
    with src:
        s = streams[0]
        batches = read_all(src, s)
        # batches of 300 within chunks of 1000 (a batch never spans two chunk queries)
        assert [b.data.num_rows for b in batches] == [300, 300, 300, 100] * 8 + [300, 300, 115, 0]
        assert batches[4].position["after"] == [
            batches[4].data.column(pid)[-1].as_py(), batches[4].data.column(tid)[-1].as_py()
        ]
        rest = read_all(src, s, batches[4].position)
    table = data_of(batches)
    keys = list(zip(table.column(pid).to_pylist(), table.column(tid).to_pylist()))
    assert len(keys) == len(set(keys)) == 8715
    assert keys == sorted(keys)
    assert pa.concat_tables([data_of(batches[:5]), data_of(rest)]).equals(table)


def test_a_new_read_after_a_finished_snapshot_starts_a_new_snapshot(chinook_db: Db) -> None:
    src, streams = chinook_db.streams([chinook_db.t("genre")])
    with src:
        first = read_all(src, streams[0])
        again = read_all(src, streams[0], first[-1].position)
    assert data_of(again).num_rows == 25
    assert again[-1].position["snapshot"] != first[-1].position["snapshot"]


def test_empty_and_keyless_tables(empty_db: Db) -> None:
    db = empty_db
    db.execute(
        f"CREATE TABLE {db.q('empty')} (id integer PRIMARY KEY, v {db.text})",
        f"CREATE TABLE {db.q('nokey')} (a integer, b {db.text})",
        *[f"INSERT INTO {db.q('nokey')} VALUES ({i}, 'v{i}')" for i in range(7)],
    )
    src, streams = db.streams(["empty", "nokey"], batch_size=3)
    with src:
        empty, nokey = streams
        out = read_all(src, empty)
        assert len(out) == 1 and out[0].final and out[0].data.num_rows == 0
        assert out[0].data.schema == empty.change_schema
        assert out[0].position == {"mode": "full", "snapshot": out[0].position["snapshot"], "done": True}

        out = read_all(src, nokey)
    assert [b.data.num_rows for b in out] == [3, 3, 1, 0]
    assert [b.resumable for b in out] == [False, False, False, True]
    assert [b.final for b in out] == [False, False, False, True]
    assert out[0].position["rows"] == 3
    assert sorted(data_of(out).column("a").to_pylist()) == list(range(7))


def test_estimate_rows_comes_from_the_table_statistics(empty_db: Db) -> None:
    """The progress bars' estimate: from statistics (never a scan), close to the rows once analyzed."""
    db = empty_db
    db.execute(f"CREATE TABLE {db.q('sized')} (id integer PRIMARY KEY, v {db.text})")
    db.insert("sized", ["id", "v"], [(i, f"v{i}") for i in range(1, 501)])
    src, [stream] = db.streams(["sized"])
    with src:
        if db.kind == "sqlite":
            assert src.estimate_rows(stream) is None  # never analyzed: no sqlite_stat1
        db.execute({"postgres": "ANALYZE sized", "mysql": "ANALYZE TABLE sized", "sqlite": "ANALYZE"}[db.kind])
        estimate = src.estimate_rows(stream)
    assert estimate is not None and 250 <= estimate <= 750, estimate  # InnoDB's is sampled


def test_include_and_exclude_keep_the_key(chinook_db: Db) -> None:
    db = chinook_db
    album, title, aid, artist = db.t("album"), db.c("title"), db.c("album_id"), db.c("artist_id")
    src, streams = db.streams([{"table": album, "include": [title]}, {"table": db.t("artist"), "exclude": [db.c("name")]}])
    with src:
        inc, exc = streams
        assert inc.schema.names == [aid, title]
        assert exc.schema.names == [db.c("artist_id")]
        got = data_of(read_all(src, inc))
    assert got.column_names == [aid, title] and got.num_rows == 347

    with pytest.raises(ConfigError) as e:
        db.streams([{"table": album, "include": ["titel"]}, {"table": album.upper() + "x", "exclude": [artist]}])
    problems = dict(e.value.problems)
    assert "no column 'titel'" in problems["source.streams[0].include"]
    assert f"(did you mean {title!r}?)" in problems["source.streams[0].include"]
    assert "source.streams[1].table" in problems


def test_missing_table_in_config_is_a_config_error_naming_the_key(chinook_db: Db) -> None:
    db = chinook_db
    typo = db.t("album")[:3] + "m"  # albm / Albm
    with pytest.raises(ConfigError) as e:
        db.streams([db.t("album"), db.t("artist"), typo, {"table": db.t("genre"), "cursor": "nope", "mode": "cursor"}])
    problems = dict(e.value.problems)
    assert problems["source.streams[2].table"] == f"no table {typo!r} (did you mean {db.t('album')!r}?)"
    assert "no column 'nope'" in problems["source.streams[3].cursor"]
    assert "source.streams[2].table" in str(e.value)


def test_case_insensitive_unique_match_keeps_the_name_as_written(chinook_db: Db) -> None:
    db = chinook_db
    written = db.t("media_type").upper()
    src, streams = db.streams([written])
    with src:
        assert streams[0].name == written
        assert streams[0].table[-1] == db.t("media_type")
        assert data_of(read_all(src, streams[0])).num_rows == 5


def test_table_dropped_before_reading_is_a_fatal_error_naming_it(chinook_db: Db) -> None:
    db = chinook_db
    src, streams = db.streams([db.t("playlist_track")])
    with src:
        db.execute(f"DROP TABLE {db.q(db.t('playlist_track'))}")
        with pytest.raises(FatalError) as e:
            read_all(src, streams[0])
    assert db.t("playlist_track") in str(e.value)


def test_bad_credentials_are_a_connection_error_without_the_password(empty_db: Db, tmp_path) -> None:
    db = empty_db
    secret = "s3cr3t-Pa55word"
    if db.kind == "sqlite":
        url = "sqlite:///" + str(tmp_path / "missing.db")
    else:
        scheme, rest = db.url.split("://", 1)
        hostpart = rest.split("@", 1)[1]
        url = f"{scheme}://nobody_here:{secret}@{hostpart}"
    src = source_class(db.kind)(db.config().model_copy(update={"url": __import__("pydantic").SecretStr(url)}), CONTEXT)
    with pytest.raises(ConnectionError) as e:
        src.discover()
    text = str(e.value) + repr(e.value)
    assert secret not in text
    if db.kind == "sqlite":
        assert "missing.db" in text
        assert not (tmp_path / "missing.db").exists(), "a missing file is not created"
    else:
        host, port = hostpart.split("/")[0].rsplit(":", 1)
        assert host in text and port in text and "nobody_here" in text
        assert db.url.rsplit("/", 1)[1] in text  # the database


def test_constructing_a_source_does_not_connect() -> None:
    from replicant.config import SourceConfig

    for kind, url in [("postgres", "postgresql://u:p@127.0.0.1:1/x"), ("mysql", "mysql://u:p@127.0.0.1:1/x"),
                      ("sqlite", "sqlite:////nonexistent/dir/x.db")]:
        src = source_class(kind)(SourceConfig(type=kind, url=url), CONTEXT)
        src.close()  # nothing to release, nothing raised


def test_every_url_form_is_accepted(chinook_db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db = chinook_db
    if db.kind == "sqlite":
        path = db.url.removeprefix("sqlite:///")
        monkeypatch.chdir(path.rsplit("/", 1)[0])
        forms = [db.url, "sqlite:///" + path.rsplit("/", 1)[1]]  # absolute, and relative to the cwd
    else:
        rest = db.url.split("://", 1)[1]
        schemes = ["postgresql", "postgres", "postgresql+psycopg"] if db.kind == "postgres" else ["mysql", "mysql+pymysql", "mariadb"]
        forms = [f"{s}://{rest}" for s in schemes]
    from pydantic import SecretStr

    for url in forms:
        cfg = db.config([db.t("genre")]).model_copy(update={"url": SecretStr(url)})
        with source_class(db.kind)(cfg, CONTEXT) as src:
            (s,) = [x for x in src.discover() if x.name == db.t("genre")]
            assert data_of(read_all(src, s)).num_rows == 25, url
