"""The encrypted secret store: ciphertext only at rest, master keys outside the state,
rotation with old keys still decrypting, providers, and ``${secret:…}`` / ``${file:…}``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replicant.access.keys import MasterKeys, generate_key, key_id, load_master_keys
from replicant.access.secret_store import Chain, DirectoryProvider, EncryptedStore, EnvProvider, install_for_pipeline
from replicant.errors import ConfigError
from replicant.secrets import reference_problems, resolve, set_secret_store
from replicant.state.store import StateStore

SENTINEL = "pw-SENTINEL-7f3a@/#"


@pytest.fixture
def state(tmp_path: Path):
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


def test_a_secret_is_stored_encrypted_and_read_back(state, tmp_path: Path) -> None:
    keys = MasterKeys((generate_key(),))
    store = EncryptedStore(state, keys=keys)
    store.set("PG_PW", SENTINEL)
    assert store.get("PG_PW") == SENTINEL
    assert store.get("NOPE") is None
    [row] = store.list()
    assert set(row) == {"name", "key_id", "created_at", "updated_at"} and row["key_id"] == keys.primary_id
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))  # the file and its WAL
    assert SENTINEL.encode() not in raw and keys.keys[0].encode() not in raw
    assert state.secret_ciphertext("PG_PW")[0].encode() in raw  # the check reads where the rows are
    assert store.delete("PG_PW") and store.get("PG_PW") is None and not store.delete("PG_PW")


def test_a_ciphertext_copied_to_another_name_does_not_decrypt(state) -> None:
    store = EncryptedStore(state, keys=MasterKeys((generate_key(),)))
    store.set("A", "alpha")
    ciphertext, kid = state.secret_ciphertext("A")
    state.put_secret("B", ciphertext, kid)
    with pytest.raises(ConfigError, match="another secret"):
        store.get("B")


def test_rotation_new_key_first_old_keys_decrypt_until_reencrypted(state) -> None:
    old, new = generate_key(), generate_key()
    EncryptedStore(state, keys=MasterKeys((old,))).set("A", "alpha")
    EncryptedStore(state, keys=MasterKeys((old,))).set("B", "beta")
    both = EncryptedStore(state, keys=MasterKeys((new, old)))
    assert both.get("A") == "alpha"  # new key first: the old ciphertext still decrypts
    with pytest.raises(ConfigError, match=f"needs master key id {key_id(old)}"):
        EncryptedStore(state, keys=MasterKeys((new,))).get("A")  # not re-encrypted yet
    result = both.rotate()
    assert (result.key_id, result.reencrypted, result.still_needed) == (key_id(new), 2, [])
    only_new = EncryptedStore(state, keys=MasterKeys((new,)))
    assert (only_new.get("A"), only_new.get("B")) == ("alpha", "beta")  # the old key can go
    assert {r["key_id"] for r in only_new.list()} == {key_id(new)}
    assert both.rotate().reencrypted == 0  # idempotent


def test_master_keys_from_a_file_reread_at_each_use_or_the_environment(tmp_path: Path, monkeypatch) -> None:
    a, b = generate_key(), generate_key()
    monkeypatch.delenv("REPLICANT_MASTER_KEY_FILE", raising=False)
    monkeypatch.setenv("REPLICANT_MASTER_KEY", f"{a}, {b}")
    assert load_master_keys().keys == (a, b)
    f = tmp_path / "keys"
    f.write_text(f"# newest first\n{b}\n")
    monkeypatch.setenv("REPLICANT_MASTER_KEY_FILE", str(f))
    assert load_master_keys().keys == (b,)  # the file wins
    f.write_text(f"{a}\n{b}\n")
    assert load_master_keys().keys == (a, b)
    f.write_text("not-a-key\n")
    with pytest.raises(ConfigError, match="master key 1 is not a Fernet key") as e:
        load_master_keys()
    assert "not-a-key" not in str(e.value)
    f.write_text("")
    with pytest.raises(ConfigError, match="no master key"):
        load_master_keys()


def test_providers_chain_directory_env_and_file_references(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "mounted"
    d.mkdir()
    (d / "API_TOKEN").write_text("from-dir\n")
    monkeypatch.setenv("REPLICANT_SECRET_API_TOKEN", "from-env")
    assert Chain([DirectoryProvider(d), EnvProvider()]).get("API_TOKEN") == "from-dir"
    assert Chain([EnvProvider(), DirectoryProvider(d)])("API_TOKEN") == "from-env"
    assert DirectoryProvider(d).get("../mounted/API_TOKEN") is None  # names only, no paths
    set_secret_store(Chain([DirectoryProvider(d)]))
    try:
        assert resolve("postgresql://u:${secret:API_TOKEN}@h/db") == "postgresql://u:from-dir@h/db"
        assert resolve(f"${{file:{d / 'API_TOKEN'}}}") == "from-dir"
        assert reference_problems(f"${{file:{d / 'NOPE'}}}") == [f"file {d / 'NOPE'} cannot be read"]
        assert reference_problems("${secret:NOPE}") == ["secret NOPE is not in the secret store"]
    finally:
        set_secret_store(None)


def test_a_pipeline_run_resolves_secret_references_from_its_state(tmp_path: Path, monkeypatch) -> None:
    from replicant.cli import app

    monkeypatch.setenv("REPLICANT_MASTER_KEY", generate_key())
    monkeypatch.delenv("REPLICANT_MASTER_KEY_FILE", raising=False)
    with sqlite3.connect(tmp_path / "src.db") as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, n TEXT)")
        c.executemany("INSERT INTO items VALUES (?, ?)", [(1, "a"), (2, "b")])
    p = tmp_path / "p.yml"
    p.write_text("pipeline: sec\nsource: {type: sqlite, url: '${secret:SRC_URL}', streams: [items]}\n"
                 "destinations: [{name: out, type: duckdb}]\n")
    runner = CliRunner()
    try:
        r = runner.invoke(app, ["run", str(p)])
        assert r.exit_code == 2 and "secret SRC_URL is not in the secret store" in r.output
        r = runner.invoke(app, ["secret", "set", str(p), "SRC_URL"], input=f"sqlite:///{tmp_path / 'src.db'}\n")
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["run", str(p)])
        assert r.exit_code == 0, r.output
        import duckdb

        with duckdb.connect(str(tmp_path / "sec.duckdb"), read_only=True) as c:
            assert c.execute("SELECT count(*) FROM items").fetchone() == (2,)
    finally:
        set_secret_store(None)


def test_secret_cli_reads_the_value_from_stdin_never_argv_and_lists_no_value(tmp_path: Path, monkeypatch) -> None:
    from replicant.cli import app

    monkeypatch.setenv("REPLICANT_MASTER_KEY", generate_key())
    monkeypatch.delenv("REPLICANT_MASTER_KEY_FILE", raising=False)
    p = tmp_path / "p.yml"
    p.write_text("pipeline: x\nsource: {type: sqlite, url: 'sqlite:///s.db', streams: all}\ndestinations: [{name: w}]\n")
    runner = CliRunner()
    r = runner.invoke(app, ["secret", "set", str(p), "PW", SENTINEL])  # a value on argv is refused
    assert r.exit_code != 0
    r = runner.invoke(app, ["secret", "set", str(p), "PW"], input=SENTINEL)
    assert r.exit_code == 0, r.output
    listed = runner.invoke(app, ["secret", "list", str(p), "--json"])
    assert listed.exit_code == 0 and '"name": "PW"' in listed.output and SENTINEL not in listed.output
    r = runner.invoke(app, ["secret", "rotate", str(p)])
    assert r.exit_code == 0 and "0 secret(s) re-encrypted" in r.output and "older keys can be removed" in r.output
    r = runner.invoke(app, ["secret", "delete", str(p), "PW"])
    assert r.exit_code == 0
    r = runner.invoke(app, ["secret", "delete", str(p), "PW"])
    assert r.exit_code == 2 and "no secret PW" in r.output
    assert install_for_pipeline(p) is not None
    set_secret_store(None)


def test_a_lookup_does_not_create_a_missing_state(tmp_path: Path) -> None:
    store = EncryptedStore(f"sqlite:///{tmp_path / 'nope' / 'state.db'}", keys=MasterKeys((generate_key(),)))
    assert store.get("PW") is None
    assert not (tmp_path / "nope").exists()
