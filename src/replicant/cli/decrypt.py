"""``replicant decrypt``: values written by the ``encrypt`` transform, back in clear, for
someone holding the key.

Keys are given by reference only (``--key '${env:PII_KEY}'``, repeatable for rotated keys),
never as a value on the command line (other users see a process's arguments). Values come as
arguments, or one per line on standard input; each clear value is printed on its own line, in
order (an empty line for an empty input line).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from replicant.cli._app import app, fail, out


@app.command("decrypt")
def decrypt_values(
    values: Annotated[list[str] | None, typer.Argument(metavar="[VALUE]...", help="Values (v1.gcm.… / v1.siv.…); default: stdin.")] = None,
    key: Annotated[list[str] | None, typer.Option(
        "--key", help="A key by reference: '${env:NAME}' or '${secret:NAME}' (repeat for rotated keys).")] = None,
) -> None:
    """Decrypts values written by the `encrypt` transform."""
    from replicant.errors import ConfigError
    from replicant.secrets import REFERENCE, resolve
    from replicant.transforms.crypto import decrypt

    try:
        refs = key or []
        if not refs:
            raise ConfigError("decrypt needs --key '${env:NAME}' (or '${secret:NAME}')")
        if any(not REFERENCE.fullmatch(r.strip()) for r in refs):
            raise ConfigError("--key takes a reference ('${env:NAME}' or '${secret:NAME}'), never the key itself")
        keys = [resolve(r.strip()) for r in refs]
        lines = values if values else [line.rstrip("\n") for line in sys.stdin]
        try:
            clear = [decrypt(v, keys) if v else "" for v in lines]
        except ValueError as e:
            raise ConfigError(f"cannot decrypt: {e}") from None
    except Exception as e:  # noqa: BLE001 - reported as the CLI reports everything
        fail(e)
        return
    for v in clear:
        out.print(v, markup=False, highlight=False, soft_wrap=True)
