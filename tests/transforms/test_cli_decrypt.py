"""``replicant decrypt``: values of the ``encrypt`` transform back in clear with a key given by
reference (rotated keys too); a key written in clear on the command line is refused, unechoed."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pyarrow as pa

from replicant.transforms.crypto import Encrypt, EncryptRule


def _cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replicant.cli", "decrypt", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_decrypt_cli_reads_stdin_and_takes_keys_by_reference() -> None:
    old, new = os.urandom(32), os.urandom(32)
    batch = pa.RecordBatch.from_pydict({"c": ["+44 20 7946 0001", "", "ünïcode ☎"]})
    values = Encrypt({"c": EncryptRule(old)}).apply(batch).column(0).to_pylist()
    values += Encrypt({"c": EncryptRule(new, deterministic=True)}).apply(batch).column(0).to_pylist()
    env = {"OLD_KEY": base64.b64encode(old).decode(), "NEW_KEY": base64.b64encode(new).decode()}
    done = _cli("--key", "${env:OLD_KEY}", "--key", "${env:NEW_KEY}", stdin="\n".join(values) + "\n", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["+44 20 7946 0001", "", "ünïcode ☎"] * 2

    refused = _cli(values[0], "--key", env["OLD_KEY"])
    assert refused.returncode == 2 and "never the key itself" in refused.stderr
    assert env["OLD_KEY"] not in refused.stdout + refused.stderr
    wrong = _cli(values[0], "--key", "${env:NEW_KEY}", env=env)
    assert wrong.returncode == 2 and "was not given" in wrong.stderr
