"""Readers of one file, as *pieces*: a chunk of rows with their true line numbers, the bad
records found in it, and where it starts, so a read can resume inside a large file.

Every reader parses with Arrow in C++ (``pyarrow.csv``, ``pyarrow.json``, ``pyarrow.parquet``),
never row by row in Python, and yields :class:`Piece` objects:

* ``table``: the rows parsed (data columns, typed) plus ``_line`` (int64);
* ``bad``: the records that could not be read, each with line, raw text and reason;
* ``offset``/``line``: where the piece starts (a decompressed byte offset for CSV and JSON
  lines, a row group for Parquet) and how many lines come before it. Re-reading from there
  yields the same piece again, which is what a resume does (dropping the rows it had already
  emitted, by ``_line``).

CSV and JSON lines are read in chunks of ``chunk_bytes`` cut at a record boundary. Lines: the
chunk's newline positions and quote characters are found with numpy; a newline is a record
boundary when an even number of quote characters precede it in the chunk (a doubled quote
counts twice, so the parity holds; a quote preceded by the escape character is not counted).
So ``_line`` is the physical line on which a record *starts*, counting the header, skipped
lines, empty lines and the extra lines of quoted values with newlines. A chunk that parses
cleanly costs one parse; a chunk with a malformed record (wrong field count, bad quoting,
invalid UTF-8, a value that does not convert) is parsed again in halves until each bad record
is alone: it becomes a :class:`Bad`, the others are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from replicant.errors import FatalError
from replicant.sources.files.settings import CsvOptions

__all__ = ["Bad", "Piece", "csv_header", "csv_pieces", "json_pieces", "jsonl_pieces", "parquet_pieces"]

_HEADER_PROBE = 1 << 16
_LONGEST_RECORD = 64 << 20  #: a record longer than this (or 16 chunks) is taken for bad quoting
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Bad:
    """A record that could not be read."""

    line: int
    text: str
    reason: str


@dataclass
class Piece:
    table: pa.Table
    offset: int
    line: int
    bad: list[Bad] = field(default_factory=list)


@dataclass(frozen=True)
class CsvLayout:
    """Where a CSV file's data starts, and its column names."""

    names: list[str]
    data_offset: int
    data_line: int


# ------------------------------------------------------------------------------ records


def _records(arr: np.ndarray, cut: int, eof: bool, quote: int | None, escape: int | None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, ends, newlines)`` of the records in ``arr[:cut]`` (end exclusive, without the
    newline; a final record without a newline at EOF included) and every newline's position."""
    view = arr[:cut]
    nl = np.flatnonzero(view == 10)
    bounds = _bounds(view, nl, quote, escape)
    starts = np.concatenate(([0], bounds + 1))
    ends = np.concatenate((bounds, [cut]))
    if not eof or starts[-1] >= cut:  # nothing after the last newline
        starts, ends = starts[:-1], ends[:-1]
    return starts, ends, nl


def _bounds(view: np.ndarray, nl: np.ndarray, quote: int | None, escape: int | None) -> np.ndarray:
    if quote is None or not len(nl):
        return nl
    q = np.flatnonzero(view == quote)
    if escape is not None and len(q):
        q = q[~((q > 0) & (view[np.maximum(q - 1, 0)] == escape))]
    if not len(q):
        return nl
    return nl[(np.searchsorted(q, nl) & 1) == 0]


def _last_boundary(arr: np.ndarray, quote: int | None, escape: int | None) -> int | None:
    nl = np.flatnonzero(arr == 10)
    bounds = _bounds(arr, nl, quote, escape)
    return int(bounds[-1]) if len(bounds) else None


def _cut(buf: bytes, quote: int | None, escape: int | None) -> int | None:
    """The last record boundary of ``buf``: its last newline with an even number of quotes
    before it (``bytes.rfind``/``count`` in C; with an escape character, the numpy scan)."""
    if escape is not None:
        return _last_boundary(np.frombuffer(buf, np.uint8), quote, escape)
    end = len(buf)
    mark = bytes([quote]) if quote is not None else b""
    for _ in range(8):
        nl = buf.rfind(b"\n", 0, end)
        if nl < 0:
            return None
        if not mark or buf.count(mark, 0, nl) % 2 == 0:
            return nl
        end = nl
    return _last_boundary(np.frombuffer(buf, np.uint8), quote, escape)


