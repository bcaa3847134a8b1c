"""Crash test of ``replicant secret rotate``: SIGKILLed at random instants while re-encrypting,
then run again to the end; every secret still decrypts to its value, under the new key only."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from replicant.access.keys import MasterKeys, generate_key, key_id
from replicant.access.secret_store import EncryptedStore
from replicant.state.access_tables import secrets as sealed
from replicant.state.store import StateStore

SECRETS = 12_000
KILLS = 4


@pytest.mark.slow
def test_rotate_survives_sigkill(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    p = tmp_path / "p.yml"
    p.write_text("pipeline: x\nsource: {type: sqlite, url: 'sqlite:///s.db', streams: all}\ndestinations: [{name: w}]\n")
    url = f"sqlite:///{tmp_path / '.replicant' / 'x' / 'state.db'}"
    values = {f"S{i}": f"value-{i}-{random.random()}" for i in range(SECRETS)}
    keys, now = MasterKeys((old,)), datetime.now(UTC)
    rows = [dict(zip(("ciphertext", "key_id"), keys.encrypt(name, value), strict=True), name=name, created_at=now,
                 updated_at=now) for name, value in values.items()]
    with StateStore(url) as state, state._begin(write=True) as conn:  # in bulk: what `secret set` writes, faster
        conn.execute(sealed.insert(), rows)
    env = {**os.environ, "REPLICANT_MASTER_KEY": f"{new},{old}"}
    env.pop("REPLICANT_MASTER_KEY_FILE", None)
    rng = random.Random(20261206)
    mid_way = 0
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-m", "replicant.cli", "secret", "rotate", str(p)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 2.5))  # the kill instant itself is what is random, not a wait for a state
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with StateStore(url) as state:
            ids = {r["key_id"] for r in state.secret_rows()}
        if ids == {key_id(old), key_id(new)}:
            mid_way += 1
    assert mid_way >= 1, "no kill landed mid-rotation"
    done = subprocess.run([sys.executable, "-m", "replicant.cli", "secret", "rotate", str(p)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "older keys can be removed" in done.stdout
    with StateStore(url) as state:
        only_new = EncryptedStore(state, keys=MasterKeys((new,)))
        assert {r["key_id"] for r in state.secret_rows()} == {key_id(new)}
        assert {name: only_new.get(name) for name in values} == values
