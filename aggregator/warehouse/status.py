"""What ``export --status`` prints and the health endpoint serves: cursors, lag, last step."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .runner import Exporter, StepReport


@dataclass
class FollowState:
    """The ``--follow`` loop's view of itself, for ``/status`` and ``/readyz``."""

    steps: int = 0
    rows: int = 0
    failures_in_row: int = 0
    last_error: str | None = None
    last_step_at: float | None = None
    last_watermark: int | None = None
    lag: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, report: StepReport, lag: dict[str, dict[str, int]]) -> None:
        self.steps += 1
        self.rows += report.rows
        self.failures_in_row = 0
        self.last_error = None
        self.last_step_at = time.time()
        self.last_watermark = report.hi
        self.lag = lag

    def failed(self, error: str) -> None:
        self.failures_in_row += 1
        self.last_error = error

    def as_status(self) -> dict[str, Any]:
        return {
            "healthy": self.failures_in_row < 3,
            "postgres": "error" if self.last_error else "ok",
            "steps": self.steps,
            "rows_exported": self.rows,
            "last_step_age_s": None
            if self.last_step_at is None
            else round(time.time() - self.last_step_at, 1),
            "watermark": self.last_watermark,
            "lag_rows": lag_total(self.lag),
            "lag": self.lag,
            "last_error": self.last_error,
        }


def lag_total(lag: dict[str, dict[str, int]]) -> int:
    """Rows not yet exported to the target furthest behind, summed over sources."""
    return sum(max(by_target.values(), default=0) for by_target in lag.values())


def snapshot_status(exporter: Exporter) -> dict[str, Any]:
    """One-shot status: cursors and lag of every source and target, read now."""
    cursors = {source.table: exporter.cursors(source) for source in exporter.sources}
    lag = exporter.lag()
    return {
        "healthy": True,
        "watermark": exporter.pg.xmin(),
        "lag_rows": lag_total(lag),
        "lag": lag,
        "cursors": cursors,
    }