def _nonempty(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of the records that are not empty (an empty line, or a lone ``\\r``)."""
    length = ends - starts
    cr = np.zeros(len(ends), dtype=bool)
    has = length > 0
    cr[has] = arr[ends[has] - 1] == 13
    return np.flatnonzero(length - cr > 0)


def _chunks(stream: Any, chunk_bytes: int, quote: int | None, escape: int | None) -> Iterator[tuple[bytes, bool]]:
    """``(chunk, eof)``: the stream cut after record boundaries, at least ``chunk_bytes`` each
    (a record longer than that makes its chunk longer)."""
    carry = b""
    while True:
        block = stream.read(chunk_bytes)
        eof = not block
        buf = carry + bytes(block) if carry else bytes(block)
        if not buf:
            return
        if eof:
            yield buf, True
            return
        cut = _cut(buf, quote, escape)
        if cut is None:
            if len(buf) > max(_LONGEST_RECORD, 16 * chunk_bytes):  # bounded memory, not the rest of the file
                raise ValueError(f"no record ends within {len(buf) >> 20} MB: a quoted value never closed (bad quoting)?")
            carry = buf
            continue
        carry = buf[cut + 1:]
        yield buf[:cut + 1], False


# ------------------------------------------------------------------------------ CSV


def _csv_options(opts: CsvOptions, names: list[str] | None, types: dict[str, pa.DataType], *, strict: bool,
                 invalid: list[Any] | None = None) -> tuple[Any, Any, Any]:
    read = pcsv.ReadOptions(column_names=names, autogenerate_column_names=names is None and not opts.header,
                            encoding=opts.encoding, use_threads=False, block_size=1 << 22)

    def handler(row: Any) -> str:
        assert invalid is not None
        invalid.append(row)
        return "skip"

    parse = pcsv.ParseOptions(delimiter=opts.delimiter, quote_char=opts.quote or False, double_quote=opts.double_quote,
                              escape_char=opts.escape or False, newlines_in_values=True,
                              invalid_row_handler=None if strict else handler)
    kw: dict[str, Any] = {}
    if opts.true_values is not None:
        kw["true_values"] = opts.true_values
    if opts.false_values is not None:
        kw["false_values"] = opts.false_values
    convert = pcsv.ConvertOptions(column_types={n: t for n, t in types.items() if names is None or n in names},
                                  null_values=opts.null_values, strings_can_be_null=True,
                                  quoted_strings_can_be_null=True, **kw)
    return read, parse, convert


def csv_header(stream: Any, opts: CsvOptions) -> CsvLayout:
    """Reads a CSV file's start: a UTF-8 byte-order mark, ``skip_rows`` lines, the header."""
    quote = ord(opts.quote) if opts.quote else None
    escape = ord(opts.escape) if opts.escape else None
    buf = b""
    while True:
        block = bytes(stream.read(_HEADER_PROBE))
        buf += block
        arr = np.frombuffer(buf, np.uint8)
        offset = 3 if buf.startswith(_BOM) else 0
        nl = np.flatnonzero(arr == 10)
        need = opts.skip_rows
        if len(nl) < need and block:
            continue
        start = offset if need == 0 else (int(nl[need - 1]) + 1 if len(nl) >= need else len(buf))
        if not opts.header and opts.column_names:
            return CsvLayout(list(opts.column_names), start, need)
        rest = arr[start:]
        end = _last_boundary_first(rest, quote, escape)
        if end is None and block:
            continue
        first = buf[start:start + end] if end is not None else buf[start:]
        if not first.strip():
            names = list(opts.column_names or [])
            return CsvLayout(names, len(buf), need)
        read, parse, _ = _csv_options(opts, None, {}, strict=True)
        if not opts.header:
            read = pcsv.ReadOptions(autogenerate_column_names=True, encoding=opts.encoding, use_threads=False)
        try:
            parsed = pcsv.read_csv(pa.BufferReader(first + b"\n"), read_options=read, parse_options=parse)
        except pa.ArrowInvalid as e:
            raise FatalError(f"cannot read the CSV header (line {need + 1}): {e}") from None
        names = list(opts.column_names or parsed.column_names)
        if not opts.header:
            return CsvLayout(names, start, need)
        lines_in_header = int(np.count_nonzero(np.frombuffer(first, np.uint8) == 10)) + 1
        return CsvLayout(names, start + len(first) + (1 if end is not None else 0), need + lines_in_header)


def _last_boundary_first(arr: np.ndarray, quote: int | None, escape: int | None) -> int | None:
    nl = np.flatnonzero(arr == 10)
    bounds = _bounds(arr, nl, quote, escape)
    return int(bounds[0]) if len(bounds) else None


def csv_pieces(stream: Any, layout: CsvLayout, opts: CsvOptions, types: dict[str, pa.DataType], *,
               offset: int, line: int, chunk_bytes: int) -> Iterator[Piece]:
    """The pieces of a CSV file from ``offset`` (at or after ``layout.data_offset``; the stream
    is positioned there) with ``line`` lines before it."""
    quote = ord(opts.quote) if opts.quote else None
    escape = ord(opts.escape) if opts.escape else None
    names = layout.names

    def parse(data: bytes, strict: bool, invalid: list[Any] | None = None) -> pa.Table:
        read, parse_opts, convert = _csv_options(opts, names, types, strict=strict, invalid=invalid)
        return pcsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse_opts, convert_options=convert)

    for chunk, eof in _chunks(stream, chunk_bytes, quote, escape):
        yield _piece(chunk, eof, offset, line, quote, escape, parse, opts.encoding)
        offset += len(chunk)
        line += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == 10))


