"""``source: {type: singer}``: a `Singer <https://hub.meltano.com/singer/spec>`_ tap as a source.

::

    source:
      type: singer
      command: tap-postgres              # the tap's executable (and fixed arguments)
      config: {host: db, user: app, password: "${env:PGPASSWORD}", dbname: shop}
      streams:
        - name: public-orders            # the catalog's tap_stream_id
          replication_method: INCREMENTAL
          replication_key: updated_at
        - public-customers               # FULL_TABLE

The tap runs as a subprocess: ``--discover`` gives the catalog (streams, JSON schemas, keys); a
run gets ``--config`` (``config:`` written to a private file, references resolved, deleted
afterwards), ``--catalog`` with the listed streams selected, and ``--state`` with the last
durable STATE. Every stream is a ``log`` stream of one change feed (:meth:`SingerSource.capture`).

Bulk parsing: the tap's stdout is read in blocks and split into lines in C; the message types
and streams of a block come from one :func:`pyarrow.json.read_json` over it, and each stream's
RECORD lines from another with that stream's schema as the explicit schema (typed by its JSON
schema: integers, numbers — decimals when ``multipleOf`` is a power of ten —, ``date-time`` and
``date`` strings, booleans, objects with properties as structs, arrays as lists). No record
becomes a Python object. Only SCHEMA and STATE lines are parsed one by one (there are few).

The resume rule, where resume bugs live: the records between two STATE messages form one change
set whose position is ``{"state": <the STATE after them>}``. The engine appends the records, then
saves that position as the feed's checkpoint, so a STATE is kept only once the records before it
are durable in the log. Records after the last STATE of a block are appended with the previous
STATE (so memory stays bounded); a crash re-reads them from that STATE — the Singer contract: a
tap resumes *from* a state, so destinations with a key (``merge``) absorb the repeats.

Fields a JSON schema types ambiguously (``["string", "number"]``, objects without properties)
are not read (a warning names them at discovery); a ``catalog:`` file can type them.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import select
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from pydantic import BaseModel, ConfigDict, Field

from replicant.config import SourceConfig
from replicant.errors import ConnectionError, FatalError
from replicant.model import OP_INSERT, ChangeSet, ConnectorContext, Position, Stream, encode_position, utcnow, with_meta
from replicant.secrets import REFERENCE, resolve_all
from replicant.sources.base import Capabilities, Source
from replicant.sources.stream_entries import options_entry, stream_options

__all__ = ["SingerSettings", "SingerSource", "SingerStreamSettings", "arrow_schema"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_SECRET_KEY = re.compile(r"(?i)pass|secret|token|key|credential|private|auth")
_HEAD = pj.ParseOptions(explicit_schema=pa.schema([("type", pa.string()), ("stream", pa.string())]),
                        unexpected_field_behavior="ignore")


class SingerSettings(BaseModel):
    """The keys of a ``type: singer`` source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | list[str] = Field(description="The tap's command line (a string is split like a shell does).")
    config: dict[str, Any] | None = Field(None, description="The tap's config, passed as `--config FILE` (values may "
                                          "be references).")
    catalog: str | None = Field(None, description="A catalog file to use instead of running `--discover`.")
    catalog_option: str = Field("--catalog", description="How the tap takes its catalog (`--properties` for old taps).")
    stderr_lines: int = Field(20, ge=0, description="Lines of the tap's stderr quoted when it fails.")


