"""Each built-in transform through a real pipeline (SQLite source) into DuckDB and PostgreSQL,
before the log and at delivery: the destination holds exactly the transformed rows."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from decimal import Decimal
from pathlib import Path

import pytest

from replicant.config import parse
from replicant.engine import Engine
from replicant.transforms import decrypt

from ._pipelines import KINDS, destination, execute, make_shop, pipeline, primary_key, rows, rows_schema, run

KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(kind, pg_url or None), with the shop database made and the keys set."""
    make_shop(tmp_path / "shop.db")
    monkeypatch.setenv("REPLICANT_MASK_KEY", "mask-key-1")
    monkeypatch.setenv("PII_KEY", KEY)
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return request.param, url


def test_rename_of_the_key_column_renames_the_stream_key(tmp_path: Path, target) -> None:
    kind, url = target
    data = pipeline(tmp_path, destination(kind, tmp_path, url), transforms=[{"rename": {"id": "customer_id", "name": "full_name"}}],
                    stream={"primary_key": ["id"]})
    run(tmp_path, data)
    execute(tmp_path / "shop.db", "UPDATE customers SET name = 'Bob' WHERE id = 2")
    run(tmp_path, data)  # a second full read merges by the renamed key: no duplicates
    got = rows(kind, tmp_path, url)
    assert [(r["customer_id"], r["full_name"]) for r in got] == [(1, "Ada"), (2, "Bob"), (3, "Cy")]
    assert "id" not in got[0] and "name" not in got[0]
    if kind == "postgres":
        assert primary_key(kind, tmp_path, url) == ["customer_id"]
    # a replay rebuilds the stream from the log alone: the key is the log's renamed one, not the file's `id`
    result = Engine(parse(data, base_dir=tmp_path)).replay("d", start="start")
    assert result.ok, result.errors
    assert rows(kind, tmp_path, url) == got


def test_cast_changes_the_destination_type(tmp_path: Path, target) -> None:
    kind, url = target
    run(tmp_path, pipeline(tmp_path, destination(kind, tmp_path, url, transforms=[{"cast": {"total": "decimal(10,2)"}}])))
    assert [r["total"] for r in rows(kind, tmp_path, url)] == [Decimal("12.50"), Decimal("3.25"), Decimal("7.00")]
    assert rows_schema(kind, tmp_path, url, "customers")["total"].lower() in ("decimal(10,2)", "numeric")


def test_derive_adds_and_replaces_columns_with_duckdb_expressions(tmp_path: Path, target) -> None:
    kind, url = target
    derive = {"derive": {"total_cents": "CAST(round(total * 100) AS BIGINT)", "name": "upper(name)"}}
    run(tmp_path, pipeline(tmp_path, destination(kind, tmp_path, url, transforms=[derive])))
    assert [(r["name"], r["total_cents"]) for r in rows(kind, tmp_path, url)] == [("ADA", 1250), ("BO", 325), ("CY", 700)]