def _piece(chunk: bytes, eof: bool, offset: int, line: int, quote: int | None, escape: int | None,
           parse: Callable[..., pa.Table], encoding: str) -> Piece:
    arr = np.frombuffer(chunk, np.uint8)
    starts, ends, nl = _records(arr, len(chunk), eof, quote, escape)
    keep = _nonempty(arr, starts, ends)
    starts, ends = starts[keep], ends[keep]
    lines = line + np.searchsorted(nl, starts) + 1
    unterminated: list[Bad] = []
    if eof and quote is not None and len(starts) and _odd_quotes(chunk, quote, escape):
        # a quote opened in the last record is never closed: Arrow would take the rest of the
        # file as one value; it is a malformed record instead
        first = int(starts[-1])
        unterminated.append(Bad(int(lines[-1]), chunk[first:].decode(encoding, errors="replace")[:2000],
                                "bad quoting: a quoted value is never closed"))
        chunk, starts, ends, lines = chunk[:first], starts[:-1], ends[:-1], lines[:-1]
    invalid: list[Any] = []
    try:
        table = parse(chunk, False, invalid) if len(starts) else None
        if table is not None and not invalid and table.num_rows == len(starts):
            return Piece(table.append_column("_line", pa.array(lines, pa.int64())), offset, line, unterminated)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    piece = _split(chunk, starts, ends, lines, parse, encoding, offset, line)
    piece.bad.extend(unterminated)
    return piece


def _odd_quotes(chunk: bytes, quote: int, escape: int | None) -> bool:
    if escape is None:
        return chunk.count(bytes([quote])) % 2 == 1
    arr = np.frombuffer(chunk, np.uint8)
    q = np.flatnonzero(arr == quote)
    q = q[~((q > 0) & (arr[np.maximum(q - 1, 0)] == escape))]
    return len(q) % 2 == 1