class SingerStreamSettings(BaseModel):
    """The singer-specific keys of a ``streams:`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replication_method: str = Field("FULL_TABLE", description="FULL_TABLE, INCREMENTAL or LOG_BASED (the tap's metadata).")
    replication_key: str | None = Field(None, description="The column of INCREMENTAL replication.")


def arrow_schema(json_schema: dict[str, Any]) -> tuple[pa.Schema, list[str]]:
    """A stream's Arrow schema from its JSON schema, and the fields left out (ambiguous types).
    ``date`` strings are kept as ``date32`` fields tagged ``replicant.singer=date`` (read as text,
    then cast)."""
    fields, skipped = [], []
    for name, sub in (json_schema.get("properties") or {}).items():
        t = _arrow_type(sub)
        if t is None:
            skipped.append(name)
        else:
            fields.append(pa.field(name, t))
    return pa.schema(fields), skipped


def _arrow_type(js: dict[str, Any]) -> pa.DataType | None:
    if "anyOf" in js:
        options = [o for o in js["anyOf"] if o.get("type") not in ("null", ["null"])]
        return _arrow_type(options[0]) if len(options) == 1 else None
    kinds = js.get("type", [])
    kinds = [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k != "null"]
    if len(kinds) != 1:
        return None
    kind = kinds[0]
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        step = js.get("multipleOf")
        if isinstance(step, (int, float)) and 0 < step < 1:
            scale = round(-math.log10(step))
            if math.isclose(10.0 ** -scale, step):
                return pa.decimal128(38, scale)
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "string":
        fmt = js.get("format")
        if fmt == "date-time":
            return pa.timestamp("us", tz="UTC")
        return pa.date32() if fmt == "date" else pa.string()
    if kind == "object":
        schema, _ = arrow_schema(js)
        return pa.struct(list(schema)) if len(schema) else None
    if kind == "array":
        inner = _arrow_type(js.get("items") or {})
        return pa.list_(inner) if inner is not None else None
    return None


def _read_type(t: pa.DataType) -> pa.DataType:
    """The type the JSON reader reads a field as (dates as text, cast afterwards)."""
    return pa.string() if pa.types.is_date(t) else t


class SingerSource(Source):
    """Runs a Singer tap (see the module docstring)."""

    capabilities = Capabilities(modes=frozenset({"log"}))
    settings = SingerSettings
    stream_settings: ClassVar[type[SingerStreamSettings]] = SingerStreamSettings
    #: Every stream of a tap is read by its one change feed.
    default_stream_mode = "log"

    @classmethod
    def stream_entry(cls, entry: dict[str, Any]) -> dict[str, Any]:
        """``name`` is the stream (the catalog's ``tap_stream_id``); the singer keys go under
        ``options``; the mode is ``log``."""
        return options_entry(entry, mode="log")

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self._streams: dict[str, SingerStreamSettings] = stream_options(config.streams, SingerStreamSettings)
        self._catalog: dict[str, Any] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ the tap

    def _argv(self) -> list[str]:
        cmd = self.options.command
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        if not argv or (shutil.which(argv[0]) is None and not Path(argv[0]).is_file()):
            raise ConnectionError(f"singer tap {argv[0] if argv else '(empty command)'!r} not found: install it or "
                                  "give `command:` its full path")
        return argv

    def _name(self) -> str:
        """The tap as messages name it: its command line, shortened."""
        text = shlex.join(self._argv())
        return text if len(text) <= 120 else text[:117] + "..."

    def _secrets(self) -> list[str]:
        """The config values to mask in messages: those written as references, and those under
        a key that names a secret (``password``, ``client_secret``, ``api_key``, ``token``…)."""
        values: list[str] = []

        def walk(v: Any, secret: bool) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(x, secret or bool(_SECRET_KEY.search(str(k))))
            elif isinstance(v, list):
                for x in v:
                    walk(x, secret)
            elif isinstance(v, str) and (secret or REFERENCE.search(v)):
                resolved = resolve_all(v)
                if len(resolved) >= 3:
                    values.append(resolved)

        walk(self.options.config or {}, False)
        return values

    def _scrub(self, text: str) -> str:
        for v in self._secrets():
            text = text.replace(v, "***")
        return text

    def _files(self, folder: Path, catalog: dict[str, Any] | None, state: Any) -> list[str]:
        """Writes config, catalog and state into ``folder`` (0600); the tap's arguments for them."""
        args: list[str] = []
        if self.options.config is not None:
            path = folder / "config.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(resolve_all(self.options.config), f)
            args += ["--config", str(path)]
        if catalog is not None:
            (folder / "catalog.json").write_text(json.dumps(catalog))
            args += [self.options.catalog_option, str(folder / "catalog.json")]
        if state is not None:
            (folder / "state.json").write_text(json.dumps(state))
            args += ["--state", str(folder / "state.json")]
        return args

    def _failed(self, what: str, code: int, stderr: Path) -> FatalError:
        lines = stderr.read_text(errors="replace").splitlines()[-self.options.stderr_lines:] if stderr.exists() else []
        tail = "\n".join(lines)
        return FatalError(self._scrub(f"singer tap {self._name()!r} {what} exited with {code}" + (f":\n{tail}" if tail else "")))

    def catalog(self) -> dict[str, Any]:
        """The tap's catalog: the ``catalog:`` file, or what ``--discover`` prints (cached)."""
        if self._catalog is None:
            if self.options.catalog:
                self._catalog = json.loads(Path(self.options.catalog).read_text())
            else:
                argv = self._argv()
                with tempfile.TemporaryDirectory(prefix="singer-") as tmp:
                    args = self._files(Path(tmp), None, None)
                    err = Path(tmp) / "stderr"
                    with open(err, "wb") as e:
                        done = subprocess.run([*argv, *args, "--discover"], stdout=subprocess.PIPE, stderr=e,
                                              timeout=600, check=False)
                    if done.returncode != 0:
                        raise ConnectionError(str(self._failed("--discover", done.returncode, err)))
                try:
                    self._catalog = json.loads(done.stdout)
                except ValueError:
                    raise FatalError(f"singer tap {argv[0]!r} --discover printed no JSON catalog") from None
        assert self._catalog is not None
        return self._catalog

    # ------------------------------------------------------------------ the contract

    def discover(self) -> list[Stream]:
        out = []
        for entry in self.catalog().get("streams", []):
            name = entry.get("tap_stream_id") or entry["stream"]
            schema, skipped = arrow_schema(entry.get("schema") or {})
            top: dict[str, Any] = next((m.get("metadata", {}) for m in entry.get("metadata", []) if not m.get("breadcrumb")), {})
            key = tuple(entry.get("key_properties") or top.get("table-key-properties") or ())
            if skipped:
                log.warning("singer stream %s: field(s) %s have no single JSON type and are not read", name, ", ".join(skipped))
            schema = pa.schema([f.with_nullable(f.name not in key) for f in schema])
            out.append(Stream(name=name, table=(name,), schema=schema, primary_key=key, mode="log",
                              options={"kind": "table", "stream": entry.get("stream", name)}))
        return out

    def check(self) -> list[str]:
        return [f"singer tap {self._name()!r}: {len(self.discover())} stream(s) in its catalog"]

    def _selected_catalog(self, streams: list[Stream]) -> dict[str, Any]:
        wanted = {s.name for s in streams}
        entries = []
        for entry in self.catalog().get("streams", []):
            name = entry.get("tap_stream_id") or entry["stream"]
            entry = json.loads(json.dumps(entry))
            st = self._streams.get(name) or SingerStreamSettings.model_validate({})
            for m in entry.setdefault("metadata", []):
                if not m.get("breadcrumb"):
                    md = m.setdefault("metadata", {})
                    md["selected"] = name in wanted
                    md["replication-method"] = st.replication_method
                    if st.replication_key:
                        md["replication-key"] = st.replication_key
            if not any(not m.get("breadcrumb") for m in entry["metadata"]):
                entry["metadata"].append({"breadcrumb": [], "metadata": {"selected": name in wanted,
                                                                         "replication-method": st.replication_method}})
            entry["selected"] = name in wanted
            if st.replication_key:
                entry["replication_key"] = st.replication_key
            entries.append(entry)
        return {**self.catalog(), "streams": entries}

    def capture(self, streams: list[Stream], positions: dict[str, Position | None], *, resume: Position | None,
                follow: bool, stop: threading.Event) -> Iterator[ChangeSet]:
        """Runs the tap from ``resume``'s STATE (see the module docstring); with ``follow``, again
        every ``poll_interval`` until ``stop``."""
        state = (resume or {}).get("state")
        while True:
            for cs in self._run(streams, state, stop):
                state = cs.position.get("state")
                yield cs
            if not follow or stop.wait(float(self.config.poll_interval)):
                return

    def _run(self, streams: list[Stream], state: Any, stop: threading.Event) -> Iterator[ChangeSet]:
        by_name = {s.name: s for s in streams}
        for s in streams:
            by_name.setdefault(str(s.options.get("stream", s.name)), s)
        tmp = Path(tempfile.mkdtemp(prefix="singer-"))
        try:
            args = self._files(tmp, self._selected_catalog(streams), state)
            err = tmp / "stderr"
            with open(err, "wb") as e:
                self._proc = proc = subprocess.Popen([*self._argv(), *args], stdout=subprocess.PIPE, stderr=e)
            assert proc.stdout is not None
            stdout = cast(io.BufferedReader, proc.stdout)  # unbuffered reads of what is there: read1
            pending = b""
            current: Position = {"state": state}
            batch_lines = max(1, self.config.batch_size)
            lines: list[bytes] = []
            flushed = time.monotonic()
            wait = min(0.5, float(self.config.flush_interval))
            while not stop.is_set():
                ready, _, _ = select.select([stdout], [], [], wait)  # a quiet tap must not hold up a stop
                block = stdout.read1(_BLOCK) if ready else None
                if block:
                    parts = (pending + block).split(b"\n")
                    pending = parts.pop()
                    lines += [p for p in parts if p.strip()]
                elif block is not None and pending.strip():  # end of output
                    lines.append(pending)
                    pending = b""
                due = time.monotonic() - flushed >= float(self.config.flush_interval)
                if block is not None and block and len(lines) < batch_lines and not due:
                    continue
                if lines:  # a full block, the end, or records waiting longer than flush_interval
                    for cs in self._change_sets(lines, by_name, current):
                        current = cs.position
                        yield cs
                    lines = []
                flushed = time.monotonic()
                if block is not None and not block:
                    break
            code = proc.wait() if not stop.is_set() else _terminate(proc)
            if code != 0 and not stop.is_set():
                raise self._failed("run", code, err)
        finally:
            if self._proc is not None:
                if self._proc.poll() is None:
                    _terminate(self._proc)
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
            self._proc = None
            shutil.rmtree(tmp, ignore_errors=True)  # the config file holds secrets

    def _change_sets(self, lines: list[bytes], streams: dict[str, Stream], current: Position) -> Iterator[ChangeSet]:
        """The change sets of a block of lines: one per STATE (with the records before it), then
        one with the records after the last STATE, at ``current``'s position."""
        if not lines:
            return
        try:
            head = pj.read_json(io.BytesIO(b"\n".join(lines)), parse_options=_HEAD)
        except pa.ArrowInvalid as e:
            raise FatalError(f"singer tap {self._name()!r} printed a line that is not a JSON object ({e})") from None
        kinds = head.column("type").to_numpy(zero_copy_only=False)
        names = head.column("stream").to_numpy(zero_copy_only=False)
        cuts = np.flatnonzero(kinds == "STATE")
        start = 0
        for cut in [*cuts.tolist(), len(lines)]:
            batches = self._records(lines, kinds, names, start, cut, streams)
            if cut < len(lines):
                current = {"state": json.loads(lines[cut]).get("value")}
            if batches or cut < len(lines):
                yield ChangeSet(batches=batches, position=current)
            start = cut + 1

    def _records(self, lines: list[bytes], kinds: Any, names: Any, start: int, end: int,
                 streams: dict[str, Stream]) -> dict[str, pa.RecordBatch]:
        out: dict[str, pa.RecordBatch] = {}
        if end <= start:
            return out
        seg_kinds, seg_names = kinds[start:end], names[start:end]
        records = seg_kinds == "RECORD"
        for name in np.unique(seg_names[records]).tolist():
            stream = streams.get(name)
            if stream is None:
                continue  # a stream that was not selected
            picked = np.flatnonzero(records & (seg_names == name)) + start
            body = b"\n".join([lines[i] for i in picked.tolist()])
            read_schema = pa.schema([("record", pa.struct([pa.field(f.name, _read_type(f.type)) for f in stream.schema]))])
            try:
                table = pj.read_json(io.BytesIO(body), parse_options=pj.ParseOptions(
                    explicit_schema=read_schema, unexpected_field_behavior="ignore"))
            except pa.ArrowInvalid as e:
                raise FatalError(f"singer stream {stream.name!r}: a RECORD does not match its JSON schema ({e})") from None
            rec = table.column("record").combine_chunks()
            arrays = [pc.struct_field(rec, i).cast(f.type) for i, f in enumerate(stream.schema)]
            data = pa.RecordBatch.from_arrays(arrays, schema=pa.schema([f.with_nullable(True) for f in stream.schema]))
            data = data.cast(stream.schema) if all(f.nullable or not a.null_count for a, f in zip(arrays, stream.schema)) \
                else data
            out[stream.name] = with_meta(data, OP_INSERT, encode_position({"stream": name}), utcnow())
        return out

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            _terminate(self._proc)
        self._proc = None


def _terminate(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
