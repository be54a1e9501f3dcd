"""Experiment routes (staff): define, list, show, stop experiments, and read one version's analysis.

Definitions are validated by :class:`..experiments.definitions.ExperimentDefinition` (422 problem+json
naming the field); a change that would alter a running version is 409 (start a new version:
``?new_version=true``). Every change publishes the running experiments to the apps. The analysis reads
only the per-variant sums (``experiment_variant_sums``), never per-learner rows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from ..experiments import store
from ..experiments.daily import daily_looks
from ..experiments.definitions import ExperimentDefinition
from ..experiments.report import analyse
from . import audit
from .auth import ApiProblem
from .deps import PREFIX, AppSettings, Caller, Db, require_staff_audited
from .models import Problem
from .problems import ERROR_RESPONSES, READ_RESPONSES, UNDECODABLE_BODY

EXPERIMENTS_PATH = f"{PREFIX}/experiments"
EXPERIMENT_PATH = f"{PREFIX}/experiments/{{key}}"
STOP_PATH = f"{PREFIX}/experiments/{{key}}/stop"
ANALYSIS_PATH = f"{PREFIX}/experiments/{{key}}/analysis"
DAYS_PATH = f"{PREFIX}/experiments/{{key}}/analysis/days"

Key = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="The experiment's key")]
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    400: {"model": Problem, "description": UNDECODABLE_BODY},
    404: {"description": "No such experiment (or none running, for stop)"},
    409: {"description": "The change would alter a running version: start a new version"},
}

_SUMS_SQL = """
SELECT variant, metric, n, successes, sum, sum_squares, covariate_sum, covariate_sum_squares, cross_sum
FROM experiment_variant_sums WHERE experiment_key = $1 AND version = $2
"""

_DAY_SUMS_SQL = """
SELECT variant, day, n, successes, sum, sum_squares, covariate_sum, covariate_sum_squares, cross_sum
FROM experiment_variant_day_sums WHERE experiment_key = $1 AND version = $2 AND metric = $3
"""

router = APIRouter()


def _not_found(key: str) -> ApiProblem:
    return ApiProblem(404, "experiment_not_found", f"no experiment {key!r}")


@router.get(EXPERIMENTS_PATH, responses=READ_RESPONSES, tags=["experiments"])
async def list_experiments(
    caller: Caller,
    db: Db,
    status: Annotated[
        Literal["running", "stopped"] | None, Query(description="Only versions in this state")
    ] = None,
) -> JSONResponse:
    """The latest version of every experiment (optionally only running or stopped ones). Staff only."""
    await require_staff_audited(db, caller, EXPERIMENTS_PATH, "cohort")
    async with db.acquire() as conn:
        versions = await store.latest(conn)
        await audit.record(conn, caller, EXPERIMENTS_PATH, subject=None, scope="cohort")
    return JSONResponse({"experiments": [v.as_json() for v in versions if status in (None, v.status)]})


@router.post(EXPERIMENTS_PATH, status_code=201, responses=WRITE_RESPONSES, tags=["experiments"])
async def create_experiment(
    caller: Caller,
    db: Db,
    settings: AppSettings,
    definition: ExperimentDefinition,
    new_version: Annotated[bool, Query(description="Stop the running version and start a new one")] = False,
) -> JSONResponse:
    """Define an experiment (its next version). Staff only."""
    await require_staff_audited(db, caller, EXPERIMENTS_PATH, "cohort")
    async with db.acquire() as conn:
        try:
            stored = await store.create(conn, definition, caller.user_hash, new_version=new_version)
        except store.ExperimentConflict as exc:
            raise ApiProblem(409, "experiment_running", str(exc)) from None
        await audit.record(conn, caller, EXPERIMENTS_PATH, subject=None, scope="cohort")
        await store.publish(conn, settings)
    return JSONResponse(stored.as_json(), status_code=201)


@router.get(EXPERIMENT_PATH, responses=WRITE_RESPONSES, tags=["experiments"])
async def show_experiment(caller: Caller, db: Db, key: Key) -> JSONResponse:
    """Every version of one experiment (its history). Staff only."""
    await require_staff_audited(db, caller, EXPERIMENT_PATH, "cohort")
    async with db.acquire() as conn:
        versions = await store.history(conn, key)
        await audit.record(conn, caller, EXPERIMENT_PATH, subject=None, scope="cohort")
    if not versions:
        raise _not_found(key)
    return JSONResponse({"key": key, "versions": [v.as_json() for v in versions]})


@router.post(STOP_PATH, responses=WRITE_RESPONSES, tags=["experiments"])
async def stop_experiment(caller: Caller, db: Db, settings: AppSettings, key: Key) -> JSONResponse:
    """Stop the running version: apps stop assigning learners to it. Staff only."""
    await require_staff_audited(db, caller, STOP_PATH, "cohort")
    async with db.acquire() as conn:
        try:
            stopped = await store.stop(conn, key)
        except store.ExperimentNotFound:
            raise _not_found(key) from None
        await audit.record(conn, caller, STOP_PATH, subject=None, scope="cohort")
        await store.publish(conn, settings)
    return JSONResponse(stopped.as_json())


@router.get(ANALYSIS_PATH, responses=WRITE_RESPONSES, tags=["experiments"])
async def experiment_analysis(
    caller: Caller,
    db: Db,
    settings: AppSettings,
    key: Key,
    version: Annotated[int | None, Query(ge=1, description="Default: the latest version")] = None,
) -> JSONResponse:
    """Per-variant table, lifts with intervals, sample-ratio check, sequential results, sample size so
    far against needed; variants under k learners show no numbers. Staff only."""
    await require_staff_audited(db, caller, ANALYSIS_PATH, "cohort")
    async with db.acquire() as conn:
        versions = await store.history(conn, key)
        chosen = next((v for v in reversed(versions) if version is None or v.version == version), None)
        if chosen is None:
            raise _not_found(key)
        rows = await conn.fetch(_SUMS_SQL, key, chosen.version)
        await audit.record(conn, caller, ANALYSIS_PATH, subject=None, scope="cohort")
    by_key = {(r["variant"], r["metric"]): dict(r) for r in rows}
    exposed = {r["variant"]: int(r["n"]) for r in rows if r["metric"] == "sessions"}
    result = analyse(chosen.definition, exposed, by_key, k=settings.min_cohort_size)
    body = {"key": key, "version": chosen.version, "status": chosen.status, **result}
    return JSONResponse(body, headers={"Cache-Control": "private, max-age=30", "Vary": "Authorization"})


@router.get(DAYS_PATH, responses=WRITE_RESPONSES, tags=["experiments"])
async def experiment_days(
    caller: Caller,
    db: Db,
    settings: AppSettings,
    key: Key,
    metric: Annotated[str | None, Query(max_length=200, description="Default: the primary metric")] = None,
    version: Annotated[int | None, Query(ge=1, description="Default: the latest version")] = None,
) -> JSONResponse:
    """The always-valid sequential result of one metric looked at each day (UTC), from the exact per-day
    sums: each day's look and the watched result through it; variants under k learners show no numbers.
    404 when the experiment, the version or the metric (in its definition) does not exist. Staff only."""
    await require_staff_audited(db, caller, DAYS_PATH, "cohort")
    async with db.acquire() as conn:
        versions = await store.history(conn, key)
        chosen = next((v for v in reversed(versions) if version is None or v.version == version), None)
        if chosen is None:
            raise _not_found(key)
        wanted = metric or chosen.definition.primary_metric
        if wanted not in chosen.definition.metrics:
            raise ApiProblem(404, "not_found", f"experiment {key!r} has no metric {wanted!r}")
        rows = await conn.fetch(_DAY_SUMS_SQL, key, chosen.version, wanted)
        await audit.record(conn, caller, DAYS_PATH, subject=None, scope="cohort")
    looks = daily_looks(chosen.definition, wanted, rows, k=settings.min_cohort_size)
    body = {"key": key, "version": chosen.version, "metric": wanted, "days": looks}
    return JSONResponse(body, headers={"Cache-Control": "private, max-age=30", "Vary": "Authorization"})
