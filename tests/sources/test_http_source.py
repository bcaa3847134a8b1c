"""The http source against a real API (:mod:`.http_api`): every pagination style and auth kind,
incremental reads, faults (429 + Retry-After, 500, timeouts, 4xx), rate limits, child streams,
JSON typing and schema evolution. Read through the source contract only."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from replicant.config import SourceConfig
from replicant.errors import ConfigError, ConnectionError, FatalError, RetriableError, SchemaDriftError
from replicant.model import ConnectorContext, ReadBatch, Stream
from replicant.sources.http import HttpSource
from replicant.sources.select import resolve_streams

from .http_api import CLIENT, SECRET, TOKEN, Api, items

#: The stream settings of each pagination style of the test API.
STYLES: dict[str, dict[str, Any]] = {
    "offset": {"path": "/offset/items", "records": "$.data[*]",
               "paginate": {"type": "offset", "page_size": 10, "total_path": "$.total"}},
    "page": {"path": "/page/items", "records": "$.results[*]",
             "paginate": {"type": "page", "page_size": 10, "size_param": "per_page", "stop_path": "!$.has_more"}},
    "cursor": {"path": "/cursor/items", "params": {"limit": 10}, "records": "$.items[*]",
               "paginate": {"type": "cursor", "cursor_path": "$.next_cursor"}},
    "link_header": {"path": "/link/items", "params": {"limit": 10}, "paginate": {"type": "link_header"}},
    "json_link": {"path": "/json_link/items", "params": {"limit": 10}, "records": "$.data",
                  "paginate": {"type": "json_link", "next_path": "$.links.next"}},
}

AUTHS: dict[str, dict[str, Any]] = {
    "bearer": {"type": "bearer", "token": TOKEN},
    "api_key_header": {"type": "api_key", "name": "X-API-Key", "value": TOKEN},
    "api_key_query": {"type": "api_key", "name": "api_key", "value": TOKEN, "in": "query"},
    "api_key_cookie": {"type": "api_key", "name": "session", "value": TOKEN, "in": "cookie"},
    "basic": {"type": "basic", "username": "user", "password": TOKEN},
    "oauth2": {"type": "oauth2_client_credentials", "token_url": "/oauth/token", "client_id": CLIENT,
               "client_secret": SECRET},
}


class FakeTime:
    """A clock that moves only when slept on; the sleeps are kept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


def make(api: Api, streams: list[dict[str, Any]], time: FakeTime | None = None, **kw: Any) -> tuple[HttpSource, list[Stream]]:
    cfg = SourceConfig.model_validate({"type": "http", "base_url": api.url, "streams": streams, **kw})
    t = time or FakeTime()
    src = HttpSource(cfg, ConnectorContext("http-test"), clock=t.clock, sleep=t.sleep)
    try:
        return src, resolve_streams(cfg, src.discover())
    except BaseException:
        src.close()
        raise


def ids(batches: list[ReadBatch]) -> list[int]:
    return sorted(i for b in batches for i in b.data.column("id").to_pylist())


@pytest.mark.parametrize("style", list(STYLES))
def test_each_pagination_reads_every_record_once(api: Api, style: str) -> None:
    api.put("items", items(47))
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], **STYLES[style]}])
    with src:
        batches = list(src.read(s, None))
    assert ids(batches) == list(range(1, 48))
    assert batches[-1].final and batches[-1].data.num_rows == 0
    assert all(b.data.schema == batches[0].data.schema for b in batches)
    assert api.served["items"] == 47 + 10  # every record once, plus discovery's first page


@pytest.mark.parametrize("style", ["cursor", "link_header", "json_link"])
def test_a_full_read_resumes_at_the_page_it_stopped_on(api: Api, style: str) -> None:
    api.put("items", items(35))
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], **STYLES[style]}])
    with src:
        it = src.read(s, None)
        head = [next(it), next(it)]
        it.close()
        assert head[-1].resumable
        served = api.served["items"]
        tail = list(src.read(s, head[-1].position))
    assert ids(head + tail) == list(range(1, 36))
    assert api.served["items"] - served == 15  # only the pages after the durable one


