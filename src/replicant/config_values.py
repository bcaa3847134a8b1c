"""The value forms of a pipeline file that are not models: durations (``90s``, ``5m``),
sizes (``500MB``), database URLs (their dialect, a SQLite path made absolute). Imported
through :mod:`replicant.config` as well."""

from __future__ import annotations

import re
from pathlib import Path

from replicant.errors import ConfigError
from replicant.secrets import userinfo_problem

__all__ = ["normalize_url", "parse_duration", "parse_size", "sqlite_url_against"]

_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)?\s*$")
_SIZE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.I)
_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BYTES = {None: 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number or ``'90s'``, ``'5m'``, ``'12h'``, ``'7d'``, ``'2w'``."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration; use seconds or a number with s, m, h, d or w")
    return float(m["n"]) * _SECONDS[m["unit"]]


def parse_size(value: int | str) -> int:
    """Bytes from a number or ``'500MB'``, ``'10GiB'``."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size; use bytes or a number with KB, MB, GB, TB (or KiB, MiB…)")
    return int(float(m["n"]) * _BYTES[m["unit"].lower() if m["unit"] else None])


_SCHEME_ALIASES = {
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}


def normalize_url(url: str) -> tuple[str, str]:
    """Splits a URL's scheme into ``(dialect, url_without_driver)``.

    ``postgresql+psycopg://u@h/db`` → ``("postgresql", "postgresql://u@h/db")``;
    ``mysql+pymysql://`` and ``mariadb://`` → ``"mysql"``; ``sqlite:///path`` → ``"sqlite"``.
    Raises ``ConfigError`` for anything else.
    """
    m = re.match(r"^(?P<scheme>[A-Za-z][A-Za-z0-9.\-]*)(?:\+(?P<driver>[A-Za-z0-9_.\-]+))?://(?P<rest>.*)$", url, re.S)
    if not m or m["scheme"].lower() not in _SCHEME_ALIASES:
        shown = url.split("://", 1)[0] + "://…" if "://" in url else "(no scheme://)"
        raise ConfigError(
            "bad URL",
            [("url", f"{shown} is not a supported URL; use postgresql://, mysql://, mariadb:// or sqlite:///path")],
        )
    dialect = _SCHEME_ALIASES[m["scheme"].lower()]
    problem = None if dialect == "sqlite" else userinfo_problem(url)
    if problem:
        raise ConfigError("bad URL", [("url", problem)])
    scheme = "postgresql" if dialect == "postgresql" else dialect
    return dialect, f"{scheme}://{m['rest']}"


def sqlite_url_against(url: str, base_dir: Path) -> str:
    """``sqlite:///relative.db`` made absolute against ``base_dir`` (the pipeline file's
    folder); ``sqlite:////absolute.db`` and ``:memory:`` stay as they are."""
    prefix, _, rest = url.partition(":///")
    if not rest or rest.startswith("/") or rest == ":memory:":
        return url
    return f"{prefix}:///{(base_dir / rest).resolve()}"
