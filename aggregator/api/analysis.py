"""Funnel and retention routes (staff): ad hoc definitions over the API's event-sequence store.

The store (``aggregator/analysis/loader.py``) lives in this process: created empty with the
app, loaded by a background task at start-up (:mod:`.saved_funnels`), refreshed on the
commit-ordered watermark by that task at half ``analysis_refresh_s``, and by a query that finds it
older than ``analysis_refresh_s``. Every answer is
suppressed for small groups (``min_cohort_size``), and every read is audited with cohort scope,
before the data leaves. Semantics and limits: docs/analytics.md; the routes: docs/api.md.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request

from ...exporter.tombstone import Tombstone
from ..analysis.definitions import FunnelDefinition, RetentionDefinition
from ..analysis.loader import AnalysisStore
from ..analysis.reports import FunnelResult, RetentionResult, funnel_report, retention_report
from . import audit
from .deps import PREFIX, AppSettings, Caller, Db, require_staff_audited
from .problems import BODY_RESPONSES
from .settings import ApiSettings

FUNNEL_PATH = f"{PREFIX}/analysis/funnels"
RETENTION_PATH = f"{PREFIX}/analysis/retention"

router = APIRouter()


def open_store(app: FastAPI, settings: ApiSettings) -> None:
    """Give ``app`` its (empty) store; ``saved_funnels.start_background`` fills it."""
    app.state.erased_learners = Tombstone(settings)  # refreshed by saved_funnels' background task
    app.state.analysis = AnalysisStore(
        max_staleness_s=settings.analysis_refresh_s,
        retention_days=settings.raw_retention_days,
        erased=app.state.erased_learners.erased,
    )


def analysis_store(request: Request) -> AnalysisStore:
    value: AnalysisStore = request.app.state.analysis
    return value


async def answer(request: Request, compute: Any) -> tuple[Any, int]:
    """``compute(store)`` on a fresh enough store, with the store's generation."""
    async with request.app.state.pool.acquire() as conn:
        result, generation = await analysis_store(request).query(conn, compute)
    return result, generation


@router.post(FUNNEL_PATH, response_model=FunnelResult, responses=BODY_RESPONSES, tags=["staff"])
async def funnel(
    request: Request, caller: Caller, db: Db, settings: AppSettings, definition: FunnelDefinition
) -> FunnelResult:
    """An ad hoc funnel: learners entering and reaching each step, conversion, drop-off and
    times, per breakdown group; groups under ``min_cohort_size`` learners suppressed. Staff only."""
    await require_staff_audited(db, caller, FUNNEL_PATH, "cohort")
    k, limit = settings.min_cohort_size, settings.analysis_breakdown_limit
    result, _ = await answer(request, lambda store: funnel_report(store, definition, k, limit))
    await audit.record(db, caller, FUNNEL_PATH, subject=None, scope="cohort")
    assert isinstance(result, FunnelResult)
    return result


@router.post(RETENTION_PATH, response_model=RetentionResult, responses=BODY_RESPONSES, tags=["staff"])
async def retention(
    request: Request, caller: Caller, db: Db, settings: AppSettings, definition: RetentionDefinition
) -> RetentionResult:
    """A retention table: cohorts by the period of their start, the learners returning in each
    later period (count, rate, optional metric); cells under ``min_cohort_size`` suppressed. Staff only."""
    await require_staff_audited(db, caller, RETENTION_PATH, "cohort")
    k = settings.min_cohort_size
    result, _ = await answer(request, lambda store: retention_report(store, definition, k))
    await audit.record(db, caller, RETENTION_PATH, subject=None, scope="cohort")
    assert isinstance(result, RetentionResult)
    return result
