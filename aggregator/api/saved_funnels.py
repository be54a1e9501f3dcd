"""Saved funnel routes (staff): named, versioned definitions, answered from warmed answers.

``POST .../saved-funnels/{name}/versions`` stores a definition as the name's next version;
``GET .../saved-funnels`` lists the latest versions; ``GET .../saved-funnels/{name}`` answers
one (the latest, or ``?version=``). Answers come from ``analysis/saved.py``'s cache, keyed by
the version and the store's generation and recomputed by this module's background task right
after the store changes, so a read does not run the engine (docs/analytics.md, "Saved funnels").
The background task also loads the store at start-up and refreshes it every half
``analysis_refresh_s``, ahead of the queries' own limit (a refresh reads outside the store's lock,
so queries go on meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict

from ..analysis import saved
from ..analysis.definitions import FunnelDefinition
from ..analysis.loader import AnalysisStore
from ..analysis.reports import FunnelResult
from . import audit
from .auth import ApiProblem
from .deps import PREFIX, AppSettings, Caller, Db, require_staff_audited
from .problems import BODY_RESPONSES, ERROR_RESPONSES, bad_request

SAVED_PATH = f"{PREFIX}/analysis/saved-funnels"
ONE_PATH = f"{SAVED_PATH}/{{name}}"
VERSIONS_PATH = f"{ONE_PATH}/versions"
"""One method per path: a path with two would answer OPTIONS with one of them in ``Allow``."""
MIN_WARM_INTERVAL_S = 0.5

_log = logging.getLogger("studyin_analytics.aggregator.api.app")

router = APIRouter()

Name = Annotated[str, Path(pattern=saved.NAME_PATTERN, description="Lower-case letters, digits, _ and -")]


class SavedFunnelVersion(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    created_at: datetime
    definition: FunnelDefinition


class SavedFunnelAnswer(SavedFunnelVersion):
    result: FunnelResult


def _version(f: saved.SavedFunnel) -> SavedFunnelVersion:
    return SavedFunnelVersion(
        name=f.name, version=f.version, created_at=f.created_at, definition=f.definition
    )


def _cache(app: FastAPI) -> saved.AnswerCache:
    cache = getattr(app.state, "saved_answers", None)
    if cache is None:
        cache = app.state.saved_answers = saved.AnswerCache()
    return cache


async def warm(app: FastAPI) -> int:
    """Refresh the store once half its staleness limit has passed (so a query seldom finds it stale
    and reads PostgreSQL itself); compute the latest saved versions not cached at its generation."""
    store: AnalysisStore = app.state.analysis
    k, limit = app.state.settings.min_cohort_size, app.state.settings.analysis_breakdown_limit
    cache = _cache(app)
    async with app.state.pool.acquire() as conn:
        await store.refresh(conn, max_age_s=store.max_staleness_s / 2)
        funnels = await saved.latest(conn)
        generation = store.generation
        missing = [f for f in funnels if (f.name, f.version, generation, k, limit) not in cache.answers]
        if not missing:
            return 0
        results, generation = await store.query(conn, lambda s: saved.compute_all(s, missing, k, limit))
    for f, result in results:
        cache.put((f.name, f.version, generation, k, limit), result)
    return len(results)


async def _forget_erased(app: FastAPI, store: AnalysisStore) -> None:
    """Re-read the tombstone (when its version moved) and drop newly erased learners' rows."""
    erased = app.state.erased_learners
    before = erased.digests
    await erased.refresh(app.state.redis)
    if erased.digests != before and (removed := await store.forget_erased()):
        _log.info("analysis store: %d rows of erased learners dropped", removed)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _background(app: FastAPI) -> None:
    store: AnalysisStore = app.state.analysis
    interval = max(app.state.settings.analysis_refresh_s / 2, MIN_WARM_INTERVAL_S)
    loaded = False
    while not _cancelling():  # a cancel swallowed by a client still ends the loop
        try:
            if not loaded:
                async with app.state.pool.acquire() as conn:
                    added = await store.refresh(conn, force=True)
                _log.info("analysis store loaded: %d events, %d bytes", added, store.store.nbytes())
                loaded = True
            await _forget_erased(app, store)
            await warm(app)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PostgreSQL away: queries refresh themselves; try again later
            # A client may turn our cancellation into an error of its own (redis-py's asyncio client
            # does, mid-command): a pending cancel still ends the loop, or the app never shuts down.
            if _cancelling():
                raise asyncio.CancelledError from exc
            _log.warning("analysis store refresh failed (%s)", type(exc).__name__)
        await asyncio.sleep(interval)


