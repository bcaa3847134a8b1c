"""Service settings: ``DIR/replicant.yml``, overridden by ``replicant serve`` flags.

Every key has an embedded default, so ``replicant serve examples/`` just works: state in
``DIR/.replicant/service.db`` (SQLite), run logs in ``DIR/.replicant/logs``, the API on
127.0.0.1:8080, two worker processes, leases of 15 s.

::

    # DIR/replicant.yml
    host: 0.0.0.0
    port: 8080
    workers: 4
    state: postgresql://replicant:${env:STATE_PW}@db/replicant   # shared by every worker
    logs: /var/log/replicant
    lease: 15s
    log_format: json
    notify:
      - url: https://hooks.slack.com/services/…
        format: slack
        events: [failure, recovery, drift, slot_lag]
    slot_lag_bytes: 1GB
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from replicant.config_values import parse_duration, parse_size, sqlite_url_against
from replicant.errors import ConfigError
from replicant.secrets import Secret
from replicant.service.oidc import OidcConfig

__all__ = ["NotifyConfig", "ServiceSettings", "load_settings", "SETTINGS_FILE"]

#: The service settings file in the served folder.
SETTINGS_FILE = "replicant.yml"

NotifyEvent = Literal["failure", "recovery", "drift", "slot_lag"]


class NotifyConfig(BaseModel):
    """One notification target: a URL that receives a POST per event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Secret = Field(description="Where events are POSTed (a Slack incoming webhook URL, or any).")
    format: Literal["json", "slack"] = Field("json", description="`json`: the event; `slack`: {text, blocks}.")
    events: list[NotifyEvent] = Field(["failure", "recovery", "drift", "slot_lag"], description="Which events.")


class ServiceSettings(BaseModel):
    """What ``replicant serve`` and ``replicant worker`` run with (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the API (0: a free one, printed).")
    workers: int = Field(2, ge=0, description="Worker processes started by `serve` (0: only `replicant worker`).")
    state: Secret | None = Field(None, description="State store URL (default: SQLite in DIR/.replicant/service.db).")
    logs: str | None = Field(None, description="Folder of run logs (default: DIR/.replicant/logs).")
    lease: float | str = Field(15.0, description="A worker's lease of a run: another resumes it this long after it died.")
    tick: float | str = Field(1.0, description="How often the scheduler looks at schedules, files and the queue.")
    rescan: float | str = Field(2.0, description="How often DIR is read again for added, changed or removed files.")
    max_running: int | None = Field(None, gt=0, description="Runs at once over every pipeline (default: no limit).")
    log_format: Literal["text", "json"] = Field("text", description="`json`: one JSON object per log line.")
    notify: list[NotifyConfig] = Field([], description="Webhooks told of failures, recoveries, drift and slot lag.")
    slot_lag_bytes: int | str | None = Field(None, description="Notify when a replication slot retains more WAL.")
    webhook_tolerance: float | str = Field(300.0, description="Webhook timestamps further off than this are refused.")
    follow_backoff: float | str = Field(60.0, description="Longest wait before a failed `follow: true` pipeline restarts.")
    clock_file: str | None = Field(None, description="Tests only: read the scheduler's time (ISO 8601) from this file.")
    oidc: OidcConfig | None = Field(None, description="OIDC/JWT bearer tokens for SSO (docs/access.md).")
    base_dir: Path = Field(Path("."), exclude=True)

    @field_validator("lease", "tick", "rescan", "webhook_tolerance", "follow_backoff")
    @classmethod
    def _seconds(cls, v: Any) -> float:
        seconds = parse_duration(v)
        if seconds <= 0:
            raise ValueError("must be positive")
        return seconds

    @field_validator("slot_lag_bytes")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)

    @property
    def state_url(self) -> str:
        if self.state is None:
            return f"sqlite:///{self.base_dir / '.replicant' / 'service.db'}"
        url = self.state.get_secret_value()
        return sqlite_url_against(url, self.base_dir) if url.startswith("sqlite") else url

    @property
    def logs_dir(self) -> Path:
        if self.logs is None:
            return self.base_dir / ".replicant" / "logs"
        path = Path(self.logs)
        return path if path.is_absolute() else self.base_dir / path

    def seconds(self, key: str) -> float:
        """A duration setting as seconds (validated settings hold floats)."""
        return float(getattr(self, key))


def load_settings(folder: str | Path, overrides: dict[str, Any] | None = None) -> ServiceSettings:
    """``folder/replicant.yml`` (if any) with ``overrides`` (flags given) on top.

    Raises:
        ConfigError: every problem with its key path.
    """
    from replicant.yaml_load import load_yaml

    base = Path(folder).resolve()
    data: dict[str, Any] = {}
    file = base / SETTINGS_FILE
    if file.exists():
        loaded = load_yaml(file.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: must be a mapping of service settings")
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ServiceSettings.model_validate({**data, "base_dir": base})
    except ValidationError as e:
        problems = [(".".join(map(str, err["loc"])) or "(top level)",
                     "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, "))
                    for err in e.errors()]
        raise ConfigError(f"invalid service settings ({SETTINGS_FILE})", problems) from None