def test_select_keeps_and_drop_removes_columns(tmp_path: Path, target) -> None:
    kind, url = target
    run(tmp_path, pipeline(tmp_path, destination(kind, tmp_path, url, transforms=[{"select": ["id", "name", "phone"]},
                                                                                  {"drop": ["phone"]}])))
    assert rows(kind, tmp_path, url) == [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Bo"}, {"id": 3, "name": "Cy"}]


def test_mask_hashes_redacts_and_keeps_last4(tmp_path: Path, target) -> None:
    kind, url = target
    run(tmp_path, pipeline(tmp_path, destination(kind, tmp_path, url),
                           transforms=[{"mask": {"email": "hash", "phone": "last4", "name": "redact"}}]))
    got = rows(kind, tmp_path, url)

    def expected(v: str) -> str:  # HMAC-SHA256(key, salt NUL value), salted with the column's name
        return hmac.new(b"mask-key-1", b"email\x00" + v.encode(), hashlib.sha256).hexdigest()

    assert [r["email"] for r in got] == [expected("ada@example.com"), expected("bo@example.com"), None]
    phones = [c[3] for c in _source()]
    assert [r["phone"] for r in got] == ["*" * (len(p) - 4) + p[-4:] for p in phones]
    assert got[0]["phone"] == "************0001"
    assert [r["name"] for r in got] == ["***", "***", "***"]


def test_encrypt_round_trips_with_the_key_and_deterministic_ciphertexts_repeat(tmp_path: Path, target) -> None:
    kind, url = target
    data = pipeline(tmp_path, destination(kind, tmp_path, url), transforms=[
        {"encrypt": {"phone": {"key": "${env:PII_KEY}"}, "email": {"key": "${env:PII_KEY}", "deterministic": True}}}])
    run(tmp_path, data)
    first = rows(kind, tmp_path, url)
    assert decrypt([r["phone"] for r in first], KEY) == [c[3] for c in sorted(_source())]
    assert decrypt([r["email"] for r in first], KEY) == ["ada@example.com", "bo@example.com", None]
    assert all(r["phone"].startswith("v1.gcm.") for r in first) and first[0]["email"].startswith("v1.siv.")
    run(tmp_path, data)  # read again: the random nonce changes the phone, the deterministic email stays
    again = rows(kind, tmp_path, url)
    assert [r["email"] for r in again] == [r["email"] for r in first]
    assert all(a["phone"] != b["phone"] for a, b in zip(again, first, strict=True))


def _source() -> list[tuple]:
    from ._pipelines import CUSTOMERS

    return CUSTOMERS


def test_sql_runs_a_duckdb_query_over_the_batch(tmp_path: Path, target) -> None:
    kind, url = target
    query = "SELECT *, country || '-' || CAST(id AS VARCHAR) AS tag FROM batch WHERE status = 'active'"
    result = run(tmp_path, pipeline(tmp_path, destination(kind, tmp_path, url, transforms=[{"sql": query}])))
    assert [(r["id"], r["tag"]) for r in rows(kind, tmp_path, url)] == [(1, "UK-1"), (2, "SE-2")]
    assert result.rows_read["customers"] == 3 and result.rows_written["d"]["customers"] == 2, "the rows it wrote"


def test_python_function_gets_and_returns_an_arrow_batch(tmp_path: Path, target, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, url = target
    (tmp_path / "shop_udf.py").write_text(
        "import pyarrow.compute as pc\n\n"
        "def with_vat(batch):\n"
        "    return batch.append_column('with_vat', pc.multiply(batch.column('total'), 1.25))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run(tmp_path, pipeline(tmp_path, destination(kind, tmp_path, url), transforms=[{"python": "shop_udf:with_vat"}]))
    assert [r["with_vat"] for r in rows(kind, tmp_path, url)] == [15.625, 4.0625, 8.75]


def test_filter_keeps_op_semantics_an_update_that_fails_deletes_its_key(tmp_path: Path, target) -> None:
    """Rule: an insert/read that fails is dropped, an update whose new image fails becomes a delete
    of its key (its old image may be downstream), a delete always passes."""
    kind, url = target
    data = pipeline(tmp_path, destination(kind, tmp_path, url, transforms=[{"filter": "status = 'active'"}]),
                    stream={"mode": "cursor", "cursor": "updated_at"})
    run(tmp_path, data)
    assert [r["id"] for r in rows(kind, tmp_path, url)] == [1, 2]
    execute(tmp_path / "shop.db",
            "UPDATE customers SET status = 'inactive', updated_at = '2026-01-02 00:00:00' WHERE id = 2",
            "UPDATE customers SET status = 'active', updated_at = '2026-01-02 00:00:01' WHERE id = 3",
            "UPDATE customers SET total = 99, updated_at = '2026-01-02 00:00:02' WHERE id = 1")
    run(tmp_path, data)
    got = rows(kind, tmp_path, url)
    assert [(r["id"], r["total"]) for r in got] == [(1, 99.0), (3, 7.0)], "2 left the filter: deleted downstream"


def test_replay_reapplies_the_destination_transforms_of_today(tmp_path: Path, target) -> None:
    kind, url = target
    data = pipeline(tmp_path, destination(kind, tmp_path, url, transforms=[{"derive": {"score": "total * 2"}}]))
    run(tmp_path, data)
    assert [r["score"] for r in rows(kind, tmp_path, url)] == [25.0, 6.5, 14.0]
    data["destinations"][0]["transforms"] = [{"derive": {"score": "total * 10"}}]
    result = Engine(parse(data, base_dir=tmp_path)).replay("d", start="start")
    assert result.ok, result.errors
    assert [r["score"] for r in rows(kind, tmp_path, url)] == [125.0, 32.5, 70.0]


def test_a_transform_before_the_log_scoped_to_other_streams_leaves_this_one_alone(tmp_path: Path, target) -> None:
    kind, url = target
    data = pipeline(tmp_path, destination(kind, tmp_path, url), transforms=[{"drop": ["phone"], "streams": ["customers"]},
                                                                            {"mask": {"name": "redact"}, "streams": ["customers"]}])
    run(tmp_path, data)
    assert "phone" not in rows(kind, tmp_path, url)[0] and rows(kind, tmp_path, url)[0]["name"] == "***"
    assert os.environ["PII_KEY"] == KEY


def test_python_api_takes_transforms_as_dicts_and_objects(tmp_path: Path, target) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    import replicant
    from replicant.transforms import Transform

    class Shout(Transform):
        """A user's own stateless transform: upper-cases ``name``."""

        name = "shout"

        def output_schema(self, schema: pa.Schema) -> pa.Schema:
            return schema

        def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
            i = batch.schema.get_field_index("name")
            return batch.set_column(i, batch.schema.field(i), pc.utf8_upper(batch.column(i)))

    kind, url = target
    p = replicant.Pipeline(pipeline(tmp_path, destination(kind, tmp_path, url)), base_dir=tmp_path,
                           transforms=[{"mask": {"phone": "redact"}}, Shout()])
    assert p.run().ok
    assert [(r["name"], r["phone"]) for r in rows(kind, tmp_path, url)] == [("ADA", "***"), ("BO", "***"), ("CY", "***")]
    with pytest.raises(replicant.ConfigError) as e:
        replicant.Pipeline(pipeline(tmp_path, destination(kind, tmp_path, url)), transforms=[{"mask": {"phone": "blur"}}])
    assert "transforms[0].mask.phone" in dict(e.value.problems)