def test_offset_pages_cannot_resume_and_say_so(api: Api) -> None:
    api.put("items", items(25))
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], **STYLES["offset"]}])
    with src:
        first = next(iter(src.read(s, None)))
    assert not first.resumable  # the engine restarts the snapshot


@pytest.mark.parametrize("kind", list(AUTHS))
def test_each_auth_kind(api: Api, kind: str) -> None:
    api.auth = kind
    api.put("items", items(12))
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], **STYLES["cursor"]}], auth=AUTHS[kind])
    with src:
        assert ids(list(src.read(s, None))) == list(range(1, 13))
    wrong = {**AUTHS[kind]}
    for field in ("token", "value", "password", "client_secret"):
        if field in wrong:
            wrong[field] = "wrong-" + TOKEN
    with pytest.raises(ConnectionError) as e:
        make(api, [{"name": "items", **STYLES["cursor"]}], auth=wrong)
    text = str(e.value)
    assert "401" in text and TOKEN not in text and SECRET not in text
    assert ("/oauth/token" if kind == "oauth2" else "/cursor/items") in text


def test_oauth2_token_is_cached_refreshed_before_expiry_and_after_a_401(api: Api) -> None:
    api.auth = "oauth2"
    api.put("items", items(30))
    t = FakeTime()
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], **STYLES["cursor"]}], time=t,
                     auth={**AUTHS["oauth2"], "refresh_before": 10})
    with src:
        list(src.read(s, None))
        assert api.tokens == ["at-1"]  # four pages and discovery: one token
        t.now += 3600 - 5  # within refresh_before of expiry
        list(src.read(s, None))
        assert api.tokens == ["at-1", "at-2"]
        api._issued["at-2"] = 0  # revoked at the server: a 401, then a new token
        assert ids(list(src.read(s, None))) == list(range(1, 31))
        assert api.tokens == ["at-1", "at-2", "at-3"]


def test_incremental_reads_only_new_records_and_keeps_the_highest_cursor(api: Api) -> None:
    api.put("items", items(20, updated="2024-01-01T00:00:00Z"))
    stream = {"name": "items", "primary_key": ["id"], **STYLES["cursor"],
              "incremental": {"cursor_path": "updated_at", "param": "since", "initial": "2023-01-01T00:00:00Z"}}
    src, (s,) = make(api, [stream])
    assert s.mode == "cursor" and s.cursor == "updated_at"
    with src:
        first = list(src.read(s, None))
        assert ids(first) == list(range(1, 21)) and first[-1].position == {"cursor": "2024-01-01T00:00:00Z"}
        api.put("items", items(3, start=21, updated="2024-03-01T00:00:00Z"))
        api.put("items", items(1, start=5, updated="2024-02-01T00:00:00Z"))  # an update
        served = api.served["items"]
        second = list(src.read(s, first[-1].position))
        assert ids(second) == [5, 21, 22, 23]
        assert api.served["items"] - served == 4  # only the new and changed ones were asked for
        assert second[-1].position == {"cursor": "2024-03-01T00:00:00Z"}
        assert f"since={'2024-01-01T00:00:00Z'.replace(':', '%3A')}" in api.log[-1]
        assert list(src.read(s, second[-1].position))[-1].position == {"cursor": "2024-03-01T00:00:00Z"}


def test_incremental_lookback_and_a_client_side_filter(api: Api) -> None:
    api.put("items", items(5, updated="2024-01-01T00:00:00Z") + items(5, start=6, updated="2024-01-01T00:10:00Z"))
    look = {"name": "items", "primary_key": ["id"], **STYLES["cursor"],
            "incremental": {"cursor_path": "updated_at", "param": "since", "lookback": "5m"}}
    src, (s,) = make(api, [look])
    with src:
        got = list(src.read(s, {"cursor": "2024-01-01T00:10:00Z"}))
    assert "since=2024-01-01T00%3A05%3A00Z" in api.log[-1] and ids(got) == [6, 7, 8, 9, 10]
    no_param = {"name": "items", "primary_key": ["id"], **STYLES["link_header"], "incremental": {"cursor_path": "updated_at"}}
    src, (s,) = make(api, [no_param])
    with src:
        got = list(src.read(s, {"cursor": "2024-01-01T00:00:00Z"}))
    assert ids(got) == [6, 7, 8, 9, 10]  # read in full, the older ones dropped here