def start_background(app: FastAPI) -> asyncio.Task[None]:
    """Load the store, then keep it fresh and the saved funnels' answers warm, until cancelled."""
    return asyncio.create_task(_background(app))


STOP_TIMEOUT_S = 10.0


async def stop_background(task: asyncio.Task[None]) -> None:
    """Cancel the task and wait for it, at most :data:`STOP_TIMEOUT_S`: a shutdown never hangs on it."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, STOP_TIMEOUT_S)


@router.post(
    VERSIONS_PATH,
    response_model=SavedFunnelVersion,
    status_code=201,
    responses=BODY_RESPONSES,
    tags=["staff"],
)
async def save_funnel(caller: Caller, db: Db, name: Name, definition: FunnelDefinition) -> SavedFunnelVersion:
    """Store ``definition`` as the next version of the saved funnel ``name`` (1 if new). Staff only."""
    await require_staff_audited(db, caller, VERSIONS_PATH, "cohort")
    async with db.acquire() as conn:
        try:
            stored = await saved.save(conn, name, definition, caller.user_hash)
        except saved.TooMany:
            raise bad_request(
                "too_many_saved_funnels", f"at most {saved.MAX_SAVED} saved funnel names", ["path", "name"]
            ) from None
    return _version(stored)


@router.get(SAVED_PATH, response_model=list[SavedFunnelVersion], responses=ERROR_RESPONSES, tags=["staff"])
async def list_saved_funnels(caller: Caller, db: Db) -> list[SavedFunnelVersion]:
    """The latest version of every saved funnel (definitions only, no learner data). Staff only."""
    await require_staff_audited(db, caller, SAVED_PATH, "cohort")
    return [_version(f) for f in await saved.latest(db)]


@router.get(
    ONE_PATH,
    response_model=SavedFunnelAnswer,
    responses={**ERROR_RESPONSES, 404: {"description": "No such saved funnel (or version)"}},
    tags=["staff"],
)
async def saved_funnel(
    request: Request,
    caller: Caller,
    db: Db,
    settings: AppSettings,
    name: Name,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Default: the latest")] = None,
) -> SavedFunnelAnswer:
    """A saved funnel's answer: the same numbers as the same definition asked ad hoc, from the
    answers computed when the store last changed. Staff only."""
    await require_staff_audited(db, caller, ONE_PATH, "cohort")
    found = await saved.one(db, name, version)
    if found is None:
        raise ApiProblem(404, "saved_funnel_not_found", "no saved funnel of that name (and version)")
    k, limit = settings.min_cohort_size, settings.analysis_breakdown_limit
    store: AnalysisStore = request.app.state.analysis
    cache = _cache(request.app)
    result = cache.get((found.name, found.version, store.generation, k, limit))
    if result is None:  # not warmed yet (a new version, or the store just changed): compute it now
        async with db.acquire() as conn:
            computed, generation = await store.query(conn, lambda s: saved.compute_all(s, [found], k, limit))
        result = computed[0][1]
        cache.put((found.name, found.version, generation, k, limit), result)
    await audit.record(db, caller, ONE_PATH, subject=None, scope="cohort")
    return SavedFunnelAnswer(
        name=found.name,
        version=found.version,
        created_at=found.created_at,
        definition=found.definition,
        result=result,
    )
