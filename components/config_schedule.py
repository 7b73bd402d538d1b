"""The schedule block of params.yaml: when the scheduled retraining runs, where it pushes, whom it tells, and
whether it searches first (flows/scheduled.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from components.config_block import Block


class ScheduleParams(Block):
    """Scheduled retraining (flows/scheduled.py, `make schedule`): when it runs, where it pushes, whom it tells."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    deployment: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "tuneline-retrain"
    remote: str | None = ".dvc-remote"
    commit: bool = True
    notify_log: str | None = "logs/notifications.jsonl"
    notify_webhook: str | None = None
    io_retries: Annotated[int, Field(ge=0, le=10)] = 3
    io_retry_delay_s: Annotated[float, Field(ge=0.0)] = 2.0
    tune: bool = False  # search (tune block) on the new data before retraining; the best params are applied if they win
    tune_timeout_s: Annotated[float, Field(gt=0.0)] = 1200.0  # the search's share of a scheduled run

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        import datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.datetime.now(datetime.UTC))
            valid = len(value.split()) == 5
        except CronSimError:
            valid = False
        if not valid:
            raise ValueError("must be a cron expression of five fields (minute hour day month weekday), "
                             "e.g. '0 3 * * *' for 03:00 every day")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone name such as UTC or Europe/Berlin") from None
        return value

    @field_validator("notify_webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (or null for no webhook)")
        return value
