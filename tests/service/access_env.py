"""A served folder for the access tests: ``shop`` (tenants acme and globex, SQLite sources) and
``solo`` (no tenants), with one token per kind of caller created in the service's state store
before ``replicant serve`` starts."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from replicant.access.tokens import create_token, digest
from replicant.model import DeadLetter
from replicant.state.store import StateStore

from .serve_proc import SRC

#: Who calls in the matrix: name → (role, tenants); plus "none", "bad", "expired", "revoked".
CALLERS = {
    "viewer": ("viewer", ()),
    "operator": ("operator", ()),
    "admin": ("admin", ()),
    "acme_operator": ("operator", ("acme",)),
    "acme_admin": ("admin", ("acme",)),
}


@dataclass
class AccessEnv:
    folder: Path
    state_url: str
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)


def make_folder(folder: Path, *, rows: int = 3, solo_password: str | None = None) -> None:
    """The two pipelines and their SQLite sources. ``solo_password``: ``solo``'s source URL
    carries it through ``${env:SOLO_PW}`` (the leak test)."""
    for name, n in (("acme", rows), ("globex", rows), ("solo", rows)):
        with sqlite3.connect(folder / f"{name}.db") as c:
            c.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, cents INTEGER NOT NULL)")
            c.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?)", [(i, i * 100) for i in range(1, n + 1)])
            c.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, sku TEXT NOT NULL)")
            c.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)", [(i, f"sku-{i}") for i in range(1, n + 1)])
    (folder / "shop.yml").write_text("""pipeline: shop
state: sqlite:///.replicant/service.db
source:
  type: sqlite
  url: sqlite:///acme.db
  streams: [{table: orders, mode: snapshot_diff}, {table: items, mode: snapshot_diff}]
tenants:
  - id: acme
  - id: globex
    url: sqlite:///globex.db
destinations:
  - {name: warehouse, type: duckdb, path: shop.duckdb, write: merge}
""")
    url = "sqlite:///solo.db" if solo_password is None else "sqlite:///solo.db?password=${env:SOLO_PW}"
    (folder / "solo.yml").write_text(f"""pipeline: solo
state: sqlite:///.replicant/service.db
source:
  type: sqlite
  url: "{url}"
  streams: [{{table: orders, mode: snapshot_diff}}, {{table: items, mode: snapshot_diff}}]
destinations:
  - {{name: lake, type: duckdb, path: solo.duckdb, write: merge}}
""")


def _letter(destination: str = "warehouse") -> DeadLetter:
    return DeadLetter(reason="rejected for the test", payload={"id": 99}, origin="test", destination=destination)


def make_env(folder: Path, *, prerun: bool = True, **kwargs: object) -> AccessEnv:
    """The folder, its tokens and dead letters; ``prerun``: both pipelines ran once (`replicant
    run`, in the service's state), so status and metrics have streams of each tenant."""
    make_folder(folder, **kwargs)  # type: ignore[arg-type]
    (folder / ".replicant").mkdir(exist_ok=True)
    if prerun:
        for name in ("shop", "solo"):
            done = subprocess.run([sys.executable, "-m", "replicant.cli", "run", str(folder / f"{name}.yml")],
                                  capture_output=True, text=True, timeout=300, cwd=folder,
                                  env={**os.environ, "PYTHONPATH": SRC})
            assert done.returncode == 0, done.stdout + done.stderr
    env = AccessEnv(folder, f"sqlite:///{folder / '.replicant' / 'service.db'}")
    store = StateStore(env.state_url).open()
    try:
        for name, (role, tenants) in CALLERS.items():
            env.tokens[name], p = create_token(store, role=role, tenants=tenants, name=name)
            env.ids[name] = p.id
        env.tokens["revoked"], p = create_token(store, role="admin", name="revoked")
        store.revoke_token(p.id)
        expired = "rpl_expired-token-of-the-matrix-test-0123456789abcdef"
        store.add_token(id="e0e0e0e0e0e0", name="expired", role="admin", tenants=[], digest=digest(expired),
                        expires_at=store._clock() - timedelta(minutes=1))
        env.tokens["expired"] = expired
        env.tokens["bad"] = "rpl_not-a-token-anyone-created"
        for tenant in ("acme", "globex"):  # one dead letter per tenant of shop, one of solo
            store.add_dead_letters("shop", "orders", [_letter()], tenant=tenant)
        store.add_dead_letters("solo", "orders", [_letter("lake")])
    finally:
        store.close()
    return env
