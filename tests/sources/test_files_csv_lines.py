"""Property test of the CSV chunk reader: any values (quotes, delimiters, newlines inside
quoted values, empty lines between records), any chunk size: every row comes back once with
its values and the line it starts on, as Python's csv module writes and counts them."""

from __future__ import annotations

import csv
import io

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from replicant.sources.files.readers import csv_header, csv_pieces
from replicant.sources.files.settings import CsvOptions

_TEXT = st.text(alphabet=st.sampled_from(list('ab ,"\n\r;é')), min_size=1, max_size=12)
_ROWS = st.lists(st.tuples(st.integers(-10**6, 10**6), _TEXT, st.booleans()), min_size=0, max_size=40)


@settings(max_examples=150, deadline=None)
@given(rows=_ROWS, chunk=st.integers(1, 200), crlf=st.booleans())
def test_values_and_lines_survive_any_chunking(rows: list[tuple[int, str, bool]], chunk: int, crlf: bool) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(["id", "text"])
    starts = []
    for i, (n, text, blank) in enumerate(rows):
        if blank and i:
            out.write("\n")  # an empty line between records: skipped, but counted
        starts.append(out.getvalue().count("\n") + 1)
        writer.writerow([n, text])
    data = out.getvalue().encode()
    opts = CsvOptions()
    stream = io.BytesIO(data)
    layout = csv_header(stream, opts)
    stream.seek(layout.data_offset)
    pieces = list(csv_pieces(stream, layout, opts, {"id": pa.int64(), "text": pa.string()},
                             offset=layout.data_offset, line=layout.data_line, chunk_bytes=chunk))
    got = [(r["id"], r["text"], r["_line"]) for p in pieces for r in p.table.to_pylist()]
    assert not [b for p in pieces for b in p.bad]
    assert got == [(n, text, line) for (n, text, _), line in zip(rows, starts, strict=True)]
