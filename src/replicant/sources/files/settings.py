"""The keys of a ``type: files`` source and of each of its streams.

::

    source:
      type: files
      url: ./incoming                      # a folder (relative to the pipeline file) or s3://bucket/prefix
      storage_options: {key: "${env:AWS_KEY}", secret: "${env:AWS_SECRET}"}   # fsspec's, secrets by reference
      after_load: keep                     # keep | delete | {move: done/}
      streams:
        - name: orders
          glob: "orders/*.csv.gz"
          format: csv                      # csv | jsonl | json | parquet (default: from the extension)
          primary_key: [order_id]          # none: the key is (_file, _line)
          csv: {delimiter: ";", encoding: cp1252, null_values: ["", "NULL"]}
          schema: {amount: "decimal(12,2)", day: date}
          on_new_columns: add              # add | rescue | fail
          on_bad_record: dead_letter       # dead_letter | fail

A files stream's own keys (``glob``, ``format``, ``csv``…) are gathered under the stream's
``options`` by :func:`file_stream_entry` (:mod:`replicant.sources.stream_entries`), so the common
stream keys (``mode``, ``primary_key``, ``include``…) keep their one model. ``name`` becomes the
stream's ``table``; ``mode`` defaults to ``incremental``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CsvOptions", "FileStreamSettings", "FilesSettings", "file_stream_entry"]

Format = Literal["csv", "jsonl", "json", "parquet"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Strict):
    """CSV dialect and conversions, named the way users know them."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator.")
    quote: str | None = Field('"', description="Quote character; null: no quoting.")
    escape: str | None = Field(None, description="Escape character inside quoted values (e.g. `\\`); default: none "
                               "(a quote is escaped by doubling it).")
    double_quote: bool = Field(True, description="A doubled quote inside a quoted value is one quote.")
    encoding: str = Field("utf-8", description="Text encoding: utf-8, latin1, cp1252… (ASCII-compatible ones; a "
                          "UTF-8 byte-order mark at the start is skipped).")
    header: bool = Field(True, description="The first line (after skip_rows) names the columns.")
    column_names: list[str] | None = Field(None, description="Column names, for a file without a header (or to "
                                           "rename a header's).")
    null_values: list[str] = Field(default_factory=lambda: [""], description="Values read as null.")
    true_values: list[str] | None = Field(None, description="Values read as true (default: true, True, TRUE, 1).")
    false_values: list[str] | None = Field(None, description="Values read as false (default: false, False, FALSE, 0).")
    skip_rows: int = Field(0, ge=0, description="Lines skipped at the start of each file, before the header.")

    @field_validator("quote", "escape")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and len(v) != 1:
            raise ValueError("must be one character")
        return v


AfterLoad = Literal["keep", "delete"] | dict[Literal["move"], str]


class FileStreamSettings(_Strict):
    """One files stream's own keys (besides the common ``mode``, ``primary_key``…)."""

    glob: str = Field(description="Files of this stream, relative to the source url (`*.csv`, `in/**/*.jsonl.gz`).")
    format: Format | None = Field(None, description="csv | jsonl | json | parquet; default: from the extension.")
    compression: Literal["infer", "gzip", "zstd", "none"] = Field(
        "infer", description="infer (from .gz/.zst), gzip, zstd or none.")
    csv: CsvOptions = Field(default_factory=lambda: CsvOptions.model_validate({}), description="CSV options.")
    schema_hints: dict[str, str] = Field(default_factory=dict, alias="schema",
                                         description="Column types that override inference: int64, double, "
                                         "decimal(12,2), string, bool, date, timestamp, timestamptz.")
    on_new_columns: Literal["add", "rescue", "fail"] = Field(
        "add", description="A column not in the stream's schema: add it, keep its values in `_rescued` (JSON), or fail.")
    on_bad_record: Literal["dead_letter", "fail"] = Field(
        "dead_letter", description="A malformed line or a value that does not convert: dead-letter it, or fail.")
    after_load: AfterLoad | None = Field(None, description="keep | delete | {move: PREFIX}; default: the source's.")
    sample_bytes: int = Field(1 << 20, gt=0, description="Bytes of the first file read to infer the schema.")
    chunk_bytes: int = Field(2 << 20, gt=0, description="Bytes parsed at a time (one resumable chunk).")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FilesSettings(_Strict):
    """The keys of a ``type: files`` source."""

    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (S3 key, secret, "
                                            "endpoint_url…); secrets by reference (`${env:NAME}`).")
    after_load: AfterLoad = Field("keep", description="What to do with a file once its rows are durable in the "
                                  "staging log: keep, delete, or {move: PREFIX} (relative to the url).")


def file_stream_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A raw ``streams:`` entry in the common shape (:mod:`replicant.sources.stream_entries`):
    ``name`` is the stream (``table``), ``mode`` defaults to ``incremental``, the files keys go
    under ``options`` (validated by :class:`FileStreamSettings` with their key paths)."""
    from replicant.sources.stream_entries import options_entry

    return options_entry(entry, mode="incremental")
