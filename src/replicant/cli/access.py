"""``replicant secret``, ``replicant token`` and ``replicant audit``, and the audit entry
every mutating command records (:func:`audit_commands`).

Each takes the pipeline file whose state store holds the secrets, tokens and audit log
(a PostgreSQL state shared by several pipelines holds them all). A secret's value is
read from stdin or a hidden prompt, never from the command line (argv is visible to
every user of the machine through ``ps``).
"""

from __future__ import annotations

import functools
import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from replicant.access.audit import entries_as_json_lines
from replicant.cli._app import app, err, out, parse_since
from replicant.cli._app import fail as _fail
from replicant.errors import ConfigError

secret_app = typer.Typer(no_args_is_help=True, help="The encrypted secret store behind ${secret:NAME}.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens with a role and tenant scope.")
app.add_typer(secret_app, name="secret")
app.add_typer(token_app, name="token")

Pipeline = Annotated[Path, typer.Argument(help="A pipeline file: its state store holds the secrets, tokens and audit log.")]
Name = Annotated[str, typer.Argument(help="The secret's name, as in ${secret:NAME}.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON (lines for audit).")]


@contextmanager
def _state(pipeline: Path) -> Iterator[Any]:
    from replicant.access.secret_store import pipeline_state_url
    from replicant.state.store import StateStore

    url = pipeline_state_url(pipeline)
    if url is None:
        raise ConfigError(f"cannot find the state store of {str(pipeline)!r}: check it with `replicant run` or `status`")
    with StateStore(url) as store:
        yield store


def _audit(store: Any, action: str, *, result: str = "ok", **fields: Any) -> None:
    from replicant.access.audit import cli_actor, cli_origin, record

    record(store, cli_actor(), action, result=result, origin=cli_origin(), **fields)


def _time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _show(rows: list[dict[str, Any]], as_json: bool, headers: tuple[str, ...],
          cells: Callable[[dict[str, Any]], tuple[str, ...]]) -> None:
    """The rows of a ``list`` command: JSON lines with ``--json``, else a table."""
    if as_json:
        sys.stdout.write(entries_as_json_lines(rows))
        return
    table = Table(*headers)
    for r in rows:
        table.add_row(*cells(r))
    out.print(table)


# -- secret ------------------------------------------------------------------------------


@secret_app.command("keygen")
def secret_keygen() -> None:
    """Prints a new master key (put it first in REPLICANT_MASTER_KEY_FILE or REPLICANT_MASTER_KEY)."""
    from replicant.access.keys import generate_key, key_id

    key = generate_key()
    out.print(key, markup=False)
    err.print(f"key id {key_id(key)}", markup=False)


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise ConfigError(f"no value given for secret {name} (on stdin or at the prompt)")
    return value


@secret_app.command("set")
def secret_set(pipeline: Pipeline, name: Name) -> None:
    """Stores a secret, its value read from stdin or a hidden prompt (never from the command line)."""
    from replicant.access.secret_store import EncryptedStore

    try:
        value = _read_value(name)
        with _state(pipeline) as store:
            EncryptedStore(store).set(name, value)
            _audit(store, "secret.set", detail=f"name={name}")
        out.print(f"secret {name} stored", markup=False)
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)


@secret_app.command("list")
def secret_list(pipeline: Pipeline, as_json: AsJson = False) -> None:
    """Names, key ids and dates of the stored secrets (never a value)."""
    from replicant.access.secret_store import EncryptedStore

    try:
        with _state(pipeline) as store:
            rows = EncryptedStore(store).list()
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)
        return
    _show(rows, as_json, ("name", "key id", "created", "updated"),
          lambda r: (r["name"], r["key_id"], _time(r["created_at"]), _time(r["updated_at"])))


@secret_app.command("delete")
def secret_delete(pipeline: Pipeline, name: Name) -> None:
    """Removes a secret."""
    from replicant.access.secret_store import EncryptedStore

    try:
        with _state(pipeline) as store:
            found = EncryptedStore(store).delete(name)
            _audit(store, "secret.delete", result="ok" if found else "not found", detail=f"name={name}")
        if not found:
            raise ConfigError(f"no secret {name}")
        out.print(f"secret {name} deleted", markup=False)
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)


@secret_app.command("rotate")
def secret_rotate(pipeline: Pipeline) -> None:
    """Re-encrypts every secret under the first master key; says when old keys can go."""
    from replicant.access.secret_store import EncryptedStore

    try:
        with _state(pipeline) as store:
            result = EncryptedStore(store).rotate()
            _audit(store, "secret.rotate", detail=f"key={result.key_id} reencrypted={result.reencrypted}")
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)
        return
    out.print(f"{result.reencrypted} secret(s) re-encrypted under key {result.key_id}", markup=False)
    if result.still_needed:
        out.print(f"keys still needed: {', '.join(result.still_needed)}", markup=False)
    else:
        out.print("no secret needs another key: older keys can be removed", markup=False)


# -- token -------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    pipeline: Pipeline,
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin.")],
    tenant: Annotated[list[str] | None, typer.Option("--tenant", help="Only this tenant (repeat for several).")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Lifetime, e.g. 90d, 12h.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name to recognise it by.")] = None,
) -> None:
    """Creates a token and prints it once (only its hash is kept)."""
    from replicant.access.tokens import create_token, parse_duration

    try:
        lifetime = None if expires is None else parse_duration(expires)
        with _state(pipeline) as store:
            token, who = create_token(store, role=role, tenants=tenant or [], name=name, expires=lifetime)
            _audit(store, "token.create", tenant=",".join(who.tenants) or None,
                   detail=f"id={who.id} name={who.name} role={who.role}")
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)
        return
    err.print(f"token {who.id} ({who.name}, {who.role}) — shown once, store it now:", markup=False)
    out.print(token, markup=False)