def test_incremental_resumes_mid_pagination_with_the_same_filter(api: Api) -> None:
    api.put("items", items(30, updated="2024-01-01T00:00:00Z"))
    stream = {"name": "items", "primary_key": ["id"], **STYLES["cursor"],
              "incremental": {"cursor_path": "updated_at", "param": "since", "initial": "2023-01-01T00:00:00Z"}}
    src, (s,) = make(api, [stream])
    with src:
        it = src.read(s, None)
        head = next(it)
        it.close()
        assert head.position["cursor"] == "2023-01-01T00:00:00Z" and "page" in head.position
        tail = list(src.read(s, head.position))
    assert ids([head, *tail]) == list(range(1, 31)) and tail[-1].position == {"cursor": "2024-01-01T00:00:00Z"}


def test_a_resumed_read_reads_again_what_changed_on_its_earlier_pages(api: Api) -> None:
    """A read stopped after its first page, then resumed once records on that page changed: the
    resumed read ends with a read of what is newer than the cursor durable at the stop, so the
    change arrives in the same run (the highest cursor seen after it would otherwise hide it)."""
    api.put("items", items(30, updated="2024-01-01T00:00:00Z"))
    stream = {"name": "items", "primary_key": ["id"], **STYLES["cursor"],
              "incremental": {"cursor_path": "updated_at", "param": "since", "initial": "2023-01-01T00:00:00Z"}}
    src, (s,) = make(api, [stream])
    with src:
        it = src.read(s, None)
        head = next(it)
        it.close()
        first_page = ids([head])
        api.put("items", [{**items(1, start=first_page[0])[0], "name": "changed", "updated_at": "2024-02-01T00:00:00Z"},
                          *items(5, start=31, updated="2024-03-01T00:00:00Z")])  # a later page's cursor is higher
        tail = list(src.read(s, head.position))
    rows = [r for b in tail for r in b.data.to_pylist()]
    assert [r["name"] for r in rows if r["id"] == first_page[0]] == ["changed"]
    assert sorted({r["id"] for r in rows} | set(first_page)) == list(range(1, 36))
    assert tail[-1].position == {"cursor": "2024-03-01T00:00:00Z"}


def test_429_with_retry_after_500s_and_timeouts_are_retried(api: Api) -> None:
    api.put("items", items(30))
    api.slow = 1.0
    t = FakeTime()
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], **STYLES["cursor"]}], time=t, timeout=0.3)
    api.faults += [("/cursor", "429"), ("/cursor", "500"), ("/cursor", "timeout"), ("/cursor", "408")]
    with src:
        assert ids(list(src.read(s, None))) == list(range(1, 31))
    assert t.sleeps[0] == 1.0  # Retry-After
    assert t.sleeps[1:] == [1.0, 2.0, 4.0]  # back-off: doubling from 0.5 s at the 2nd, 3rd, 4th retry in a row


def test_retries_are_bounded_and_name_the_url_and_status(api: Api) -> None:
    api.put("items", items(3))
    src, (s,) = make(api, [{"name": "items", **STYLES["cursor"]}], max_retries=2)
    api.faults += [("/cursor", "500")] * 3
    with src, pytest.raises(RetriableError) as e:
        list(src.read(s, None))
    assert "/cursor/items" in str(e.value) and "500" in str(e.value) and "3 attempt" in str(e.value)


def test_a_4xx_is_not_retried_and_the_error_names_url_and_status_without_the_key(api: Api) -> None:
    api.auth = "api_key_query"
    api.put("items", items(3))
    src, (s,) = make(api, [{"name": "items", **STYLES["cursor"]}], auth=AUTHS["api_key_query"])
    before = len(api.log)
    api.faults.append(("/cursor", "404"))
    with src, pytest.raises(FatalError) as e:
        list(src.read(s, None))
    assert len(api.log) - before == 1  # not retried
    text = str(e.value)
    assert "404" in text and "/cursor/items" in text and "api_key=***" in text and TOKEN not in text