def _split(chunk: bytes, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray, parse: Callable[..., pa.Table],
           encoding: str, offset: int, line: int) -> Piece:
    """Parses the records in halves until every bad record is alone (see the module docstring)."""
    tables: list[pa.Table] = []
    bad: list[Bad] = []

    def visit(a: int, b: int) -> None:
        data = chunk[starts[a]:ends[b - 1]] + b"\n"
        try:
            t = parse(data, True)
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            if b - a == 1:
                text = chunk[starts[a]:ends[a]].rstrip(b"\r").decode(encoding, errors="replace")
                bad.append(Bad(int(lines[a]), text, _reason(e)))
                return
            mid = (a + b) // 2
            visit(a, mid)
            visit(mid, b)
            return
        if t.num_rows == b - a:
            tables.append(t.append_column("_line", pa.array(lines[a:b], pa.int64())))
        elif b - a == 1:
            tables.append(t.append_column("_line", pa.array(np.full(t.num_rows, lines[a]), pa.int64())))
        else:
            mid = (a + b) // 2
            visit(a, mid)
            visit(mid, b)

    if len(starts):
        visit(0, len(starts))
    return Piece(_concat(tables), offset, line, bad)


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.replace("Row #1: ", "").replace(" in row 0", "")[:500]


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({"_line": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="permissive")


# ------------------------------------------------------------------------------ JSON lines


def jsonl_pieces(stream: Any, schema: pa.Schema, *, offset: int, line: int, chunk_bytes: int) -> Iterator[Piece]:
    """The pieces of a JSON lines file (one object per line) from ``offset``; ``schema`` types
    the known columns, others are inferred."""

    def parse(data: bytes, strict: bool, invalid: Any = None) -> pa.Table:
        longest = len(data) if strict else max(1 << 20, 2 * _longest_line(data))
        return pjson.read_json(pa.BufferReader(data),
                               read_options=pjson.ReadOptions(use_threads=False, block_size=longest + 1),
                               parse_options=pjson.ParseOptions(explicit_schema=schema,
                                                                unexpected_field_behavior="infer"))

    for chunk, eof in _chunks(stream, chunk_bytes, None, None):
        yield _piece(chunk, eof, offset, line, None, None, parse, "utf-8")
        offset += len(chunk)
        line += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == 10))


def _longest_line(data: bytes) -> int:
    nl = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
    if not len(nl):
        return len(data)
    return int(max(np.diff(nl, prepend=-1).max(), len(data) - nl[-1]))


def json_pieces(stream: Any) -> Iterator[Piece]:
    """A JSON document (an array of objects, or one object) as one piece; ``_line`` is the
    object's place in the array (1-based). Read whole: use JSON lines for large files."""
    raw = bytes(stream.read())
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        yield Piece(_concat([]), 0, 0, [Bad(getattr(e, "lineno", 1), raw[:500].decode("utf-8", "replace"),
                                            f"not a JSON document: {e}")])
        return
    rows = doc if isinstance(doc, list) else [doc]
    good = [r for r in rows if isinstance(r, dict)]
    bad = [Bad(i + 1, json.dumps(r)[:2000], "not a JSON object") for i, r in enumerate(rows) if not isinstance(r, dict)]
    numbers = [i + 1 for i, r in enumerate(rows) if isinstance(r, dict)]
    try:
        table = pa.Table.from_pylist(good) if good else pa.table({})
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed value types in a column: each as JSON text
        table = pa.Table.from_pylist([{k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()}
                                      for r in good])
    yield Piece(table.append_column("_line", pa.array(numbers, pa.int64())), 0, 0, bad)


# ------------------------------------------------------------------------------ Parquet


def parquet_pieces(raw: Any, *, offset: int, line: int, batch_size: int) -> Iterator[Piece]:
    """A Parquet file from row group ``offset`` (``line`` rows before it), in batches of
    ``batch_size``; ``_line`` is the row's number in the file (1-based)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(raw)
    meta = pf.metadata
    if offset == 0:
        line = 0
    for rg in range(offset, meta.num_row_groups):
        start = line
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[rg]):
            n = batch.num_rows
            table = pa.Table.from_batches([batch])
            yield Piece(table.append_column("_line", pa.array(np.arange(start + 1, start + n + 1), pa.int64())), rg, line)
            start += n
        line += meta.row_group(rg).num_rows
