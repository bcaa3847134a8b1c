"""Transform lists in the pipeline file: every problem at once, each at its key path, and the
ones only a schema reveals reported by the planner before anything is read or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicant.config import parse
from replicant.engine import Engine
from replicant.errors import ConfigError

from ._pipelines import make_shop, pipeline

BASE = {"pipeline": "p", "source": {"type": "sqlite", "url": "sqlite:///a.db", "streams": ["customers"]},
        "destinations": [{"name": "d"}, {"name": "push", "type": "duckdb", "path": "x.duckdb"}]}


def _problems(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse(data)
    return dict(e.value.problems)


def test_every_transform_problem_at_once_with_its_key_path() -> None:
    problems = _problems({
        **BASE,
        "source": {"type": "sqlite", "url": "sqlite:///a.db",
                   "streams": [{"table": "customers", "transforms": [{"aggregate": {"by": ["id"]}}, {"mask": {"email": "hush"}}]}]},
        "transforms": [{"rename": {"a": "b"}}, {"derive": {"total_cents": "total * (100"}}, {"renam": {"a": "b"}},
                       {"encrypt": {"phone": {"deterministic": True}}}, {"drop": ["x"], "select": ["y"]}],
        "destinations": [{"name": "d", "transforms": [{"python": "no_such_module_xyz:fn"}, {"sql": "DELETE FROM batch"},
                                                      {"join": {"with": "accounts"}, "as": "enriched"}, {"drop": ["x"], "as": "y"}]}],
        "mode": "x",
    })
    assert "does not parse" in problems["transforms[1].derive.total_cents"]
    assert problems["transforms[2].renam"].startswith("unknown transform (did you mean 'rename'?)")
    assert "needs `key: ${secret:NAME}`" in problems["transforms[3].encrypt.phone"]
    assert problems["transforms[4]"] == "needs exactly one transform, has drop, select"
    assert "stateful" in problems["source.streams[0].transforms[0].aggregate"]
    assert "derived pipeline" in problems["source.streams[0].transforms[0].aggregate"]
    assert "did you mean 'hash'" in problems["source.streams[0].transforms[1].mask.email"]
    assert problems["destinations[0].transforms[0].python"].startswith("cannot import 'no_such_module_xyz:fn'")
    assert problems["destinations[0].transforms[1].sql"] == "must be one SELECT statement over `batch`"
    assert "stateful" in problems["destinations[0].transforms[2].join"], "`as:` beside a stateful one: where it goes"
    assert "stateless one keeps its stream's name" in problems["destinations[0].transforms[3].as"]
    assert problems["mode"].startswith("unknown key"), "transform problems join the others in one report"


def test_a_stateful_python_class_before_the_log_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fraud_udf.py").write_text("class Score:\n    def process(self, batch, state):\n        return batch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = _problems({**BASE, "transforms": [{"python": "fraud_udf:Score"}]})
    assert "is a class" in problems["transforms[0].python"] and "source: {type: pipeline}" in problems["transforms[0].python"]


def test_a_key_reference_stays_a_reference_in_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PII_KEY", "c2VjcmV0LXZhbHVlLW5ldmVyLXNob3du")
    cfg = parse({**BASE, "transforms": [{"encrypt": {"phone": {"key": "${env:PII_KEY}"}}}]})
    assert cfg.transforms == [{"encrypt": {"phone": {"key": "${env:PII_KEY}"}}}]
    assert "c2VjcmV0" not in repr(cfg) and "c2VjcmV0" not in cfg.model_dump_json()


def test_schema_problems_are_reported_by_the_planner_with_key_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename of a missing column, a dropped key, a filter on an unknown column, an encrypt key
    that is not 32 bytes: found against the discovered schema, all at once, nothing written."""
    make_shop(tmp_path / "shop.db")
    monkeypatch.setenv("SHORT_KEY", "c2hvcnQ=")
    data = pipeline(tmp_path, {"name": "d", "type": "duckdb", "path": str(tmp_path / "d.duckdb"),
                               "transforms": [{"filter": "no_such_column > 1"}]},
                    transforms=[{"rename": {"x": "y"}}, {"encrypt": {"phone": {"key": "${env:SHORT_KEY}"}}}],
                    stream={"transforms": [{"drop": ["id"]}]})
    with pytest.raises(ConfigError) as e:
        Engine(parse(data, base_dir=tmp_path)).run()
    problems = dict(e.value.problems)
    assert problems["transforms[1].encrypt.phone.key"] == "the key is 5 bytes; a key is 32 random bytes written in base64"
    assert "c2hvcnQ" not in str(e.value)
    data["transforms"] = [{"rename": {"x": "y"}}]
    with pytest.raises(ConfigError) as e:
        Engine(parse(data, base_dir=tmp_path)).run()
    problems = dict(e.value.problems)
    assert problems["transforms[0].rename"] == "stream 'customers': rename: no column 'x'"
    data["transforms"] = [{"drop": ["phone"], "streams": ["custmers"]}]
    with pytest.raises(ConfigError) as e:
        Engine(parse(data, base_dir=tmp_path)).run()
    assert dict(e.value.problems)["transforms[0].streams"] == "no stream named 'custmers' (did you mean 'customers'?)"
    data["transforms"] = [{"rename": {"emial": "mail"}}]
    with pytest.raises(ConfigError) as e:
        Engine(parse(data, base_dir=tmp_path)).run()
    assert "no column 'emial' (did you mean 'email'?)" in dict(e.value.problems)["transforms[0].rename"]
    del data["transforms"]
    with pytest.raises(ConfigError) as e:
        Engine(parse(data, base_dir=tmp_path)).run()
    problems = dict(e.value.problems)
    assert "key column of the stream" in problems["source.streams[0].transforms[0].drop"]
    data["source"]["streams"][0].pop("transforms")
    with pytest.raises(ConfigError) as e:
        Engine(parse(data, base_dir=tmp_path)).run()
    assert "no_such_column" in dict(e.value.problems)["destinations[0].transforms[0].filter"]
    assert not (tmp_path / "d.duckdb").exists() and not (tmp_path / ".replicant").exists()
