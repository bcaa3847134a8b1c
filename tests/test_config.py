"""The pipeline file: validation with key paths, ${env:} references, URL forms, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicant.config import load, normalize_url, parse, parse_duration, parse_size
from replicant.errors import ConfigError, redact

BASE = {"pipeline": "p", "source": {"type": "sqlite", "url": "sqlite:///a.db"}, "destinations": [{"name": "d"}]}


def _problems(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse(data)
    return dict(e.value.problems)


def test_every_problem_reported_at_once_with_key_paths() -> None:
    problems = _problems({
        "pipeline": "p",
        "source": {"type": "postgres", "url": "postgresql://h/db",
                   "streams": [{"table": "a", "mdoe": "full"}, {"table": "b", "mode": "cursor"}, {"table": "c", "mode": "sometimes"}]},
        "destinations": [{"name": "d", "wirte": "merge"}, {"name": "d"}],
        "stat": "x",
    })
    assert problems["source.streams[0].mdoe"] == "unknown key (did you mean 'mode'?)"
    assert "needs `cursor:`" in problems["source.streams[1]"]
    assert "source.streams[2].mode" in problems
    assert problems["destinations[0].wirte"] == "unknown key (did you mean 'write'?)"
    assert problems["stat"] == "unknown key (did you mean 'state'?)"


def test_missing_required_keys() -> None:
    problems = _problems({"pipeline": "p"})
    assert problems == {"source": "required key is missing", "destinations": "required key is missing"}


def test_duplicate_destination_names() -> None:
    problems = _problems({**BASE, "destinations": [{"name": "d"}, {"name": "d"}]})
    assert "unique" in next(iter(problems.values()))


def test_env_references_resolve_and_secrets_are_masked(monkeypatch) -> None:
    monkeypatch.setenv("PGPW", "s3cret!")
    cfg = parse({**BASE, "source": {"type": "postgres", "url": "postgresql://app:${env:PGPW}@h/db"}})
    assert cfg.source.url.get_secret_value() == "postgresql://app:s3cret!@h/db"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg)


def test_missing_env_reference_names_the_key(monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    problems = _problems({**BASE, "destinations": [{"name": "d", "type": "postgres", "url": "postgresql://u:${env:NOT_SET_ANYWHERE}@h/x"}]})
    assert problems == {"destinations[0].url": "environment variable NOT_SET_ANYWHERE is not set"}


def test_streams_shorthand_and_all() -> None:
    cfg = parse(
        {
            **BASE,
            "source": {"type": "sqlite", "url": "sqlite:///a", "streams": ["Album", {"table": "Track", "mode": "cursor", "cursor": "x"}]},
        }
    )
    assert [s.table for s in cfg.source.streams] == ["Album", "Track"]
    assert parse(BASE).source.streams == "all"


@pytest.mark.parametrize(
    ("url", "dialect", "plain"),
    [
        ("postgresql://u@h/db", "postgresql", "postgresql://u@h/db"),
        ("postgres://u@h/db", "postgresql", "postgresql://u@h/db"),
        ("postgresql+psycopg://u@h:5/db", "postgresql", "postgresql://u@h:5/db"),
        ("mysql://root@h/db", "mysql", "mysql://root@h/db"),
        ("mysql+pymysql://root@h/db", "mysql", "mysql://root@h/db"),
        ("mariadb://root@h/db", "mysql", "mysql://root@h/db"),
        ("sqlite:///rel/a.db", "sqlite", "sqlite:///rel/a.db"),
    ],
)
def test_url_forms(url: str, dialect: str, plain: str) -> None:
    assert normalize_url(url) == (dialect, plain)


def test_bad_url_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as e:
        normalize_url("oracle://u:topsecret@h/db")
    assert "topsecret" not in str(e.value)


def test_load_reports_yaml_errors_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("pipeline: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)
    ok = tmp_path / "ok.yml"
    ok.write_text("pipeline: p\nsource: {type: sqlite, url: 'sqlite:///a.db'}\ndestinations: [{name: d}]\n")
    assert load(ok).base_dir == tmp_path.resolve()


def test_retention_units() -> None:
    cfg = parse({**BASE, "retention": {"max_age": "12h", "max_bytes": "1.5GiB"}})
    assert cfg.retention.max_age == 12 * 3600
    assert cfg.retention.max_bytes == int(1.5 * 2**30)
    assert parse_duration(90) == 90.0 and parse_duration("2w") == 14 * 86400
    assert parse_size("500MB") == 500_000_000
    problems = _problems({**BASE, "retention": {"max_bytes": "lots"}})
    assert "not a size" in problems["retention.max_bytes"]


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="@/:", blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=30
    )
)
def test_redact_hides_any_password(password: str) -> None:
    text = f"could not connect to postgresql://app:{password}@db.example:5432/shop"
    assert redact(text) == "could not connect to postgresql://app:***@db.example:5432/shop"


def test_destination_settings_are_validated_with_key_paths() -> None:
    problems = _problems({
        "pipeline": "p",
        "source": {"type": "sqlite", "url": "sqlite:///x.db"},
        "destinations": [
            {"name": "push", "type": "http", "url": "http://x", "methd": "POST"},
            {"name": "files", "type": "files", "path": "/tmp/out", "write": "merge"},
            {"name": "duck", "type": "duckdb", "fromat": "parquet"},
        ],
    })
    assert problems["destinations[0].methd"] == "unknown key (did you mean 'method'?)"
    assert "cannot merge" in problems["destinations[1].write"]
    assert problems["destinations[2].fromat"].startswith("unknown key")


def test_source_settings_are_validated_with_key_paths() -> None:
    problems = _problems({**BASE, "source": {"type": "postgres", "url": "postgresql://h/db", "slott": "s",
                                             "slot": "Not A Slot", "server_id": 3}})
    assert problems["source.slott"] == "unknown key (did you mean 'slot'?)"
    assert problems["source.slot"].startswith("String should match pattern")
    assert problems["source.server_id"].startswith("unknown key")  # a MySQL key, not PostgreSQL's
    problems = _problems({**BASE, "source": {"type": "mysql", "url": "mysql://h/db", "server_id": 0, "slot": "x"}})
    assert problems["source.server_id"] == "Input should be greater than 0"
    assert problems["source.slot"].startswith("unknown key")
    problems = _problems({**BASE, "source": {"type": "sqlite", "url": "sqlite:///a.db", "batchsize": 5}})
    assert problems == {"source.batchsize": "unknown key (did you mean 'batch_size'?)"}
    problems = _problems({**BASE, "source": {"type": "postgress", "url": "postgresql://h/db"}})
    assert problems == {"source.type": "'postgress' is not a source type (did you mean 'postgres'?)"}


def test_source_settings_reach_the_source_as_options() -> None:
    from replicant.model import ConnectorContext
    from replicant.sources.mysql import MySQLSource
    from replicant.sources.postgres import PostgresSource

    cfg = parse({**BASE, "source": {"type": "postgres", "url": "postgresql://h/db", "slot": "my_slot"}})
    src = PostgresSource(cfg.source, ConnectorContext("shop"))
    assert src.options.slot == "my_slot" and src.slot == "my_slot"
    assert src.publication == "replicant_shop"  # unchanged default without a tenant
    assert "my_slot" not in repr(cfg.source)  # a type's own keys are masked like secrets
    src = PostgresSource(parse({**BASE, "source": {"type": "postgres", "url": "postgresql://h/db"}}).source,
                         ConnectorContext("shop", tenant="Acme-Corp.eu"))
    assert (src.slot, src.publication) == ("replicant_shop_acme_corp_eu", "replicant_shop_Acme_Corp_eu")
    mysql = parse({**BASE, "source": {"type": "mysql", "url": "mysql://h/db"}}).source
    one, other = MySQLSource(mysql, ConnectorContext("shop")), MySQLSource(mysql, ConnectorContext("shop", "acme"))
    assert one.server_id != other.server_id and one.options.server_id is None
    from replicant.config import SourceConfig

    with pytest.raises(ConfigError) as e:  # constructed directly, the settings are still checked
        PostgresSource(SourceConfig(type="postgres", url="postgresql://h/db", slott="x"), ConnectorContext("shop"))
    assert dict(e.value.problems) == {"source.slott": "unknown key (did you mean 'slot'?)"}


# ------------------------------------------------------------ issue 9, item 15: one round


def test_repeated_yaml_keys_are_rejected_with_path_and_both_lines(tmp_path: Path) -> None:
    p = tmp_path / "p.yml"
    p.write_text("pipeline: p\nsource:\n  type: sqlite\n  url: 'sqlite:///a.db'\n  url: 'sqlite:///b.db'\n"
                 "destinations:\n  - name: d\n    write: merge\n    write: append\npipeline: q\n")
    with pytest.raises(ConfigError) as e:
        load(p)
    problems = dict(e.value.problems)
    assert problems["source.url"] == "key 'url' is repeated: line 4 and line 5; keep one"
    assert problems["destinations[0].write"] == "key 'write' is repeated: line 8 and line 9; keep one"
    assert problems["pipeline"] == "key 'pipeline' is repeated: line 1 and line 10; keep one"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("${LAKE}", "'${LAKE}' is not a reference (no kind): write ${env:LAKE} for an environment variable"),
        ("${env:bad name}", "'bad name' is not a valid name in '${env:bad name}': a name has letters, digits and _ "
                            "and does not start with a digit, e.g. ${env:bad_name}"),
        ("${vault:LAKE}", "unknown reference kind 'vault' in '${vault:LAKE}': write ${env:LAKE} (an environment "
                          "variable) or ${secret:LAKE}"),
        ("${env:LAKE", "unclosed reference '${env:LAKE': write ${env:LAKE} (a reference ends with })"),
    ],
)
def test_malformed_references_are_rejected_with_what_to_write(written: str, expected: str) -> None:
    problems = _problems({**BASE, "destinations": [{"name": "d", "path": f"{written}/out.duckdb"}]})
    assert problems == {"destinations[0].path": expected}
    # under a secret key too (where references are kept, not substituted)
    problems = _problems({**BASE, "state": f"postgresql://u:{written}@h/state"})
    assert problems == {"state": expected}


def test_reference_problems_join_the_other_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    problems = _problems({
        "pipeline": "p",
        "source": {"type": "postgres", "url": "postgresql://u:${env:NOT_SET_ANYWHERE}@h/db", "batch_size": "${NAME}",
                   "slott": "s"},
        "destinations": [{"name": "d", "wirte": "merge"}, {"name": "e", "type": "postgres", "sizee": 1}],
    })
    assert problems == {
        "source.url": "environment variable NOT_SET_ANYWHERE is not set",
        "source.batch_size": "'${NAME}' is not a reference (no kind): write ${env:NAME} for an environment variable",
        "source.slott": "unknown key (did you mean 'slot'?)",
        "destinations[0].wirte": "unknown key (did you mean 'write'?)",
        "destinations[1].sizee": problems["destinations[1].sizee"],
    }
    assert problems["destinations[1].sizee"].startswith("unknown key")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://app:hunter2@TopSecretTail@127.0.0.1/db", "more than one @ before the host"),
        ("postgresql://app:abc/Slash9@127.0.0.1/db", "the port is not a number"),
        ("mysql://app:p@ss:w/rd#1@127.0.0.1/db", "a # in the URL"),
        ("postgresql://app:12/34@127.0.0.1/db", "an @ after the host"),
    ],
)
def test_a_url_with_an_unencoded_password_is_refused_without_showing_it(url: str, why: str) -> None:
    """Issue 9, item 10's siblings: a password written in clear (or a whole URL in one
    variable) whose @ / # were not encoded is a config error, not a host name in an error
    message or an internal error; no piece of the password is shown."""
    with pytest.raises(ConfigError) as e:
        normalize_url(url)
    (key, what), = e.value.problems
    assert key == "url" and what.startswith(why) and "user:${env:PASSWORD}@host" in what
    password = url.split("://app:", 1)[1].rsplit("@", 1)[0]
    assert not any(password[i:i + 4] in str(e.value) for i in range(len(password) - 3))


@pytest.mark.parametrize("url", ["postgresql://u@h/db?application_name=a@b", "postgresql://u:p%40ss@h1:5432,h2:5433/db",
                                 "postgresql://[::1]:5432/db", "mysql://root@h/db?unix_socket=/tmp/my.sock"])
def test_well_formed_urls_pass_the_userinfo_check(url: str) -> None:
    assert normalize_url(url)[0] in ("postgresql", "mysql")
