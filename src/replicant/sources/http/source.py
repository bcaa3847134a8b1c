"""``source: {type: http}``: paged JSON APIs (keys in :mod:`.settings`).

Each configured stream is one endpoint (``path`` under ``base_url``); a page of records is one
batch. Modes: ``full`` (every page, each run), ``snapshot_diff`` (a full read diffed against the
previous one: deletes too), and ``cursor``, set by ``incremental:`` (only records whose cursor
field passed the highest one seen).

Schema: the first page is the sample (declared ``schema:`` types first); fields that appear later
follow ``on_new_columns`` (:mod:`.records`).

The resume rule, where resume bugs live (each position is the one *after* its page):

``full``
    ``{"mode": "full", "page": STATE}`` with the next page's state (:mod:`.paginate`); resumable
    only for ``cursor``/``link_header``/``json_link`` pagination (offsets and page numbers shift:
    a crash restarts the read). The last batch is empty, ``final``, ``{"mode": "full", "done": true}``.
``cursor`` (``incremental:``)
    ``{"cursor": C, "filter": F, "max": M, "page": STATE}`` in the middle of a read: C is the
    cursor durable before this read, F the value sent in ``incremental.param`` (C less the
    look-back), M the highest cursor in the pages durable so far, STATE the next page. A resume
    continues at that page with the same filter (when the pagination can resume, else it asks
    again from F); once such a resumed read ends, it reads once more from the M it resumed with
    (``{"cursor": M0, "filter": M0 less the look-back, "max": M}`` between the two): its earlier
    pages may have changed while it was down, and such a change is newer than M0. Once the last
    page of a read from the first page is in: ``{"cursor": M}``: the **highest** cursor seen, saved
    only with the batch that makes it durable (the engine appends position and batch together).
    The next run asks for records after it (``param``), or, with no ``param``, reads everything and
    drops records whose cursor is not above it.
child streams (``path: /issues/{issues.number}/comments``)
    read once per record of the parent stream, with the parent's field as a column
    (``issues_number``). ``full``: ``{"mode": "full", "parents": K}``, the parents finished, in
    the parent listing's order (resumable when that listing's pagination is). ``cursor``:
    ``{"cursors": {"<parent value>": C}}``: each parent's own highest cursor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from replicant.config import SourceConfig, StreamConfig, settings_problems
from replicant.errors import ConfigError, FatalError
from replicant.model import (
    OP_READ,
    OP_UPDATE,
    ConnectorContext,
    DeadLetter,
    Position,
    ReadBatch,
    Stream,
    encode_position,
    utcnow,
    with_meta,
)
from replicant.sources.base import Capabilities, Source
from replicant.sources.http.client import ApiClient
from replicant.sources.http.paginate import Pager, records_of
from replicant.sources.http.records import RESCUED, BadValues, arrow_type, infer_schema, to_table
from replicant.sources.http.settings import HttpSettings, HttpStreamSettings
from replicant.sources.select import parse_lookback
from replicant.sources.stream_entries import options_entry

__all__ = ["HttpSource"]

_PARENT = re.compile(r"\{([A-Za-z_][\w\-]*)\.([^{}]+)\}")


class HttpSource(Source):
    """Reads paged JSON APIs (see the module docstring)."""

    capabilities = Capabilities(modes=frozenset({"full", "cursor", "snapshot_diff"}))
    settings = HttpSettings
    #: The http-specific keys of a ``streams:`` entry (gathered into ``StreamConfig.options``).
    stream_settings: ClassVar[type[HttpStreamSettings]] = HttpStreamSettings

    @classmethod
    def stream_entry(cls, entry: dict[str, Any]) -> dict[str, Any]:
        """A raw ``streams:`` entry in the common shape: ``name`` is the stream (``table``), the
        http keys go under ``options``, ``incremental:`` means ``mode: cursor`` on its field."""
        out = options_entry(entry)  # any key beyond the common ones is checked as an http key
        inc = entry.get("incremental")
        if isinstance(inc, dict) and isinstance(inc.get("cursor_path"), str):
            out.setdefault("mode", "cursor")
            out.setdefault("cursor", inc["cursor_path"].removeprefix("$."))
        return out

    def __init__(self, config: SourceConfig, context: ConnectorContext, *, clock: Any = None, sleep: Any = None) -> None:
        super().__init__(config, context)
        if not isinstance(config.streams, list):
            raise ConfigError("invalid source", [("source.streams", "an http source needs a list of streams "
                                                                    "(`- name: …, path: …`), not `all`")])
        problems: list[tuple[str, str]] = []
        self._streams: dict[str, HttpStreamSettings] = {}
        self._configs: dict[str, StreamConfig] = {}
        for i, sc in enumerate(config.streams):
            key = f"source.streams[{i}]"
            found = settings_problems(HttpStreamSettings, sc.options, key, list(StreamConfig.model_fields))
            problems += found
            if found:
                continue
            st = HttpStreamSettings.model_validate(sc.options)
            if st.incremental is not None and st.incremental.lookback is not None:
                try:
                    parse_lookback(st.incremental.lookback, temporal=True)
                except ValueError as e:
                    problems.append((f"{key}.incremental.lookback", str(e)))
            for col, t in st.schema_.items():
                try:
                    arrow_type(t)
                except ValueError as e:
                    problems.append((f"{key}.schema.{col}", str(e)))
            self._streams[sc.table] = st
            self._configs[sc.table] = sc
        index = {sc.table: i for i, sc in enumerate(config.streams)}
        for name, st in self._streams.items():
            for parent, _ in _PARENT.findall(self._path(name, st)):
                if parent not in index:
                    i = index[name]
                    problems.append((f"source.streams[{i}].path", f"names stream {parent!r}, which is not listed"))
        if problems:
            raise ConfigError("invalid source", problems)
        self._clock, self._sleep = clock, sleep
        self._client: ApiClient | None = None
        self._page_url = ""
        #: the schema each stream has grown to in this process (new fields under `add`)
        self._schemas: dict[str, pa.Schema] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            import time

            from replicant.sources.http.auth import build_auth

            o: HttpSettings = self.options
            clock = self._clock or time.monotonic
            auth = build_auth(o.auth, o.base_url, clock=clock, timeout=o.timeout, verify=o.verify)
            self._client = ApiClient(o, auth, self._secret_values, clock=clock, sleep=self._sleep or time.sleep)
        return self._client

    def _secret_values(self) -> list[str]:
        o: HttpSettings = self.options
        out = [v.get_secret_value() for v in o.headers.values()]
        for st in self._streams.values():
            out += [v.get_secret_value() for v in st.headers.values()]
        a = o.auth
        for attr in ("token", "value", "password", "client_secret"):
            if a is not None and hasattr(a, attr):
                out.append(getattr(a, attr).get_secret_value())
        return out

    def _path(self, name: str, st: HttpStreamSettings) -> str:
        return st.path if st.path is not None else "/" + quote(name)

    def _url(self, path: str) -> str:
        base: str = self.options.base_url
        return path if "://" in path else base.rstrip("/") + "/" + path.lstrip("/")

    def _params(self, st: HttpStreamSettings) -> dict[str, Any]:
        return {**self.options.params, **st.params}

    def _headers(self, st: HttpStreamSettings) -> dict[str, str]:
        merged = {**self.options.headers, **st.headers}
        return {k: v.get_secret_value() for k, v in merged.items()}

    def _pager(self, st: HttpStreamSettings) -> Pager:
        return Pager(st.paginate or self.options.paginate)

    def _pages(self, st: HttpStreamSettings, url: str, params: dict[str, Any],
               state: dict[str, Any]) -> Iterator[tuple[list[Any], dict[str, Any] | None]]:
        """``(records, next page state or None)`` per page from ``state`` on."""
        pager = self._pager(st)
        records_path = st.records or self.options.records
        headers = self._headers(st)
        while True:
            page_url, page_params = pager.request(state, url, params)
            r = self.client.get(page_url, params=page_params, headers=headers)
            self._page_url = f"GET {self.client.safe(r.request.url)}"  # the origin of its dead letters
            try:
                body = r.json()
            except ValueError:
                raise FatalError(f"GET {self.client.safe(r.url)} answered {r.status_code} with a body that is not "
                                 "JSON") from None
            records = records_of(body, records_path)
            nxt = pager.next(state, r, body, len(records))
            if nxt is not None and "url" in nxt:  # positions are stored and shown: never a key in them
                nxt = {**nxt, "url": self.client.without_secrets(nxt["url"])}
            yield records, nxt
            if nxt is None:
                return
            state = nxt

    def _parent(self, name: str) -> tuple[str, str] | None:
        found = _PARENT.findall(self._path(name, self._streams[name]))
        return found[0] if found else None

    def _parent_values(self, parent: str, field: str) -> Iterator[Any]:
        st = self._streams[parent]
        for records, _ in self._pages(st, self._url(self._path(parent, st)), self._params(st), self._pager(st).first()):
            for r in records:
                if isinstance(r, dict) and r.get(field) is not None:
                    yield r[field]

    def _child_url(self, name: str, value: Any) -> str:
        st = self._streams[name]
        return self._url(_PARENT.sub(lambda m: quote(str(value), safe=""), self._path(name, st)))

    def _parent_column(self, name: str) -> str | None:
        p = self._parent(name)
        return f"{p[0]}_{p[1]}" if p else None

    # ------------------------------------------------------------------ the contract

    def discover(self) -> list[Stream]:
        """Every configured stream, its schema from declared types and its first page."""
        out = []
        for name, st in self._streams.items():
            sc = self._configs[name]
            sample: list[Any] = []
            parent = self._parent(name)
            if parent is None:
                sample = next(self._pages(st, self._url(self._path(name, st)), self._params(st),
                                          self._pager(st).first()), ([], None))[0]
            else:
                value = next(self._parent_values(*parent), None)
                if value is not None:
                    sample = next(self._pages(st, self._child_url(name, value), self._params(st),
                                              self._pager(st).first()), ([], None))[0]
            key = tuple(sc.primary_key or ())
            hints = dict(st.schema_)
            if sc.cursor and sc.cursor not in hints and not any(sc.cursor in r for r in sample if isinstance(r, dict)):
                hints[sc.cursor] = "string"
            schema = infer_schema(sample, hints, st.nested, key)
            pcol = self._parent_column(name)
            if pcol and pcol not in schema.names:
                schema = schema.append(pa.field(pcol, pa.string()))
            if st.on_new_columns == "rescue" and RESCUED not in schema.names:
                schema = schema.append(pa.field(RESCUED, pa.string()))
            out.append(Stream(name=name, table=(name,), schema=schema, primary_key=key, options={"kind": "table"}))
        return out

    def check(self) -> list[str]:
        streams = self.discover()
        return [f"{s.name}: first page read, {len(s.schema)} column(s)" for s in streams]

    def read(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        if stream.mode == "cursor":
            return self._incremental(stream, position)
        return super().read(stream, position)

    def acknowledge(self, stream: Stream, position: Position) -> None:
        if stream.mode != "cursor":
            super().acknowledge(stream, position)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ batches

    def _table(self, stream: Stream, records: list[Any], parent: Any = None) -> pa.Table:
        """A page's records as a table of the stream's schema (grown by new fields under ``add``)."""
        st = self._streams[stream.name]
        schema = self._schemas.get(stream.name, stream.schema)
        try:
            table, schema = to_table(records, schema, nested=st.nested, on_new_columns=st.on_new_columns,
                                     timestamp_format=st.timestamp_format, stream=stream.name)
        except BadValues:
            if st.on_bad_record == "fail" or self._dead_letters() is None:
                raise
            table, schema = self._without_bad(stream, st, records, schema)
        pcol = self._parent_column(stream.name)
        if pcol is not None and parent is not None:
            i = table.schema.get_field_index(pcol)
            table = table.set_column(i, table.schema.field(i), pa.repeat(pa.scalar(str(parent)), table.num_rows))
        self._schemas[stream.name] = schema
        return table

    def _without_bad(self, stream: Stream, st: HttpStreamSettings, records: list[Any],
                     schema: pa.Schema) -> tuple[pa.Table, pa.Schema]:
        """The page without the records at fault, which go to the dead-letter store with the
        page's URL and their place in it. Only on this error path is a page read record by
        record, to find them."""
        good, letters = [], []
        for i, r in enumerate(records):
            try:
                to_table([r], schema, nested=st.nested, on_new_columns=st.on_new_columns,
                         timestamp_format=st.timestamp_format, stream=stream.name)
            except BadValues as e:
                payload = r if isinstance(r, dict) else {"value": r}
                letters.append(DeadLetter(reason=str(e), payload=payload, origin=f"{self._page_url} record {i}"))
            else:
                good.append(r)
        sink = self._dead_letters()
        assert sink is not None
        sink(stream, letters)
        return to_table(good, schema, nested=st.nested, on_new_columns=st.on_new_columns,
                        timestamp_format=st.timestamp_format, stream=stream.name)

    def _dead_letters(self) -> Any:
        """Where records that cannot be read go: the context's sink, else the pipeline's state
        store when the context names it (``state_url``); None: nowhere (the stream fails)."""
        if self.context.dead_letter is not None:
            return self.context.dead_letter
        url = getattr(self.context, "state_url", None)
        if not url:
            return None

        def store(stream: Stream, letters: list[DeadLetter]) -> None:
            from replicant.state import StateStore

            with StateStore(url) as st:
                st.add_dead_letters(self.context.pipeline, stream.name, letters, tenant=self.context.tenant)

        return store

    def _emit(self, table: pa.Table, op: str, pos: Position, keep: Any = None) -> pa.RecordBatch:
        if keep is not None:
            table = table.filter(keep)
        if table.num_rows:
            batch = table.combine_chunks().to_batches()[0]
        else:
            batch = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in table.schema], schema=table.schema)
        return with_meta(batch, op, encode_position(pos), utcnow())

    def _page(self, stream: Stream, records: list[Any], pos: Position, parent: Any = None) -> pa.RecordBatch:
        return self._emit(self._table(stream, records, parent), OP_READ, pos)

    def read_full(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        st = self._streams[stream.name]
        parent = self._parent(stream.name)
        live = position if position and position.get("mode") == "full" and not position.get("done") else None
        done = {"mode": "full", "done": True}
        if parent is not None:
            skip = int(live.get("parents", 0)) if live else 0
            presume = self._pager(self._streams[parent[0]]).resumable or \
                self._pager(self._streams[parent[0]]).cfg.type == "none"
            for k, value in enumerate(self._parent_values(*parent), start=1):
                if k <= skip:
                    continue
                child = self._pages(st, self._child_url(stream.name, value), self._params(st), self._pager(st).first())
                records = [r for page, _ in child for r in page]
                pos = {"mode": "full", "parents": k}
                yield ReadBatch(self._page(stream, records, pos, parent=value), pos, resumable=presume)
        else:
            pager = self._pager(st)
            state = live["page"] if live and pager.resumable and isinstance(live.get("page"), dict) else pager.first()
            last_in = live is not None and pager.resumable and "page" in live and live["page"] is None
            pages = () if last_in else self._pages(st, self._url(self._path(stream.name, st)), self._params(st), state)
            for records, nxt in pages:
                if records:  # an empty page moves nothing the next position does not
                    pos = {"mode": "full", "page": nxt}
                    yield ReadBatch(self._page(stream, records, pos), pos, resumable=pager.resumable)
        yield ReadBatch(self._page(stream, [], done), done, final=True)

    # ------------------------------------------------------------------ incremental

    def _incremental(self, stream: Stream, position: Position | None) -> Iterator[ReadBatch]:
        st = self._streams[stream.name]
        inc = st.incremental
        if inc is None:
            raise FatalError(f"stream {stream.name!r}: mode cursor needs `incremental:` on the stream")
        if self._parent(stream.name) is not None:
            yield from self._incremental_children(stream, position or {})
            return
        pos = position or {}
        since = pos.get("cursor", inc.initial)
        pager = self._pager(st)
        resuming = "page" in pos and pager.resumable and isinstance(pos.get("page"), dict)
        filt = pos.get("filter") if "filter" in pos else _minus(since, _lookback(st))
        high = pos.get("max", since)
        params = self._params(st)
        if inc.param and filt is not None:
            params[inc.param] = filt
        state = pos["page"] if resuming else pager.first()
        crashed_at = high  # the highest cursor durable when the read stopped (see the re-read below)
        while True:
            for records, nxt in self._pages(st, self._url(self._path(stream.name, st)), params, state):
                table = self._table(stream, records)
                high, keep = _cursor(table, stream.cursor, since if not inc.param else None, high)
                if nxt is not None:
                    after: Position = {"cursor": since, "filter": filt, "max": high, **({"page": nxt} if pager.resumable else {})}
                elif resuming:  # the end of a resumed read: the re-read below starts from here
                    after = {"cursor": crashed_at, "filter": _minus(crashed_at, _lookback(st)), "max": high}
                else:
                    after = {"cursor": high}
                yield ReadBatch(self._emit(table, OP_UPDATE, after, keep), after)
            if not resuming:
                return
            # A read resumed after a crash skipped its earlier pages, which may have changed while it
            # was down, with a new cursor that can be below the highest seen after them. Such a change
            # is newer than the crash, so newer than every cursor durable then: read once more from
            # there (a few pages; records seen twice are upserts by key).
            resuming, state = False, pager.first()
            since, filt = crashed_at, _minus(crashed_at, _lookback(st))
            params = self._params(st)
            if inc.param and filt is not None:
                params[inc.param] = filt

    def _incremental_children(self, stream: Stream, pos: Position) -> Iterator[ReadBatch]:
        st = self._streams[stream.name]
        inc = st.incremental
        assert inc is not None and stream.cursor is not None
        parent = self._parent(stream.name)
        assert parent is not None
        cursors: dict[str, Any] = dict(pos.get("cursors") or {})
        for value in list(self._parent_values(*parent)):
            since = cursors.get(str(value), inc.initial)
            filt = _minus(since, _lookback(st))
            params = self._params(st)
            if inc.param and filt is not None:
                params[inc.param] = filt
            high = since
            records: list[Any] = []
            for page, _ in self._pages(st, self._child_url(stream.name, value), params, self._pager(st).first()):
                records += page
            table = self._table(stream, records, parent=value)
            high, keep = _cursor(table, stream.cursor, since if not inc.param else None, since)
            if high is not None:
                cursors[str(value)] = high
            after = {"cursors": dict(cursors)}
            yield ReadBatch(self._emit(table, OP_UPDATE, after, keep), after)


def _cursor(table: pa.Table, column: str | None, floor: Any, high: Any) -> tuple[Any, Any]:
    """The highest cursor after ``table``'s rows, and a mask of the rows above ``floor`` (None:
    keep every row)."""
    if column is None or column not in table.column_names or not table.num_rows:
        return high, None
    col = table.column(column)
    top = _jsonable(pc.max(col).as_py())
    if top is not None and (high is None or _gt(top, high)):
        high = top
    if floor is None:
        return high, None
    return high, pc.fill_null(pc.greater(col, _scalar(floor, col.type)), False)


def _scalar(value: Any, t: pa.DataType) -> pa.Scalar:
    """A cursor from a position (JSON: ISO text for times) as a scalar of the column's type."""
    if isinstance(value, str) and pa.types.is_timestamp(t):
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if t.tz is None and when.tzinfo is not None:
            when = when.astimezone(UTC).replace(tzinfo=None)
        elif t.tz is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return pa.scalar(when, type=t)
    if isinstance(value, str) and pa.types.is_date(t):
        return pa.scalar(date.fromisoformat(value), type=t)
    if isinstance(value, str) and pa.types.is_decimal(t):
        return pa.scalar(Decimal(value), type=t)
    return pa.scalar(value).cast(t)


def _lookback(st: HttpStreamSettings) -> float | int | None:
    inc = st.incremental
    return parse_lookback(inc.lookback, temporal=True) if inc is not None and inc.lookback is not None else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if hasattr(v, "is_finite"):  # Decimal
        return str(v)
    return v


def _gt(a: Any, b: Any) -> bool:
    """``a > b`` for cursors: ISO times as instants (``Z`` and ``+00:00`` alike), else as they are."""
    if isinstance(a, str) and isinstance(b, str):
        try:
            return datetime.fromisoformat(a.replace("Z", "+00:00")) > datetime.fromisoformat(b.replace("Z", "+00:00"))
        except (ValueError, TypeError):
            return a > b
    try:
        return bool(a > b)
    except TypeError:
        return str(a) > str(b)


def _minus(cursor: Any, lookback: Any) -> Any:
    """``cursor`` less the look-back (seconds for a time cursor written as ISO 8601 text)."""
    if cursor is None or not lookback:
        return cursor
    if isinstance(cursor, (int, float)) and not isinstance(cursor, bool):
        return cursor - lookback
    text = str(cursor)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return cursor
    out = (when - timedelta(seconds=float(lookback))).isoformat()
    return out.replace("+00:00", "Z") if text.endswith("Z") else out
