"""Secrets by reference: checked when the pipeline is loaded, resolved when a connector reads them."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from replicant import secrets
from replicant.config import load, parse
from replicant.destinations.http import HttpSettings
from replicant.errors import ConfigError
from replicant.secrets import Secret, resolve_all

PIPELINE = """
pipeline: shop
source:
  type: postgres
  url: postgresql://app:${env:RT_PG_PASSWORD}@db.example/shop
destinations:
  - name: push
    type: http
    url: https://api.example/ingest?key=${env:RT_API_KEY}
    auth: {bearer: "${env:RT_TOKEN}"}
    headers: {X-Tenant-Key: "${env:RT_HEADER}"}
  - name: lake
    type: files
    path: ${env:RT_LAKE_DIR}/out
    storage_options: {key: "${env:RT_S3_KEY}", client_kwargs: {region_name: eu-west-1}}
state: postgresql://state:${env:RT_STATE_PW}@db.example/state
"""

VALUES = {
    "RT_PG_PASSWORD": "pg-pass-0001",
    "RT_API_KEY": "api-key-0002",
    "RT_TOKEN": "token-0003",
    "RT_HEADER": "header-0004",
    "RT_S3_KEY": "s3-key-0005",
    "RT_STATE_PW": "state-pass-0006",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name, value in VALUES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RT_LAKE_DIR", str(tmp_path / "lake"))
    return monkeypatch


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "shop.yml"
    path.write_text(PIPELINE, encoding="utf-8")
    return path


def _everything_shown(cfg: BaseModel) -> str:
    return "\n".join([repr(cfg), str(cfg), repr(cfg.model_dump()), str(cfg.model_dump()), cfg.model_dump_json()])


def test_config_keeps_references_and_resolves_them_when_read(env: pytest.MonkeyPatch, pipeline_file: Path) -> None:
    cfg = load(pipeline_file)
    shown = _everything_shown(cfg)
    for value in VALUES.values():
        assert value not in shown
    assert isinstance(cfg.source.url, Secret)
    assert cfg.source.url.reference == "postgresql://app:${env:RT_PG_PASSWORD}@db.example/shop"
    assert cfg.source.url.get_secret_value() == "postgresql://app:pg-pass-0001@db.example/shop"
    assert cfg.state is not None and cfg.state.get_secret_value().endswith(":state-pass-0006@db.example/state")
    # a non-secret key (a path) is substituted at load time
    assert cfg.destination("lake").path == f"{os.environ['RT_LAKE_DIR']}/out"

    # rotated after load: the next read (a connector connecting) sees the new value
    env.setenv("RT_PG_PASSWORD", "rotated-0007")
    assert cfg.source.url.get_secret_value() == "postgresql://app:rotated-0007@db.example/shop"
    assert "rotated-0007" not in _everything_shown(cfg)


def test_destination_options_keep_their_references(env: pytest.MonkeyPatch, pipeline_file: Path) -> None:
    cfg = load(pipeline_file)
    push = cfg.destination("push")
    assert push.options["auth"] == {"bearer": "${env:RT_TOKEN}"}  # the reference, not the value
    settings = HttpSettings.model_validate(push.options)  # what the http destination does when built
    assert settings.auth is not None and settings.auth.bearer is not None
    assert "token-0003" not in repr(settings)
    env.setenv("RT_TOKEN", "token-0008")
    assert settings.auth.bearer.get_secret_value() == "token-0008"
    assert settings.headers["X-Tenant-Key"].get_secret_value() == "header-0004"
    assert push.url is not None and push.url.get_secret_value() == "https://api.example/ingest?key=api-key-0002"

    lake = cfg.destination("lake")
    assert "s3-key-0005" not in json.dumps(lake.options)
    assert resolve_all(lake.options["storage_options"]) == {
        "key": "s3-key-0005",
        "client_kwargs": {"region_name": "eu-west-1"},
    }


def test_a_variable_unset_after_load_is_an_error_naming_it(env: pytest.MonkeyPatch, pipeline_file: Path) -> None:
    cfg = load(pipeline_file)
    env.delenv("RT_PG_PASSWORD")
    with pytest.raises(ConfigError, match="environment variable RT_PG_PASSWORD is not set") as caught:
        cfg.source.url.get_secret_value()  # type: ignore[union-attr]
    for value in VALUES.values():
        assert value not in str(caught.value)


def test_missing_references_are_reported_at_load_with_their_key_paths(
    env: pytest.MonkeyPatch, pipeline_file: Path
) -> None:
    for name in ("RT_PG_PASSWORD", "RT_TOKEN", "RT_S3_KEY", "RT_LAKE_DIR"):
        env.delenv(name)
    with pytest.raises(ConfigError) as caught:
        load(pipeline_file)
    assert dict(caught.value.problems) == {
        "source.url": "environment variable RT_PG_PASSWORD is not set",
        "destinations[0].auth.bearer": "environment variable RT_TOKEN is not set",
        "destinations[1].path": "environment variable RT_LAKE_DIR is not set",
        "destinations[1].storage_options.key": "environment variable RT_S3_KEY is not set",
    }
    for value in VALUES.values():
        assert value not in str(caught.value)


def test_other_problems_never_show_a_secret(env: pytest.MonkeyPatch) -> None:
    url = "postgresql://app:${env:RT_PG_PASSWORD}@db.example/shop"
    with pytest.raises(ConfigError) as caught:
        parse({"pipeline": "p", "source": {"type": "postgres", "url": url, "sterams": "all"}, "destinations": [{"name": "d"}]})
    assert "sterams" in str(caught.value)
    assert "pg-pass-0001" not in str(caught.value)


def test_secret_store_references(env: pytest.MonkeyPatch) -> None:
    # The store is process-wide: a command run in-process by an earlier test of this worker
    # (the CLI installs the pipeline's encrypted store) may have left one installed.
    secrets.set_secret_store(None)
    data = {"pipeline": "p", "source": {"type": "postgres", "url": "postgresql://a:${secret:PG}@h/db"}, "destinations": [{"name": "d"}]}
    with pytest.raises(ConfigError) as caught:
        parse(data)
    assert dict(caught.value.problems) == {
        "source.url": "${secret:PG} needs a secret store: run through `replicant` (which installs the pipeline's "
                      "encrypted store), or use ${env:PG} and set the environment variable PG"
    }

    store = {"PG": "from-the-store"}
    secrets.set_secret_store(store.get)
    try:
        cfg = parse(data)
        assert cfg.source.url is not None and cfg.source.url.get_secret_value() == "postgresql://a:from-the-store@h/db"
        store["PG"] = "rotated"
        assert cfg.source.url.get_secret_value() == "postgresql://a:rotated@h/db"
        del store["PG"]
        with pytest.raises(ConfigError, match="secret PG is not in the secret store"):
            cfg.source.url.get_secret_value()
    finally:
        secrets.set_secret_store(None)


def test_secret_fields_accept_plain_secret_strings() -> None:
    class Model(BaseModel):
        url: Secret

    model = Model(url=SecretStr("sqlite:///x.db"))  # type: ignore[arg-type]
    assert isinstance(model.url, Secret) and model.url.get_secret_value() == "sqlite:///x.db"
    assert repr(model) == "Model(url=Secret('**********'))"


def test_secrets_compare_by_reference_without_resolving(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RT_UNSET", raising=False)
    a, b = Secret("x:${env:RT_UNSET}"), Secret("x:${env:RT_UNSET}")
    assert a == b and hash(a) == hash(b) and a != Secret("x:${env:RT_OTHER}")
    assert pickle.loads(pickle.dumps(a)) == a  # a worker process receives the reference
    with pytest.raises(ConfigError, match="RT_UNSET"):
        a.get_secret_value()


# ------------------------------------------------------------ issue 9, item 10: encoded into URLs

SPECIAL_PASSWORDS = ["hunter2@TopSecretTail", "abc/Slash9", "p@ss:w/rd#1", "100%?[x] ok"]


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
def test_a_reference_in_a_urls_userinfo_is_percent_encoded(monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    from urllib.parse import urlsplit

    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("RT_PW", password)
    monkeypatch.setenv("RT_USER", "app@corp")
    url = Secret("postgresql://${env:RT_USER}:${env:RT_PW}@db.example:6432/shop?sslmode=disable").get_secret_value()
    # every parser on the way to a driver sees the same user, password, host, port and database
    info = conninfo_to_dict(url)
    assert (info["user"], info["password"], info["host"], info["port"], info["dbname"]) == (
        "app@corp", password, "db.example", "6432", "shop")
    u = make_url(url)
    assert (u.username, u.password, u.host, u.port, u.database) == ("app@corp", password, "db.example", 6432, "shop")
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("db.example", 6432)
    # outside user info the value is used as it is
    assert secrets.resolve("${env:RT_PW}") == password
    assert secrets.resolve("https://h/x?key=${env:RT_PW}") == f"https://h/x?key={password}"


def test_a_variable_holding_user_and_password_keeps_its_colon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RT_CREDS", "app:p@ss")
    assert secrets.resolve("mysql://${env:RT_CREDS}@h/db") == "mysql://app:p%40ss@h/db"


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS[:3])
def test_redact_masks_an_unencoded_password_whole(password: str) -> None:
    from replicant.errors import redact

    shown = redact(f"cannot connect to postgresql://app:{password}@127.0.0.1:5432/db: refused")
    assert shown == "cannot connect to postgresql://app:***@127.0.0.1:5432/db: refused"
