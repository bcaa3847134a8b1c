"""The personal-data test: Chinook customers with ``Email`` hashed and ``Phone`` encrypted before
the log (``Fax``, which repeats some phones, dropped). No clear value is found in any file replicant wrote (the pipeline's work dir with its
staging log and state store, decoded as well as raw), in the destinations (dumped), in the dead
letters or in the CLI's output; and the key gives the phones back."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc

from replicant.transforms import decrypt

KEY = base64.b64encode(os.urandom(32)).decode()

PIPELINE = """\
pipeline: people
source:
  type: sqlite
  url: sqlite:///chinook.sqlite
  streams:
    - table: Customer
      transforms:
        - mask: {Email: {method: hash, key: "${env:MASK_KEY}"}}
        - encrypt: {Phone: {key: "${env:PII_KEY}"}}
        - drop: [Fax]                 # Chinook's faxes repeat some phone numbers
destinations:
  - name: warehouse
    type: duckdb
    path: warehouse.duckdb
  - name: strict
    type: sqlite
    path: strict.sqlite
"""


def _cli(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "PII_KEY": KEY, "MASK_KEY": "a mask key"}
    done = subprocess.run([sys.executable, "-m", "replicant.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def _arrow_text(path: Path) -> str:
    """Every value of an Arrow IPC file or stream (the log's segments are compressed), as text."""
    data = path.read_bytes()
    for opener in (ipc.open_file, ipc.open_stream):
        try:
            table = opener(pa.BufferReader(data)).read_all()
        except (pa.ArrowInvalid, OSError):
            continue
        return json.dumps(table.to_pylist(), default=str, ensure_ascii=False)
    return ""


def _duckdb_text(path: Path) -> str:
    with duckdb.connect(str(path), read_only=True) as c:
        tables = [r[0] for r in c.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        return json.dumps([c.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables], default=str, ensure_ascii=False)


def _sqlite_text(path: Path) -> str:
    with sqlite3.connect(path) as c:
        return "\n".join(c.iterdump())


def test_no_clear_personal_value_anywhere_and_the_key_decrypts(tmp_path: Path, chinook_sqlite_path: Path) -> None:
    with sqlite3.connect(chinook_sqlite_path) as c:
        clear = c.execute("SELECT CustomerId, Email, Phone FROM Customer ORDER BY CustomerId").fetchall()
    secrets = sorted({v for _, e, p in clear for v in (e, p) if v}, key=len, reverse=True)
    assert len(secrets) > 100
    secrets += [KEY, "a mask key"]  # nor the keys themselves
    (tmp_path / "pipeline.yml").write_text(PIPELINE)
    with sqlite3.connect(tmp_path / "strict.sqlite") as c:  # a table the user made, with a rule: dead letters
        c.execute('CREATE TABLE "Customer" ("CustomerId" INTEGER PRIMARY KEY, "FirstName" TEXT, "LastName" TEXT, '
                  '"Company" TEXT, "Address" TEXT, "City" TEXT CHECK (length("City") <= 8), "State" TEXT, "Country" TEXT, '
                  '"PostalCode" TEXT, "Phone" TEXT, "Fax" TEXT, "Email" TEXT, "SupportRepId" INTEGER)')

    outputs = [_cli(tmp_path, "run", "pipeline.yml")]
    assert "dead letter" in outputs[0].lower(), outputs[0]
    outputs.append(_cli(tmp_path, "status", "pipeline.yml"))
    outputs.append(_cli(tmp_path, "status", "pipeline.yml", "--json"))
    outputs.append(_cli(tmp_path, "dead-letters", "list", "pipeline.yml"))
    with sqlite3.connect(tmp_path / ".replicant" / "people" / "state.db") as c:
        ids = [r[0] for r in c.execute("SELECT id FROM replicant_dead_letters").fetchall()]
    assert ids, "the strict destination rejected some customers"
    outputs += [_cli(tmp_path, "dead-letters", "show", "pipeline.yml", str(i)) for i in ids]

    texts: dict[str, str] = {f"cli output {i}": o for i, o in enumerate(outputs)}
    written = [p for p in (tmp_path / ".replicant").rglob("*") if p.is_file()]
    written += [p for p in tmp_path.iterdir() if p.is_file() and p.name.startswith(("warehouse", "strict"))]
    assert any(p.suffix == ".arrow" for p in written) and any(p.name == "state.db" for p in written)
    for p in written:
        texts[str(p)] = p.read_bytes().decode("latin-1") + _arrow_text(p)
    texts["state store dump"] = _sqlite_text(tmp_path / ".replicant" / "people" / "state.db")
    texts["warehouse dump"] = _duckdb_text(tmp_path / "warehouse.duckdb")
    texts["strict dump"] = _sqlite_text(tmp_path / "strict.sqlite")
    logs = [t for w, t in texts.items() if w.endswith(".arrow")]
    assert any("Gonçalves" in t for t in logs), "the scan reads the compressed log: an unmasked name is found"
    found = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    assert not found, f"clear personal data in {found[:5]}"

    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as c:
        got = c.execute('SELECT "CustomerId", "Email", "Phone" FROM "Customer" ORDER BY 1').fetchall()
    assert [cid for cid, _, _ in got] == [cid for cid, _, _ in clear]
    assert decrypt([p for _, _, p in got], KEY) == [p for _, _, p in clear], "the key gives every phone back"
    assert all(e is not None and len(e) == 64 for _, e, _ in got)
