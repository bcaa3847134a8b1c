"""Transforms: rows/s of each built-in over one change batch, in process.

Baseline, measured in the same run: an Arrow ``pc.cast`` of the same column (the cheapest
vectorised pass over it) and a DuckDB ``SELECT *`` over the batch (what every DuckDB-based
transform pays to register and scan it). ``hash`` and ``encrypt`` are per value by nature
(HMAC, AES-GCM through ``cryptography``): their figure is the one to watch.

    PYTHONPATH=src .venv/bin/python bench/transforms/run.py --rows 200000
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from replicant.model import META_FIELDS
from replicant.transforms.base import KEY_METADATA
from replicant.transforms.columns import Cast, Rename
from replicant.transforms.crypto import Encrypt, EncryptRule
from replicant.transforms.mask import Mask, MaskRule
from replicant.transforms.sql import Derive, Filter, Sql


def _batch(n: int) -> pa.RecordBatch:
    ids = pa.array(range(n), pa.int64())
    email = pc.binary_join_element_wise(pa.array([f"user{i}" for i in range(n)]), "@example.com", "")
    phone = pc.binary_join_element_wise("+44 20 ", pc.cast(ids, pa.string()), "")
    total = pc.multiply(pc.cast(ids, pa.float64()), 0.5)
    country = pa.array(["UK", "SE", "US", "DE"] * (n // 4) + ["UK"] * (n % 4))
    ops = pa.array((["insert", "update"] * (n // 2 + 1))[:n])
    meta = [ops, pa.repeat(pa.scalar("{}"), n), pa.repeat(pa.scalar(datetime(2026, 1, 1, tzinfo=UTC), pa.timestamp("us", tz="UTC")), n)]
    names = ["id", "email", "phone", "total", "country"]
    schema = pa.schema([pa.field(c, a.type) for c, a in zip(names, [ids, email, phone, total, country], strict=True)]
                       + list(META_FIELDS), metadata={KEY_METADATA: b"id"})
    return pa.RecordBatch.from_arrays([ids, email, phone, total, country, *meta], schema=schema)


def _rate(n: int, fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    n = ap.parse_args().rows
    batch = _batch(n)
    key = os.urandom(32)
    con = duckdb.connect()
    con.register("batch", pa.Table.from_batches([batch]))
    t = {
        "rename": Rename({"email": "mail"}), "cast": Cast({"total": "decimal(12,2)"}),
        "derive": Derive({"total_cents": "CAST(total * 100 AS BIGINT)"}), "filter": Filter("country = 'UK'"),
        "sql": Sql("SELECT *, upper(country) AS c2 FROM batch WHERE total > 10"), "last4": Mask({"phone": MaskRule("last4")}),
        "hash": Mask({"email": MaskRule("hash", b"k")}), "hash4": Mask({"country": MaskRule("hash", b"k")}),
        "gcm": Encrypt({"phone": EncryptRule(key)}), "siv": Encrypt({"phone": EncryptRule(key, True)}),
    }
    cases = {
        "baseline: pc.cast(id → text)": lambda: pc.cast(batch.column(0), pa.string()),
        "baseline: DuckDB SELECT * FROM batch": lambda: con.sql("SELECT * FROM batch").to_arrow_table(),
        "rename": lambda: t["rename"].apply(batch),
        "cast total → decimal(12,2)": lambda: t["cast"].apply(batch),
        "derive total_cents": lambda: t["derive"].apply(batch),
        "filter country = 'UK'": lambda: t["filter"].apply(batch),
        "sql SELECT *, … WHERE": lambda: t["sql"].apply(batch),
        "mask last4": lambda: t["last4"].apply(batch),
        "mask hash (HMAC-SHA256, all distinct)": lambda: t["hash"].apply(batch),
        "mask hash (4 distinct values)": lambda: t["hash4"].apply(batch),
        "encrypt AES-GCM": lambda: t["gcm"].apply(batch),
        "encrypt AES-GCM-SIV (deterministic)": lambda: t["siv"].apply(batch),
    }
    print(f"transforms over one batch of {n:,} rows (best of 3)")
    for name, fn in cases.items():
        print(f"  {name:<42} {_rate(n, fn):>14,.0f} rows/s")


if __name__ == "__main__":
    main()
