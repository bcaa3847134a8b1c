"""``Destination.redeliver`` (``replicant dead-letters retry``) for the non-transactional
destinations: the records arrive under names made from the retry id, never from log offsets
(no clash with the offset-named deliveries), and a repeat of the same retry arrives as the same
file or message, not a second one."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from replicant.config import DestinationConfig
from replicant.dead_letters import payload_table
from replicant.destinations.files import FilesDestination
from replicant.model import ConnectorContext, Stream

try:  # tests/ as a package
    from .test_nats_dest import _dest as _nats_dest
    from .test_nats_dest import _messages
except ImportError:
    from test_nats_dest import _dest as _nats_dest  # type: ignore[no-redef]
    from test_nats_dest import _messages  # type: ignore[no-redef]

STREAM = Stream(name="items", table=("items",), schema=pa.schema([("id", pa.int64()), ("name", pa.string())]), primary_key=("id",))
RECORD = {"op": "insert", "key": {"id": 7}, "data": {"id": 7, "name": "seven"}, "position": {"lsn": "0/7"},
          "ts": "2026-01-02T03:04:05.000006Z"}


def test_files_redeliver_writes_a_retry_file_beside_the_offset_files(tmp_path: Path) -> None:
    dest = FilesDestination(DestinationConfig(name="lake", type="files", path=str(tmp_path)), ConnectorContext("shop"))
    with dest:
        dest.prepare(STREAM)
        dest.write(STREAM, payload_table(STREAM, {"id": 1, "name": "one"}), last_offset=0)
        dest.redeliver(STREAM, payload_table(STREAM, RECORD), retry_id="12.1")
        dest.redeliver(STREAM, payload_table(STREAM, RECORD), retry_id="12.1")  # the same retry again
    names = sorted(p.name for p in (tmp_path / "items").rglob("*.parquet"))  # in date= partitions
    assert names == ["00000000000000000000-00000000000000000000.parquet", "retry-12.1.parquet"]
    rows = ds.dataset(str(tmp_path / "items"), format="parquet", partitioning="hive").to_table(columns=["id", "name"]).sort_by("id")
    assert rows.to_pylist() == [{"id": 1, "name": "one"}, {"id": 7, "name": "seven"}]
    manifest = json.loads((tmp_path / "items" / "_manifests" / "retry-12.1.json").read_text())
    assert manifest["retry"] == "12.1" and manifest["rows"] == 1 and "first_offset" not in manifest


def test_nats_redeliver_publishes_under_retry_message_ids(nats_url: str, unique_name: str) -> None:
    unique = unique_name.replace("-", "_")[-40:]
    dest = _nats_dest(nats_url, unique)
    with dest:
        dest.prepare(STREAM)
        dest.write(STREAM, payload_table(STREAM, {"id": 1, "name": "one"}), last_offset=0)
        dest.redeliver(STREAM, payload_table(STREAM, RECORD), retry_id="12.1")
        dest.redeliver(STREAM, payload_table(STREAM, RECORD), retry_id="12.1")  # de-duplicated by JetStream
        dest.redeliver(STREAM, payload_table(STREAM, RECORD), retry_id="12.2")  # a later attempt is a new message
    got = _messages(nats_url, f"T_{unique}")
    assert [m.msg_id for m in got] == ["shop:items:0", "shop:items:retry-12.1:0", "shop:items:retry-12.2:0"]
    assert got[1].body["data"] == {"id": 7, "name": "seven"} and got[1].body["op"] == "insert"