def test_request_budget_and_rate_limit_headers_pace_requests(api: Api) -> None:
    api.put("items", items(50))
    t = FakeTime()
    src, (s,) = make(api, [{"name": "items", **STYLES["cursor"]}], time=t, rate_limit={"requests": 2, "per": "1s"})
    with src:
        list(src.read(s, None))  # discovery + 5 pages = 6 requests, 2 per second
    assert sum(t.sleeps) == pytest.approx(2.0)
    api.limit_reset = 3
    t2 = FakeTime()
    src, (s,) = make(api, [{"name": "items", **STYLES["cursor"]}], time=t2)
    with src:
        list(src.read(s, None))
    assert t2.sleeps == [3.0] * 5  # each answer said: nothing left for 3 s


def test_child_streams_read_once_per_parent_with_their_own_positions(api: Api) -> None:
    api.put("issues", [{"id": n, "number": n, "title": f"issue {n}", "updated_at": "2024-01-01T00:00:00Z"} for n in (1, 2, 3)])
    api.put("comments", [{"id": i, "issue": 1 + i % 3, "body": f"c{i}", "updated_at": "2024-01-01T00:00:00Z"}
                         for i in range(1, 10)])
    streams = [{"name": "issues", "path": "/issues", "primary_key": ["id"]},
               {"name": "comments", "path": "/issues/{issues.number}/comments", "primary_key": ["id"],
                "incremental": {"cursor_path": "updated_at", "param": "since"}}]
    src, (issues, comments) = make(api, streams)
    with src:
        first = list(src.read(comments, None))
        got = {r["id"]: r["issues_number"] for b in first for r in b.data.to_pylist()}
        assert got == {i: str(1 + i % 3) for i in range(1, 10)}
        assert first[-1].position == {"cursors": {"1": "2024-01-01T00:00:00Z", "2": "2024-01-01T00:00:00Z",
                                                  "3": "2024-01-01T00:00:00Z"}}
        api.put("comments", [{"id": 10, "issue": 2, "body": "new", "updated_at": "2024-05-01T00:00:00Z"}])
        served = api.served["comments"]
        second = list(src.read(comments, first[-1].position))
        assert ids(second) == [10] and api.served["comments"] - served == 1
        assert second[-1].position["cursors"]["2"] == "2024-05-01T00:00:00Z"
        assert second[-1].position["cursors"]["1"] == "2024-01-01T00:00:00Z"
        full = list(src.read(issues, None))
        assert ids(full) == [1, 2, 3]


def test_json_typing_nested_as_json_text_and_declared_timestamp_format(api: Api) -> None:
    api.put("items", [{"id": 1, "when": "06/12/2026 07:08", "meta": {"a": [1, 2]}, "tags": ["x"], "price": "12.50"}])
    stream = {"name": "items", "path": "/link/items", "nested": "json", "timestamp_format": "%d/%m/%Y %H:%M",
              "schema": {"when": "timestamp", "price": "decimal(10,2)"}}
    src, (s,) = make(api, [stream])
    with src:
        (b, _) = list(src.read(s, None))
    row = b.data.to_pylist()[0]
    assert s.schema.field("when").type == pa.timestamp("us") and str(row["when"]) == "2026-12-06 07:08:00"
    assert row["meta"] == '{"a":[1,2]}' and row["tags"] == '["x"]' and str(row["price"]) == "12.50"
    src, (s,) = make(api, [{"name": "items", "path": "/link/items"}])
    src.close()
    assert pa.types.is_struct(s.schema.field("meta").type) and pa.types.is_list(s.schema.field("tags").type)


@pytest.mark.parametrize("rule", ["add", "rescue", "fail"])
def test_a_new_field_follows_on_new_columns(api: Api, rule: str) -> None:
    api.put("items", items(10))
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], "on_new_columns": rule, **STYLES["cursor"]}])
    api.put("items", [{**items(1, start=11)[0], "extra": 7}])
    with src:
        if rule == "fail":
            with pytest.raises(SchemaDriftError, match="extra"):
                list(src.read(s, None))
            return
        batches = list(src.read(s, None))
    last = next(r for b in batches for r in b.data.to_pylist() if r["id"] == 11)
    if rule == "add":
        assert last["extra"] == 7 and "extra" in batches[-1].data.schema.names
    else:
        assert last["_rescued"] == '{"extra":7}' and "extra" not in batches[-1].data.schema.names


