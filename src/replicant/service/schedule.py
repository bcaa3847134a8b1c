"""The ``schedule:`` key of a pipeline file and when it fires next.

::

    schedule: {every: 5m, jitter: 10s}
    schedule: {cron: "*/15 * * * *", timezone: Europe/Berlin}
    schedule: {after: bank}                 # when a run of pipeline `bank` appended rows
    schedule: {webhook: true, secret: "${env:HOOK_SECRET}"}
    schedule: {on: file, path: ./inbox, glob: "*.csv"}
    schedule: {follow: true}                # streams continuously, restarted with back-off

Keys combine (``every`` and ``webhook``, say). ``priority`` orders runs waiting for a worker
(higher first); ``concurrency`` is how many runs of the pipeline (of different tenants) may run
at once. Catch-up after downtime: one run, not one per missed tick.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from replicant.config_values import parse_duration
from replicant.secrets import Secret

__all__ = ["ScheduleConfig", "next_fire"]


class ScheduleConfig(BaseModel):
    """The ``schedule:`` section (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    every: float | str | None = Field(None, description="Run at this interval: seconds or '5m', '1h'.")
    cron: str | None = Field(None, description="Run at these times: a cron expression (croniter).")
    timezone: str = Field("UTC", description="Time zone of `cron` (IANA name).")
    after: list[str] | None = Field(None, description="Run when a run of these pipelines appended rows.")
    webhook: bool = Field(False, description="Run when /api/v1/hooks/PIPELINE receives a signed request.")
    secret: list[Secret] | None = Field(None, description="Webhook signing secrets (`whsec_…`); several while rotating.")
    on: Literal["file"] | None = Field(None, description="`file`: run when new files arrive.")
    path: str | None = Field(None, description="`on: file`: the folder watched (default: the files source's).")
    glob: str = Field("*", description="`on: file`: the file names that count.")
    follow: bool = Field(False, description="Stream continuously; restart with back-off when it fails.")
    jitter: float | str = Field(0.0, description="Delay each scheduled run by up to this much (seconds or '30s').")
    priority: int = Field(0, description="Runs waiting for a worker: higher first.")
    concurrency: int = Field(1, gt=0, description="Runs of this pipeline at once (different tenants).")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:  # YAML 1.1 reads the key `on` as true
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("every", "jitter")
    @classmethod
    def _seconds(cls, v: Any) -> Any:
        if v is None:
            return None
        seconds = parse_duration(v)
        if seconds < 0:
            raise ValueError("must not be negative")
        return seconds

    @field_validator("after", "secret", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from croniter import croniter  # type: ignore[import-untyped]

            if not croniter.is_valid(v):
                raise ValueError(f"{v!r} is not a cron expression (minute hour day month weekday)")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return v

    @model_validator(mode="after")
    def _webhook_secret(self) -> ScheduleConfig:
        if self.webhook and not self.secret:
            raise ValueError("webhook: true needs `schedule.secret` (a Standard Webhooks key, whsec_…, by reference)")
        if self.every is not None and float(self.every) <= 0:
            raise ValueError("every must be positive")
        return self

    @property
    def timed(self) -> bool:
        """Whether it fires on the clock (``every`` or ``cron``)."""
        return self.every is not None or self.cron is not None


def next_fire(schedule: ScheduleConfig, after: datetime, *, seed: str = "") -> datetime | None:
    """The first time strictly after ``after`` at which ``schedule`` fires (``every``/``cron``),
    plus its jitter (a fraction of ``jitter`` drawn from ``seed`` and the time, so it is
    reproducible); ``None`` when the schedule is not timed."""
    due: datetime | None = None
    if schedule.every is not None:
        due = after + timedelta(seconds=float(schedule.every))
    if schedule.cron is not None:
        from zoneinfo import ZoneInfo

        from croniter import croniter

        local = after.astimezone(ZoneInfo(schedule.timezone))
        cron_due = croniter(schedule.cron, local).get_next(datetime).astimezone(after.tzinfo)
        due = cron_due if due is None else min(due, cron_due)
    if due is not None and schedule.jitter:
        due += timedelta(seconds=random.Random(f"{seed}@{due.isoformat()}").uniform(0, float(schedule.jitter)))
    return due
