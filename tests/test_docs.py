"""The docs show code that runs: the connector walk-through is the toy source the conformance
suites run, verbatim, and its conformance line is the suite's own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_connector_walkthrough_is_the_tested_toy_source() -> None:
    blocks = _python_blocks(ROOT / "docs" / "connectors.md")
    toy = (ROOT / "tests" / "sources" / "toy.py").read_text()
    assert toy in blocks, "docs/connectors.md must show tests/sources/toy.py verbatim"
    assert len(toy.splitlines()) < 100


def test_connector_conformance_line_is_the_suites() -> None:
    blocks = _python_blocks(ROOT / "docs" / "connectors.md")
    suite = (ROOT / "tests" / "sources" / "test_conformance.py").read_text()
    line = next(b.strip() for b in blocks if b.startswith("SOURCES"))
    assert line in suite.splitlines()


def test_bad_records_example_dead_letters_the_record_and_writes_the_rest(tmp_path: Path) -> None:
    """docs/bad-records.md: its pipeline file, run as it is, sets the rejected record aside."""
    import sqlite3

    from replicant.config import parse
    from replicant.engine import Engine
    from replicant.state.store import StateStore
    from replicant.yaml_load import load_yaml

    [example] = [b for b in _yaml_blocks(ROOT / "docs" / "bad-records.md") if "name: warehouse" in b]
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        c.executemany("INSERT INTO items VALUES (?, ?)", [(1, "tea"), (2, "far too long a name"), (3, "jam")])
    with sqlite3.connect(tmp_path / "warehouse.sqlite") as c:  # a table the user made, with a rule
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT CHECK (length(name) <= 10))")
    result = Engine(parse(load_yaml(example), base_dir=tmp_path)).run()
    assert result.ok, result.errors
    assert result.dead_letters == {"warehouse": {"items": 1}}
    with sqlite3.connect(tmp_path / "warehouse.sqlite") as c:
        assert c.execute("SELECT id, name FROM items ORDER BY id").fetchall() == [(1, "tea"), (3, "jam")]
    with StateStore(f"sqlite:///{tmp_path / '.replicant' / 'shop' / 'state.db'}") as st:
        [letter] = st.dead_letters("shop")
    assert letter["payload"]["data"] == {"id": 2, "name": "far too long a name"}
    assert "CHECK constraint failed" in letter["reason"] and letter["origin"].startswith("log offset ")


def _yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)


def test_bad_records_http_example_dead_letters_only_the_rejected_record(tmp_path: Path) -> None:
    """docs/bad-records.md, *HTTP*: its pipeline file, run against a real receiver (only the
    URL replaced) that refuses one record of 1,000, dead-letters that record alone."""
    import sqlite3

    from http_receiver import Receiver
    from replicant.config import parse
    from replicant.engine import Engine
    from replicant.state.store import StateStore
    from replicant.yaml_load import load_yaml

    [example] = [b for b in _yaml_blocks(ROOT / "docs" / "bad-records.md") if "type: http" in b]
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        c.executemany("INSERT INTO items VALUES (?, ?)", [(i, "bad" if i == 421 else f"item {i}") for i in range(1, 1001)])
    with Receiver(reject=lambda r: r["data"]["name"] == "bad", reject_status=422) as rcv:
        text = example.replace("https://reports.example/api/push", rcv.url)
        assert text != example
        result = Engine(parse(load_yaml(text), base_dir=tmp_path)).run()
        assert result.ok, result.errors
        assert result.dead_letters == {"push": {"items": 1}}
        assert sorted(r["data"]["id"] for r in rcv.records()) == [i for i in range(1, 1001) if i != 421]
        assert len(rcv.requests) <= 1 + 20  # "about 20 more requests"
    with StateStore(f"sqlite:///{tmp_path / '.replicant' / 'shop' / 'state.db'}") as st:
        [letter] = st.dead_letters("shop")
    assert letter["payload"]["data"] == {"id": 421, "name": "bad"}
    assert letter["reason"].startswith("HTTP 422 from POST") and '"keys": [{"id": 421}]' in letter["reason"]


def test_types_lossless_forms_example_prints_what_it_shows(capsys) -> None:
    """docs/types.md, *Values outside ordinary ranges*: the example runs and prints its last line."""
    block = next(b for b in _python_blocks(ROOT / "docs" / "types.md") if "row_json" in b)
    exec(compile(block, "docs/types.md", "exec"), {})  # the documentation's own example
    shown = block.strip().splitlines()[-1].removeprefix("# ")
    assert capsys.readouterr().out.strip() == shown


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def test_dead_letters_example_runs(tmp_path: Path) -> None:
    """docs/dead-letters.md's example, run as written: its pipeline against a real HTTP
    server, each command of its session in order, each output line it shows found."""
    import os
    import sqlite3
    import subprocess
    import sys

    from http_receiver import Receiver

    doc = ROOT / "docs" / "dead-letters.md"
    (pipeline,) = _blocks(doc, "yaml")
    session = _blocks(doc, "console")[-1]
    with sqlite3.connect(tmp_path / "shop.db") as c:
        c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total NUMERIC)")
        c.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(1, "ann", 10), (2, "bob", -5), (3, "cy", 7), (4, "ann", 3)])
    unknown = {"cy"}  # the endpoint does not know this customer yet
    with Receiver(reject=lambda r: r["data"]["total"] < 0 or r["data"]["customer"] in unknown) as rcv:
        (tmp_path / "shop.yml").write_text(pipeline.replace("http://127.0.0.1:8080/push", rcv.url))
        steps: list[tuple[str, list[str]]] = []
        for line in session.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif line.strip():
                steps[-1][1].append(line.strip())
        assert [cmd.split()[1:3] for cmd, _ in steps][3] == ["dead-letters", "retry"]
        for cmd, expected in steps:
            if " retry " in cmd:
                unknown.clear()  # "once the customer is created on their side"
            args = cmd.split()
            assert args[0] == "replicant"
            p = subprocess.run([sys.executable, "-m", "replicant.cli", *args[1:]], capture_output=True, text=True,
                               cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, timeout=120)
            assert p.returncode == 0, f"{cmd}: {p.stderr}"
            for want in expected:
                assert want in p.stdout + p.stderr, f"{cmd}: {want!r} not in\n{p.stdout}{p.stderr}"
        got = sorted(r["data"]["id"] for r in rcv.records())
    assert got == [1, 3, 4], "order 3 arrived on retry; order 2 was discarded"


def test_derived_pipelines_example_runs(tmp_path: Path) -> None:
    """docs/derived-pipelines.md: its two pipeline files and its session, run as written (a
    change at the source between the runs); the derived table equals the source."""
    import os
    import sqlite3
    import subprocess
    import sys

    from compare import fetch

    doc = ROOT / "docs" / "derived-pipelines.md"
    bank, reporting = _blocks(doc, "yaml")
    (tmp_path / "bank.yml").write_text(bank)
    (tmp_path / "reporting.yml").write_text(reporting)
    with sqlite3.connect(tmp_path / "bank.db") as c:
        c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, balance NUMERIC)")
        c.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(1, "ann", 10), (2, "bob", 20), (3, "cy", 30)])
    session = _blocks(doc, "console")[0]
    steps: list[tuple[str, list[str]]] = []
    for line in session.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line.strip())
    assert [cmd for cmd, _ in steps][:2] == ["replicant run bank.yml", "replicant run reporting.yml"]
    for i, (cmd, expected) in enumerate(steps):
        if i == 2:  # "after a change at the source, the same again"
            with sqlite3.connect(tmp_path / "bank.db") as c:
                c.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
                c.execute("DELETE FROM accounts WHERE id = 2")
            for again in ("bank.yml", "reporting.yml"):
                p = subprocess.run([sys.executable, "-m", "replicant.cli", "run", again], capture_output=True, text=True,
                                   cwd=tmp_path, timeout=120)
                assert p.returncode == 0, p.stderr
        p = subprocess.run([sys.executable, "-m", "replicant.cli", *cmd.split()[1:]], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, timeout=120)
        assert p.returncode == 0, f"{cmd}: {p.stderr}"
        shown = " ".join((p.stdout + p.stderr).split())
        for want in expected:
            assert want in shown, f"{cmd}: {want!r} not in\n{shown}"
    cols = ["id", "owner", "balance"]
    source = fetch("sqlite", str(tmp_path / "bank.db"), "accounts", cols)
    assert len(source) == 2 and fetch("duckdb", str(tmp_path / "reporting.duckdb"), "accounts", cols) == source


def _jsonl(block: str) -> list[dict]:
    import json

    return [json.loads(line) for line in block.strip().splitlines()]


def _matches(got: object, shown: object) -> bool:
    """Equal, or for a shown text ending in ``…`` (a random tail), got starts with the rest."""
    if isinstance(shown, str) and shown.endswith("…") and isinstance(got, str):
        return got.startswith(shown[:-1]) and len(got) > len(shown)
    return got == shown


def test_transforms_examples_give_the_outputs_shown(tmp_path: Path, monkeypatch, capsys) -> None:
    """docs/transforms.md: each built-in's YAML, run on the page's input batch, gives the page's
    output, and the decrypt example prints what it shows."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from replicant.model import META_FIELDS
    from replicant.transforms.base import KEY_METADATA
    from replicant.transforms.chain import Step, TransformChain
    from replicant.transforms.config import build, specs
    from replicant.yaml_load import load_yaml

    monkeypatch.setenv("REPLICANT_MASK_KEY", "docs-mask-key")
    monkeypatch.setenv("PII_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
    monkeypatch.syspath_prepend(str(tmp_path))
    page = (ROOT / "docs" / "transforms.md").read_text()
    page = page[:page.index("## Stateful transforms")]  # those examples run in tests/transforms/test_stateful_*.py
    blocks = re.findall(r"```(\w+)\n(.*?)```", page, re.S)
    inputs = _jsonl(next(b for lang, b in blocks if lang == "jsonl"))
    n = len(inputs)
    data = {k: pa.array([r[k] for r in inputs]) for k in inputs[0] if k != "_op"}
    meta = [pa.array([r["_op"] for r in inputs]), pa.array(["{}"] * n),
            pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC"))]
    schema = pa.schema([pa.field(k, a.type) for k, a in data.items()] + list(META_FIELDS), metadata={KEY_METADATA: b"id"})
    batch = pa.RecordBatch.from_arrays([*data.values(), *meta], schema=schema)

    checked, pending = [], None
    for lang, block in blocks:
        if lang == "python" and block.startswith("# shop_udf.py"):
            (tmp_path / "shop_udf.py").write_text(block)
        elif lang == "python":
            exec(compile(block, "docs/transforms.md", "exec"), {})  # the documentation's own example
            assert capsys.readouterr().out.strip() == block.strip().splitlines()[-1].removeprefix("# ")
            checked.append("decrypt")
        elif lang == "yaml" and block.startswith("transforms:"):
            pending = load_yaml(block)["transforms"]
        elif lang == "jsonl" and pending is not None:
            problems: list = []
            chain = TransformChain([Step(s.path, None, build(s)) for s in specs(pending, "transforms", problems)])
            assert not problems, problems
            got = [{k: v for k, v in r.items() if k not in ("_pos", "_ts")} for r in chain.apply("customers", batch).to_pylist()]
            shown = _jsonl(block)
            assert [list(r) for r in got] == [list(r) for r in shown], pending
            for g, s in zip(got, shown, strict=True):
                assert all(_matches(_plain(g[k]), s[k]) for k in s), (pending, g, s)
            checked.append(next(iter(pending[0])))
            pending = None
    assert checked == ["rename", "cast", "derive", "filter", "select", "drop", "mask", "encrypt", "decrypt", "sql", "python"]


def _plain(v: object) -> object:
    """A value as the page's JSON shows it (a decimal as its text)."""
    from decimal import Decimal

    return str(v) if isinstance(v, Decimal) else v


def test_http_source_example_loads_the_test_api(tmp_path: Path, monkeypatch) -> None:
    """docs/http-source.md: its pipeline file, with only ``base_url`` replaced, against the test
    API: issues, each issue's comments (incremental per issue) and cursor-paged items."""
    import duckdb

    from replicant.config import parse
    from replicant.engine import Engine
    from replicant.yaml_load import load_yaml
    from sources.http_api import TOKEN, Api, items

    [example] = [b for b in _yaml_blocks(ROOT / "docs" / "http-source.md") if "pipeline: tracker" in b]
    monkeypatch.setenv("TRACKER_TOKEN", TOKEN)
    api = Api(auth="bearer").start()
    try:
        api.put("issues", [{"id": n, "number": n, "title": f"issue {n}"} for n in range(1, 6)])
        api.put("comments", [{"id": i, "issue": 1 + i % 5, "body": f"c{i}", "updated_at": "2024-02-01T00:00:00Z"}
                             for i in range(1, 31)])
        api.put("items", items(120, updated="2024-03-01T00:00:00Z"))
        text = example.replace("https://tracker.example/api", api.url)
        assert text != example
        result = Engine(parse(load_yaml(text), base_dir=tmp_path)).run()
        assert result.ok, result.errors
    finally:
        api.stop()
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        counts = {t: con.execute(f"SELECT count(DISTINCT id) FROM {t}").fetchone()[0] for t in ("issues", "comments", "items")}
    assert counts == {"issues": 5, "comments": 30, "items": 120}


@pytest.mark.slow
def test_singer_source_example_copies_chinook(tmp_path: Path, monkeypatch, tap_postgres: Path, chinook_pg_url: str) -> None:
    """docs/singer-source.md: its pipeline file with a real tap-postgres (``command`` and the
    connection values replaced) copies artist and invoice from Chinook."""
    from urllib.parse import urlsplit

    from compare import fetch
    from replicant.config import parse
    from replicant.engine import Engine
    from replicant.yaml_load import load_yaml

    [example] = _yaml_blocks(ROOT / "docs" / "singer-source.md")
    u = urlsplit(chinook_pg_url)
    monkeypatch.setenv("PGPASSWORD", u.password or "")
    text = (example.replace("command: tap-postgres", f"command: {tap_postgres}").replace("host: localhost", f"host: {u.hostname}")
            .replace("port: 5432", f"port: {u.port}").replace("user: app", f"user: {u.username}")
            .replace("dbname: chinook", f"dbname: {u.path.lstrip('/')}"))
    result = Engine(parse(load_yaml(text), base_dir=tmp_path)).run()
    assert result.ok, result.errors
    wh = str(tmp_path / "warehouse.duckdb")
    assert fetch("duckdb", wh, "public-artist", ["artist_id", "name"]) == fetch("postgres", chinook_pg_url, "artist", ["artist_id", "name"])
    cols = ["invoice_id", "customer_id", "total"]
    assert fetch("duckdb", wh, "public-invoice", cols) == fetch("postgres", chinook_pg_url, "invoice", cols)


def test_files_source_example_loads_new_files_once(tmp_path: Path) -> None:
    """docs/files-source.md: its pipeline file, run as it is over a folder of files."""
    import gzip

    import duckdb

    from replicant.config import parse
    from replicant.engine import Engine
    from replicant.yaml_load import load_yaml

    [example] = [b for b in _yaml_blocks(ROOT / "docs" / "files-source.md") if "type: files" in b]
    folder = tmp_path / "incoming"
    (folder / "events").mkdir(parents=True)
    (folder / "orders-1.csv").write_text("id;amount;note\n1;12.50;NULL\n2;3.10;x\nbad\n")
    (folder / "events" / "e.jsonl.gz").write_bytes(gzip.compress(b'{"kind": "click"}\n{"kind": "view"}\n'))
    cfg = parse(load_yaml(example), base_dir=tmp_path)
    first = Engine(cfg).run()
    assert first.ok, first.errors
    assert first.rows_read == {"orders": 2, "events": 2}
    assert Engine(cfg).run().rows_read == {"orders": 0, "events": 0}
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT id, amount::VARCHAR, note, _line FROM orders ORDER BY id").fetchall() == [
            (1, "12.50", None, 2), (2, "3.10", "x", 3)]


def test_tenants_example_runs(tmp_path: Path) -> None:
    """docs/tenants.md: its pipeline file, run as it is, gives the table it shows."""
    import sqlite3

    import duckdb

    from replicant.config import parse
    from replicant.tenants.runner import TenantRunner
    from replicant.yaml_load import load_yaml

    [example] = [b for b in _yaml_blocks(ROOT / "docs" / "tenants.md") if "tenants:" in b]
    for name, column, rows in (("acme", "cents", [(1, 500), (2, 750)]), ("globex", "amount_cents", [(1, 300)])):
        with sqlite3.connect(tmp_path / f"{name}.db") as c:
            c.execute(f"CREATE TABLE orders (id INTEGER PRIMARY KEY, {column} INTEGER NOT NULL)")
            c.executemany("INSERT INTO orders VALUES (?, ?)", rows)
    result = TenantRunner(parse(load_yaml(example), base_dir=tmp_path)).run()
    assert result.ok, result.errors
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as c:
        got = c.execute("SELECT _tenant, id, total_cents FROM all_orders ORDER BY 1, 2").fetchall()
    shown = re.search(r"_tenant  id  total_cents\n(.*?)```", (ROOT / "docs" / "tenants.md").read_text(), re.S)
    assert shown is not None
    assert [tuple(line.split()) for line in shown.group(1).strip().splitlines()] == [(t, str(i), str(n)) for t, i, n in got]


def test_secrets_doc_vault_provider_and_chain_resolve_a_reference(tmp_path: Path) -> None:
    """docs/secrets.md: its Vault provider, against a Vault-shaped KV v2 endpoint, and its chain."""
    import http.server
    import json
    import threading

    from replicant.secrets import resolve, set_secret_store

    class Vault(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            known = {"/v1/secret/data/replicant/PG_PW": "from-vault"}
            if self.headers.get("X-Vault-Token") != "s.root" or self.path not in known:
                self.send_response(404 if self.headers.get("X-Vault-Token") == "s.root" else 403)
                self.end_headers()
                return
            body = json.dumps({"data": {"data": {"value": known[self.path]}}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Vault)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "token").write_text("s.root\n")
    (tmp_path / "mounted").mkdir()
    (tmp_path / "mounted" / "API_KEY").write_text("from-mount\n")
    chain, vault = _python_blocks(ROOT / "docs" / "secrets.md")
    scope: dict = {}
    exec(vault, scope)
    scope.update(TOKEN_FILE=str(tmp_path / "token"), STATE_URL=f"sqlite:///{tmp_path / 'state.db'}",
                 MOUNTED=str(tmp_path / "mounted"))
    try:
        exec(chain.replace("http://127.0.0.1:8200", f"http://127.0.0.1:{server.server_port}"), scope)
        assert resolve("postgresql://app:${secret:PG_PW}@h/db") == "postgresql://app:from-vault@h/db"
        assert resolve("${secret:API_KEY}") == "from-mount"  # not in Vault nor the store: the mount
    finally:
        set_secret_store(None)
        server.shutdown()
        server.server_close()


def test_access_doc_example_runs(tmp_path: Path) -> None:
    """docs/access.md: create, authenticate, authorize and audit, as the service will."""
    [example] = _python_blocks(ROOT / "docs" / "access.md")
    exec(example, {"STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"})