def test_config_problems_name_their_key() -> None:
    cfg = SourceConfig.model_validate({"type": "http", "base_url": "http://x", "streams": [
        {"name": "a", "paginat": {"type": "offset"}},
        {"name": "b", "paginate": {"type": "cursor"}},
        {"name": "d", "schema": {"x": "datetime"}},
        {"name": "c", "path": "/a/{nope.id}/c"}]})
    with pytest.raises(ConfigError) as e:
        HttpSource(cfg, ConnectorContext("t"))
    keys = [k for k, _ in e.value.problems]
    assert "source.streams[0].paginat" in keys and "source.streams[1].paginate" in keys
    assert "source.streams[2].schema.x" in keys and "source.streams[3].path" in keys


def test_a_pipeline_file_with_a_typo_in_a_stream_key_fails_to_load_naming_it(tmp_path) -> None:
    from replicant.config import load

    path = tmp_path / "p.yml"
    path.write_text("pipeline: p\nsource:\n  type: http\n  base_url: http://x\n  streams:\n"
                    "    - {name: a, path: /a, paginat: {type: offset}}\n"
                    "destinations: [{name: wh, type: duckdb, path: wh.duckdb}]\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert ("source.streams[0].paginat", "unknown key (did you mean 'paginate'?)") in e.value.problems


def test_a_full_child_stream_resumes_after_the_last_durable_parent(api: Api) -> None:
    api.put("issues", [{"id": n, "number": n} for n in (1, 2, 3, 4)])
    api.put("comments", [{"id": i, "issue": 1 + i % 4, "body": f"c{i}"} for i in range(1, 13)])
    src, (_, comments) = make(api, [{"name": "issues", "path": "/issues", "primary_key": ["id"]},
                                    {"name": "comments", "path": "/issues/{issues.number}/comments", "primary_key": ["id"]}])
    with src:
        it = src.read(comments, None)
        head = [next(it), next(it)]
        it.close()
        assert head[-1].resumable and head[-1].position == {"mode": "full", "parents": 2}
        served = api.served["comments"]
        tail = list(src.read(comments, head[-1].position))
    assert ids(head + tail) == list(range(1, 13)) and api.served["comments"] - served == 6


def test_an_api_key_the_server_copies_into_its_next_links_never_reaches_a_position(api: Api) -> None:
    api.auth = "api_key_query"
    api.put("items", items(25))
    src, (s,) = make(api, [{"name": "items", "primary_key": ["id"], **STYLES["link_header"]}],
                     auth=AUTHS["api_key_query"])
    with src:
        batches = list(src.read(s, None))
        assert ids(batches) == list(range(1, 26))
        assert "api_key=" in api.log[-1]  # the server's link carried it; the auth sent it again
        for b in batches:
            assert TOKEN not in str(b.position) and TOKEN not in "".join(b.data.column("_pos").to_pylist())
        assert ids(list(src.read(s, batches[0].position))) == list(range(11, 26))


def test_sources_of_one_api_share_its_request_budget(api: Api) -> None:
    api.put("items", items(30))
    t = FakeTime()
    stream = [{"name": "items", **STYLES["cursor"]}]
    a, (sa,) = make(api, stream, time=t, rate_limit={"requests": 4, "per": "1s"})
    b, (sb,) = make(api, stream, time=t, rate_limit={"requests": 4, "per": "1s"})
    with a, b:
        list(a.read(sa, None))
        list(b.read(sb, None))
    # 2 × (discovery + 3 pages) = 8 requests at 4 per second: two windows, one wait of 1 s (each
    # source alone, with 4 requests, would never wait)
    assert t.sleeps == [1.0]


def test_the_httpx_request_log_never_shows_the_api_key(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    api.auth = "api_key_query"
    api.put("items", items(5))
    with caplog.at_level(logging.INFO, logger="httpx"):
        src, (s,) = make(api, [{"name": "items", **STYLES["cursor"]}], auth=AUTHS["api_key_query"])
        with src:
            list(src.read(s, None))
    logged = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert logged and all("api_key=***" in m and TOKEN not in m for m in logged)


def test_a_validated_config_validates_again_unchanged() -> None:
    raw = {"type": "http", "base_url": "http://x", "streams": [
        {"name": "a", "path": "/a", "incremental": {"cursor_path": "updated_at"}, "primary_key": ["id"]}]}
    cfg = SourceConfig.model_validate(raw)
    again = SourceConfig.model_validate(cfg.model_dump(by_alias=True))
    assert again.streams == cfg.streams and cfg.streams[0].options["path"] == "/a"
    assert (cfg.streams[0].mode, cfg.streams[0].cursor) == ("cursor", "updated_at")


def test_a_value_that_cannot_be_typed_sends_its_record_to_the_dead_letter_store(api: Api) -> None:
    from replicant.model import DeadLetter

    api.put("items", [{"id": i, "amount": "oops" if i == 3 else str(i), "when": f"2024-01-0{i}"}
                      for i in range(1, 6)])
    letters: list[DeadLetter] = []
    stream = {"name": "items", "path": "/link/items", "primary_key": ["id"],
              "schema": {"amount": "decimal(10,2)", "when": "date"}}
    cfg = SourceConfig.model_validate({"type": "http", "base_url": api.url, "streams": [stream]})
    src = HttpSource(cfg, ConnectorContext("t", dead_letter=lambda s, rs: letters.extend(rs)))
    with src:
        (s,) = resolve_streams(cfg, src.discover())
        assert ids(list(src.read(s, None))) == [1, 2, 4, 5]
    [letter] = letters
    assert letter.payload == {"id": 3, "amount": "oops", "when": "2024-01-03"}
    assert "amount" in letter.reason and "/link/items" in letter.origin and letter.origin.endswith("record 2")
    for context in (ConnectorContext("t"), ConnectorContext("t", dead_letter=lambda s, rs: None)):
        fail = {**stream, "on_bad_record": "fail"} if context.dead_letter else stream
        cfg = SourceConfig.model_validate({"type": "http", "base_url": api.url, "streams": [fail]})
        src = HttpSource(cfg, context)
        with src:
            (s,) = resolve_streams(cfg, src.discover())
            with pytest.raises(FatalError, match="amount"):
                list(src.read(s, None))


def test_a_typed_time_cursor_filters_on_the_client_and_keeps_its_highest_value(api: Api) -> None:
    api.put("items", [{"id": i, "at": f"2024-01-0{i}T10:00:00Z"} for i in range(1, 6)])
    stream = {"name": "items", "path": "/link/items", "primary_key": ["id"], "schema": {"at": "timestamptz"},
              "incremental": {"cursor_path": "at"}}
    src, (s,) = make(api, [stream])
    with src:
        got = list(src.read(s, {"cursor": "2024-01-03T10:00:00+00:00"}))
    assert ids(got) == [4, 5] and got[-1].position == {"cursor": "2024-01-05T10:00:00+00:00"}


def test_without_a_sink_dead_letters_go_to_the_state_store_the_context_names(api: Api, tmp_path) -> None:
    import dataclasses

    from replicant.state.store import StateStore

    if "state_url" not in {f.name for f in dataclasses.fields(ConnectorContext)}:
        pytest.skip("ConnectorContext has no state_url on this branch (the files source's merge adds it)")
    api.put("items", [{"id": i, "amount": "oops" if i == 2 else str(i)} for i in (1, 2, 3)])
    url = f"sqlite:///{tmp_path / 'state.db'}"
    cfg = SourceConfig.model_validate({"type": "http", "base_url": api.url, "streams": [
        {"name": "items", "path": "/link/items", "primary_key": ["id"], "schema": {"amount": "decimal(10,2)"}}]})
    context: dict[str, Any] = {"pipeline": "p", "state_url": url}  # a field of the merged ConnectorContext
    src = HttpSource(cfg, ConnectorContext(**context))
    with src:
        (s,) = resolve_streams(cfg, src.discover())
        assert ids(list(src.read(s, None))) == [1, 3]
    with StateStore(url) as st:
        [letter] = st.dead_letters("p")
    assert letter["payload"] == {"id": 2, "amount": "oops"} and "/link/items" in letter["origin"]
