"""Query-parameter models of the query API (unknown parameters are rejected)."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ...instrumentation.privacy import PSEUDONYM_PATTERN
from .models import MetricsWindow


class Params(BaseModel):
    """Base of every parameter model: an unknown parameter is a ``422``."""

    model_config = ConfigDict(extra="forbid")


class OverviewParams(Params):
    days: int = Field(default=30, ge=1, le=365, description="Window length in days, ending today (UTC)")
    subject: str | None = Field(
        default=None,
        pattern=PSEUDONYM_PATTERN.pattern,
        description="Pseudonym (user.hash) to read; default and only allowed value: the caller's own.",
    )


def iso_date(value: Any) -> Any:
    """Only ``YYYY-MM-DD``, as the schema says: pydantic alone would take ``0`` (a Unix time)."""
    if isinstance(value, str) and not ISO_DATE.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
IsoDate = Annotated[date, BeforeValidator(iso_date)]


class HeatmapParams(Params):
    tz: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="IANA time zone, e.g. Europe/Berlin (the names both this server and its database know)",
    )
    start: IsoDate | None = Field(
        default=None, description="First day (default: 364 days before end); at most 366 days before end"
    )
    end: IsoDate | None = Field(
        default=None, description="Last day (default: 364 days after start if given, else today in tz)"
    )
    subject: str | None = Field(
        default=None, pattern=PSEUDONYM_PATTERN.pattern, description="As for overview"
    )


class SystemParams(Params):
    window: MetricsWindow = Field(default=MetricsWindow.H1, description="Time window ending now")
    limit: int = Field(default=100, ge=1, le=500, description="Most routes returned (busiest first)")


class CohortParams(Params):
    days: int = Field(default=30, ge=1, le=365, description="Window length in days, ending today (UTC)")