@token_app.command("list")
def token_list(pipeline: Pipeline, as_json: AsJson = False) -> None:
    """Tokens: id, name, role, tenants, created, expires, last used, revoked (never the token)."""
    try:
        with _state(pipeline) as store:
            rows = store.token_rows()
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)
        return
    _show(rows, as_json, ("id", "name", "role", "tenants", "created", "expires", "last used", "revoked"),
          lambda r: (r["id"], r["name"], r["role"], ",".join(r["tenants"]) or "(all)", _time(r["created_at"]),
                     _time(r["expires_at"]) or "never", _time(r["last_used_at"]), _time(r["revoked_at"])))


@token_app.command("revoke")
def token_revoke(pipeline: Pipeline, token_id: Annotated[str, typer.Argument(help="The token's id (see `list`).")]) -> None:
    """Revokes a token at once."""
    try:
        with _state(pipeline) as store:
            done = store.revoke_token(token_id)
            _audit(store, "token.revoke", result="ok" if done else "not found", detail=f"id={token_id}")
        if not done:
            raise ConfigError(f"no live token {token_id}")
        out.print(f"token {token_id} revoked", markup=False)
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)


# -- audit -------------------------------------------------------------------------------


@app.command("audit")
def audit(
    pipeline: Pipeline,
    since: Annotated[str | None, typer.Option("--since", help="An ISO time (UTC if no zone) or an age like 24h.")] = None,
    only_pipeline: Annotated[str | None, typer.Option("--pipeline", help="Only this pipeline's entries.")] = None,
    tenant: Annotated[list[str] | None, typer.Option("--tenant", help="Only this tenant's (repeat for several).")] = None,
    as_json: AsJson = False,
) -> None:
    """Lists the audit log, oldest first; --json exports JSON lines."""
    try:
        with _state(pipeline) as store:
            rows = store.audit_entries(since=None if since is None else parse_since(since), pipeline=only_pipeline,
                                       tenants=tenant or None)
    except Exception as e:  # noqa: BLE001 - the CLI boundary
        _fail(e)
        return
    _show(rows, as_json, ("id", "at", "who", "action", "pipeline", "tenant", "stream", "from", "result", "detail"),
          lambda r: (str(r["id"]), _time(r["at"]), r["actor"], r["action"], r["pipeline"] or "", r["tenant"] or "",
                     r["stream"] or "", r["origin"] or "", r["result"], r["detail"] or ""))


# -- every mutating command records an entry -----------------------------------------------

#: (group, command) of the commands that change something, and the audit action they record.
MUTATING = {
    (None, "run"): "run",
    (None, "replay"): "replay",
    (None, "resync"): "resync",
    ("dead-letters", "retry"): "dead_letters.retry",
    ("dead-letters", "discard"): "dead_letters.discard",
    ("cdc", "install"): "cdc.install",
    ("cdc", "uninstall"): "cdc.uninstall",
    ("cdc", "drop-slot"): "cdc.drop_slot",
    ("tenant", "drop"): "tenant.drop",
}


def _fields(kwargs: dict[str, Any]) -> dict[str, Any]:
    def text(v: Any) -> str | None:
        if v is None or v == [] or v is False:
            return None
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    detail = {k: text(kwargs.get(k)) for k in ("destination", "ids", "all", "offset", "since", "from_start", "follow", "slot")}
    return {
        "tenant": text(kwargs.get("tenant")),
        "stream": text(kwargs.get("stream")),
        "detail": " ".join(f"{k}={v}" for k, v in detail.items() if v is not None) or None,
    }


def _audited(action: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = "failed"
        try:
            value = callback(*args, **kwargs)
            result = "ok"
            return value
        except typer.Exit as e:
            result = "ok" if e.exit_code == 0 else f"exit {e.exit_code}"
            raise
        finally:
            _record_command(action, kwargs, result)

    return wrapper


def _record_command(action: str, kwargs: dict[str, Any], result: str) -> None:
    from replicant.access.secret_store import pipeline_state_url, sqlite_state_exists
    from replicant.yaml_load import load_yaml

    pipeline = kwargs.get("pipeline")
    url = None if pipeline is None else pipeline_state_url(pipeline)
    if pipeline is None or url is None or not sqlite_state_exists(url):
        return  # no state: the file was unreadable, or the command was refused before touching anything
    try:
        name = load_yaml(Path(pipeline).read_text(encoding="utf-8"))["pipeline"]
        with _state(Path(pipeline)) as store:
            _audit(store, action, result=result, pipeline=name, **_fields(kwargs))
    except Exception as e:  # noqa: BLE001 - an audit failure is reported, never turned into the command's failure
        err.print(f"warning: could not record the audit entry: {type(e).__name__}", markup=False)


def audit_commands(root: typer.Typer) -> None:
    """Wraps every command of :data:`MUTATING` registered on ``root`` (and its groups) so it
    appends an audit entry with its result. Call once, after every command is registered."""
    groups: list[tuple[str | None, typer.Typer]] = [(None, root)]
    groups += [(g.name, g.typer_instance) for g in root.registered_groups if g.typer_instance is not None]
    for group, typer_app in groups:
        for command in typer_app.registered_commands:
            name = command.name or (command.callback.__name__.replace("_", "-") if command.callback else None)
            action = None if name is None else MUTATING.get((group, name))
            if action is not None and command.callback is not None and not getattr(command.callback, "_audited", False):
                command.callback = _audited(action, command.callback)
                command.callback._audited = True  # type: ignore[attr-defined]
