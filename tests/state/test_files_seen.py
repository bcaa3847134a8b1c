"""The files-seen record (:mod:`replicant.state.files_seen`): statuses moved by the staging
log's last position, per tenant, unbounded, and the source's dead letters stored once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from replicant.model import DeadLetter
from replicant.state import StateStore

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def _start(st: StateStore, path: str, tenant: str | None = None) -> int:
    return st.start_file("p", "s", path, size=10, etag=f"e-{path}", modified_at=T0, tenant=tenant)


def test_statuses_follow_the_durable_position(tmp_path: Path) -> None:
    with StateStore(f"sqlite:///{tmp_path / 's.db'}") as st:
        seqs = [_start(st, f"{i}.csv") for i in range(1, 5)]
        assert seqs == [1, 2, 3, 4]
        for i in (1, 2, 3):
            st.finish_file("p", "s", f"{i}.csv", rows=5, bad_records=1 if i == 2 else 0, last_line=6,
                           first_error="bad" if i == 2 else None, first_error_line=3 if i == 2 else None)
        # the log's last position: file seq 2 finished; 3 was read but never made durable, 4 in flight
        assert st.confirm_files("p", "s", seq=2, done=True) == ["1.csv", "2.csv"]
        status = {r["path"]: r["status"] for r in st.files_seen("p", stream="s")}
        assert status == {"1.csv": "loaded", "2.csv": "loaded", "3.csv": "pending", "4.csv": "pending"}
        assert st.confirm_files("p", "s", seq=2, done=True) == [], "idempotent"
        (two,) = st.files_seen("p", status="loaded", stream="s")[1:]
        assert (two["bad_records"], two["first_error_line"], two["first_error"], two["loads"]) == (1, 3, "bad", 1)
        # a changed version keeps the highest line it ever had
        _start(st, "1.csv")
        st.finish_file("p", "s", "1.csv", rows=1, bad_records=0, last_line=2)
        assert st.file_records("p", "s")["1.csv"]["last_line"] == 6


def test_the_file_being_read_stays_reading_until_done(tmp_path: Path) -> None:
    with StateStore(f"sqlite:///{tmp_path / 's.db'}") as st:
        seq = _start(st, "a.csv")
        assert st.confirm_files("p", "s", seq=seq, done=False) == []
        assert st.file_records("p", "s")["a.csv"]["status"] == "reading"


def test_tenants_are_apart_and_records_unbounded(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from replicant.state.schema import files_seen

    with StateStore(f"sqlite:///{tmp_path / 's.db'}") as st:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
        with engine.begin() as conn:  # no 10,000-file cap: 12,000 records, inserted in bulk
            conn.execute(sa.insert(files_seen), [{"pipeline": "p", "tenant": "acme", "stream": "s", "path": f"f{i}.csv",
                                                  "status": "loaded", "seq": i, "first_seen_at": T0}
                                                 for i in range(12_000)])
        engine.dispose()
        _start(st, "x.csv")
        assert len(st.files_seen("p", tenant="acme")) == 12_000
        assert [r["path"] for r in st.files_seen("p")] == ["x.csv"]


def test_source_dead_letters_are_stored_once_on_a_resumed_read(tmp_path: Path) -> None:
    letter = DeadLetter(reason="bad", payload={"file": "a.csv", "line": 3}, origin="a.csv:3")
    with StateStore(f"sqlite:///{tmp_path / 's.db'}") as st:
        assert st.add_read_dead_letters("p", "s", [letter]) == 1
        assert st.add_read_dead_letters("p", "s", [letter], skip_known=True) == 0
        (stored,) = st.dead_letters("p")
        assert stored["origin"] == "a.csv:3" and stored["destination"] is None
