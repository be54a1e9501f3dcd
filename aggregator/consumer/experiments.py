"""Experiment rollups: per-learner state and exact per-variant sums, in the batch transaction.

Every statistic of an experiment (``aggregator/experiments/statistics.py``) needs, per variant and
metric, sums over learners of their per-learner totals: n, Σy, Σy² (rates: learners with y > 0) and, for
CUPED, Σx, Σx², Σxy of a pre-exposure covariate x (the same metric over the
:data:`COVARIATE_DAYS` days before exposure). So the aggregator keeps, per learner and experiment version,
the first exposure (time, event id, variant) and each metric's (y, x); and it moves the variant sums by
the difference between a learner's old and new contribution (``y -> y + d`` moves Σy² by ``2yd + d²``).
Totals are ``Decimal`` and the sums ``numeric``: exact, so the sums equal the brute-force ones.

Which events count is decided by event time, never by arrival:

* an input event (:data:`INPUT_TYPES`) of a learner already exposed is added to y (at or after the first
  exposure) or x (within the covariate window before it);
* an exposure that is the learner's first known one, or earlier than the stored one (out of order),
  recomputes the learner's state from their own raw events (the partial index of 0013; this
  transaction's events included), so events that arrived before it are counted;
* each transaction first takes an advisory lock per learner (in hash order: no deadlock between
  aggregators), so an exposure and a learner's events committed concurrently by two aggregators
  cannot miss each other: whichever commits second sees the other.

Per variant, metric and UTC day (``experiment_variant_day_sums``, migration 0021) the same sums move by
day of event time: the row of day D holds the change of the sums on day D, so the sums as they stood at
the end of any day are the running total of the day rows up to it (what the sequential method reads
per day). A learner's contribution on day D is computed from their totals up to D; a change of state
moves each day row by the difference between the learner's old and new per-day contributions. Rows of
learners stored before 0021 (no per-day totals) put their earlier totals on the exposure day and enter
the day rows at their next change.

A metric ``custom:T`` (``definitions.metric_of``) counts the learner's stored events of the custom type
T; only experiments naming one read custom events (registered ones: the aggregator stores no other).

Only events new to the store reach :func:`apply_experiments` (the rollups' exactly-once rule), so
redelivery, duplicates and crashes count each event once. An exposure of an unknown experiment
version or variant is ignored. Events stay counted after an experiment stops (its sums are frozen by the
apps no longer exposing learners, not by the aggregator).
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from ...instrumentation.experiments import EXPOSURE_EVENT
from ..experiments.definitions import METRICS, custom_event_type, metric_of

__all__ = ["COVARIATE_DAYS", "INPUT_TYPES", "ExperimentInput", "apply_experiments", "contribution"]

COVARIATE_DAYS = 14
DAY_US = 86_400_000_000
COVARIATE_US = COVARIATE_DAYS * DAY_US
INPUT_TYPES = frozenset(
    {EXPOSURE_EVENT, "session_start", "session_end", "material_complete", "xp_awarded", "ai_coach_feedback"}
)
"""Event types the experiment rollups read (the same list as the partial index of migration 0013)."""
_CONTEXT = decimal.Context(prec=60)
_RATING_PLACES = Decimal("1e-9")
_ZERO = Decimal(0)
_ONE = Decimal(1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

ExperimentInput = tuple[str, str, int, Any, dict[str, Any]]
"""``(user_hash, event_type, time_us, event_id, properties)`` of a new event the rollups read."""

_LOCK = """
SELECT pg_advisory_xact_lock(h)
FROM (SELECT DISTINCT hashtextextended(u, 19) AS h FROM unnest($1::text[]) AS u ORDER BY h) AS locks
"""
_STATES = """
SELECT user_hash, experiment_key, version, variant, exposed_at, exposure_id, totals::text AS totals
FROM experiment_learners WHERE user_hash = ANY($1::text[]) FOR UPDATE
"""
_RAW = """
SELECT e.user_hash, e.event_type, e.occurred_at, e.event_id, e.properties::text AS properties
FROM unnest($1::text[], $2::timestamptz[]) AS w(u, since)
JOIN analytics_events AS e ON e.user_hash = w.u AND e.occurred_at >= w.since
WHERE e.user_hash IS NOT NULL AND e.event_type = ANY($3::text[])
"""
_RAW_CUSTOM = _RAW.replace("WHERE", "WHERE e.event_type LIKE '%/%' AND")
"""Custom types: the partial index of 0021 (custom types hold a ``/``)."""
_UPSERT_LEARNERS = """
INSERT INTO experiment_learners AS l
    (user_hash, experiment_key, version, variant, exposed_at, exposure_id, totals)
SELECT u, k, v, variant, t, id, totals::jsonb FROM unnest($1::text[], $2::text[], $3::int[], $4::text[],
    $5::timestamptz[], $6::uuid[], $7::text[]) AS r(u, k, v, variant, t, id, totals)
ORDER BY 1, 2, 3
ON CONFLICT (user_hash, experiment_key, version) DO UPDATE SET variant = excluded.variant,
    exposed_at = excluded.exposed_at, exposure_id = excluded.exposure_id, totals = excluded.totals
"""
_UPSERT_SUMS = """
INSERT INTO experiment_variant_sums AS s (experiment_key, version, variant, metric, n, successes, sum,
    sum_squares, covariate_sum, covariate_sum_squares, cross_sum)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
    $7::numeric[], $8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[])
ORDER BY 1, 2, 3, 4
ON CONFLICT (experiment_key, version, variant, metric) DO UPDATE SET n = s.n + excluded.n,
    successes = s.successes + excluded.successes, sum = s.sum + excluded.sum,
    sum_squares = s.sum_squares + excluded.sum_squares,
    covariate_sum = s.covariate_sum + excluded.covariate_sum,
    covariate_sum_squares = s.covariate_sum_squares + excluded.covariate_sum_squares,
    cross_sum = s.cross_sum + excluded.cross_sum
"""
_UPSERT_DAY_SUMS = (
    _UPSERT_SUMS.replace("experiment_variant_sums", "experiment_variant_day_sums")
    .replace("metric, n,", "metric, day, n,")
    .replace(
        "$4::text[], $5::bigint[], $6::bigint[],", "$4::text[], $12::date[], $5::bigint[], $6::bigint[],"
    )
    .replace("ORDER BY 1, 2, 3, 4", "ORDER BY 1, 2, 3, 4, 5")
    .replace(
        "(experiment_key, version, variant, metric) DO", "(experiment_key, version, variant, metric, day) DO"
    )
)
_DEFINED = "SELECT experiment_key, version, definition::text AS definition FROM experiment_versions"
_ZEROS = (0, 0, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO)
Vector = tuple[Any, ...]
"""A learner's contribution to the sums: (n, successes, y, y², x, x², xy)."""


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value))
    except decimal.InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def contribution(metric: str, event_type: str, properties: dict[str, Any]) -> Decimal | None:
    """What one event adds to a learner's total of ``metric`` (``None``: nothing)."""
    if metric == "completion_rate":
        return _ONE if event_type == "material_complete" else None
    if metric == "study_minutes":  # kept in seconds (the catalogue's scale divides by 60)
        return _number(properties.get("duration_s")) if event_type == "session_end" else None
    if metric == "sessions":
        return _ONE if event_type == "session_start" else None
    if metric == "xp":
        return _number(properties.get("xp_amount")) if event_type == "xp_awarded" else None
    if metric == "ai_coach_rating":
        return _number(properties.get("rating")) if event_type == "ai_coach_feedback" else None
    if metric == "day7_return":
        return _ONE
    return _ONE if custom_event_type(metric) == event_type else None


@dataclass
class LearnerState:
    """One learner in one experiment version: first exposure; per metric [y, y events, x, x events] and,
    per UTC day of the events counted in y, [y, y events] of that day."""

    variant: str
    exposed_us: int
    exposure_id: Any
    totals: dict[str, list[Decimal]] = field(default_factory=dict)
    metrics: tuple[str, ...] = tuple(METRICS)
    days: dict[str, dict[int, list[Decimal]]] = field(default_factory=dict)
    legacy: bool = False
    """Stored before per-day totals existed: the day rows hold nothing of this learner yet."""

    def add(self, event_type: str, time_us: int, properties: dict[str, Any]) -> None:
        offset = time_us - self.exposed_us
        for metric in self.metrics:
            if metric == "day7_return":
                slot = 0 if 7 * DAY_US <= offset < 8 * DAY_US else 2 if -COVARIATE_US <= offset < 0 else None
            else:
                slot = 0 if offset >= 0 else 2 if offset >= -COVARIATE_US else None
            if slot is None:
                continue
            amount = contribution(metric, event_type, properties)
            if amount is None:
                continue
            total = self.totals.setdefault(metric, [_ZERO, _ZERO, _ZERO, _ZERO])
            total[slot] = _CONTEXT.add(total[slot], amount)
            total[slot + 1] += 1
            if slot == 0:
                day = self.days.setdefault(metric, {}).setdefault(time_us // DAY_US, [_ZERO, _ZERO])
                day[0] = _CONTEXT.add(day[0], amount)
                day[1] += 1

    def values(self, metric: str) -> tuple[Decimal, Decimal] | None:
        """The learner's (y, x) of ``metric`` as the sums count them; ``None``: not counted in it."""
        y, y_events, x, x_events = self.totals.get(metric) or (_ZERO, _ZERO, _ZERO, _ZERO)
        return _counted(metric, y, y_events, x, x_events)

    def vector(self, metric: str) -> Vector | None:
        return _vector(metric, self.values(metric))

    def day_vectors(self, metric: str) -> dict[int, Vector]:
        """Per UTC day, the change of this learner's contribution that day (from the exposure day on)."""
        _y, _y_events, x, x_events = self.totals.get(metric) or (_ZERO, _ZERO, _ZERO, _ZERO)
        days = self.days.get(metric, {})
        first = self.exposed_us // DAY_US
        out: dict[int, Vector] = {}
        y, y_events, previous = _ZERO, _ZERO, _ZEROS
        for day in sorted({first, *days}):
            if day in days:
                y, y_events = _CONTEXT.add(y, days[day][0]), y_events + days[day][1]
            now = _vector(metric, _counted(metric, y, y_events, x, x_events)) or _ZEROS
            delta = tuple(a - b for a, b in zip(now, previous, strict=True))
            if any(delta):
                out[day] = delta
            previous = now
        return out

    def copy(self) -> LearnerState:
        return LearnerState(
            self.variant,
            self.exposed_us,
            self.exposure_id,
            {m: list(t) for m, t in self.totals.items()},
            self.metrics,
            {m: {d: list(v) for d, v in days.items()} for m, days in self.days.items()},
            self.legacy,
        )

    def document(self) -> str:
        document: dict[str, Any] = {m: [str(v) for v in t] for m, t in self.totals.items()}
        document[_DAYS] = {
            m: {str(d): [str(v) for v in t] for d, t in days.items()} for m, days in self.days.items()
        }
        return orjson.dumps(document).decode()

    @classmethod
    def from_record(cls, record: asyncpg.Record, metrics: tuple[str, ...]) -> LearnerState:
        document = orjson.loads(record["totals"])
        stored_days = document.pop(_DAYS, None)
        totals = {m: [Decimal(v) for v in t] for m, t in document.items()}
        exposed_us = (record["exposed_at"] - _EPOCH) // _MICROSECOND
        if stored_days is not None:
            days = {
                m: {int(d): [Decimal(v) for v in t] for d, t in by_day.items()}
                for m, by_day in stored_days.items()
            }
            return cls(record["variant"], exposed_us, record["exposure_id"], totals, metrics, days)
        first = (
            exposed_us // DAY_US
        )  # before 0021: the totals so far, on the exposure day (day 7 for day7_return)
        days = {
            m: {first + (7 if m == "day7_return" else 0): [t[0], t[1]]} for m, t in totals.items() if t[1]
        }
        return cls(record["variant"], exposed_us, record["exposure_id"], totals, metrics, days, legacy=True)


_DAYS = "~days"
"""Key of the per-day totals in ``experiment_learners.totals`` (no metric name starts with ``~``)."""


def _counted(
    metric: str, y: Decimal, y_events: Decimal, x: Decimal, x_events: Decimal
) -> tuple[Decimal, Decimal] | None:
    definition = metric_of(metric)
    if definition.raters_only:
        if not y_events:
            return None
        mean_x = _CONTEXT.divide(x, x_events).quantize(_RATING_PLACES) if x_events else _ZERO
        return _CONTEXT.divide(y, y_events).quantize(_RATING_PLACES), mean_x
    if definition.kind == "rate":
        return (_ONE if y > 0 else _ZERO), (_ONE if x > 0 else _ZERO)
    return y, x


def _vector(metric: str, values: tuple[Decimal, Decimal] | None) -> Vector | None:
    if values is None:
        return None
    y, x = values
    success = 1 if (metric_of(metric).kind == "rate" and y > 0) else 0
    return (1, success, y, _CONTEXT.multiply(y, y), x, _CONTEXT.multiply(x, x), _CONTEXT.multiply(x, y))


class _Sums:
    """Deltas of the variant sums, [n, successes, Σy, Σy², Σx, Σx², Σxy] per (key, version, variant, metric)
    and per (key, version, variant, metric, day)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int, str, str], list[Any]] = {}
        self.day_rows: dict[tuple[str, int, str, str, int], list[Any]] = {}

    def move(self, key: str, version: int, old: LearnerState | None, new: LearnerState) -> None:
        for state, sign in ((old, -1), (new, 1)):
            if state is None:
                continue
            for metric in state.metrics:
                vector = state.vector(metric)
                if vector is not None:
                    _add(
                        self.rows.setdefault((key, version, state.variant, metric), [0, 0] + [_ZERO] * 5),
                        vector,
                        sign,
                    )
                if state.legacy and sign < 0:
                    continue  # its days were never in the day rows
                for day, delta in state.day_vectors(metric).items():
                    row = self.day_rows.setdefault(
                        (key, version, state.variant, metric, day), [0, 0] + [_ZERO] * 5
                    )
                    _add(row, delta, sign)

    def columns(self) -> list[list[Any]]:
        keys = sorted(self.rows)
        rows = [self.rows[k] for k in keys]
        return [[k[i] for k in keys] for i in range(4)] + [[r[i] for r in rows] for i in range(7)]

    def day_columns(self) -> list[list[Any]]:
        keys = sorted(self.day_rows)
        rows = [self.day_rows[k] for k in keys]
        days = [_EPOCH.date() + timedelta(days=k[4]) for k in keys]
        return [[k[i] for k in keys] for i in range(4)] + [[r[i] for r in rows] for i in range(7)] + [days]


def _add(row: list[Any], vector: Vector, sign: int) -> None:
    row[0] += sign * vector[0]
    row[1] += sign * vector[1]
    for index in range(2, 7):
        row[index] = _CONTEXT.add(row[index], vector[index] if sign > 0 else -vector[index])


def _time_us(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _first_exposures(
    inputs: Sequence[ExperimentInput], defined: dict[tuple[str, int], set[str]]
) -> dict[tuple[str, str, int], tuple[int, Any, str]]:
    """(user, key, version) -> the earliest (time_us, event id, variant) among these exposures."""
    first: dict[tuple[str, str, int], tuple[int, Any, str]] = {}
    for user, event_type, time_us, event_id, properties in inputs:
        if event_type != EXPOSURE_EVENT:
            continue
        key, version, variant = (
            properties.get("experiment_key"),
            properties.get("experiment_version"),
            properties.get("variant"),
        )
        if type(version) is not int or variant not in defined.get((str(key), version), ()):
            continue
        seen = first.get((user, str(key), version))
        candidate = (time_us, event_id, str(variant))
        if seen is None or (time_us, str(event_id)) < (seen[0], str(seen[1])):
            first[(user, str(key), version)] = candidate
    return first


@dataclass(frozen=True)
class _Defined:
    variants: set[str]
    metrics: tuple[str, ...]
    """The catalogue, then the definition's ``custom:`` metrics."""


async def _definitions(conn: asyncpg.Connection) -> dict[tuple[str, int], _Defined]:
    out = {}
    for r in await conn.fetch(_DEFINED):
        document = orjson.loads(r["definition"])
        named = [document.get("primary_metric"), *document.get("guardrail_metrics", [])]
        custom = tuple(dict.fromkeys(m for m in named if isinstance(m, str) and custom_event_type(m)))
        out[(r["experiment_key"], r["version"])] = _Defined(set(document["variants"]), (*METRICS, *custom))
    return out


async def _raw_events(
    conn: asyncpg.Connection, users: list[str], times: list[datetime], custom_types: list[str]
) -> list[asyncpg.Record]:
    records = list(await conn.fetch(_RAW, users, times, sorted(INPUT_TYPES)))
    if custom_types:
        records += await conn.fetch(_RAW_CUSTOM, users, times, custom_types)
    return records


async def _recompute(
    conn: asyncpg.Connection,
    states: dict[tuple[str, str, int], LearnerState],
    learners: Iterable[tuple[str, str, int]],
) -> None:
    """Fill the (fresh) states of ``learners`` from their own raw events."""
    since: dict[str, int] = {}
    custom: set[str] = set()
    for user, key, version in learners:
        state = states[(user, key, version)]
        start = state.exposed_us - COVARIATE_US
        since[user] = min(start, since.get(user, start))
        custom.update(t for t in map(custom_event_type, state.metrics) if t is not None)
    if not since:
        return
    users = sorted(since)
    times = [_EPOCH + since[u] * _MICROSECOND for u in users]
    by_user: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    for record in await _raw_events(conn, users, times, sorted(custom)):
        properties = record["properties"]
        document = orjson.loads(properties) if isinstance(properties, str | bytes) else properties
        by_user.setdefault(record["user_hash"], []).append(
            (record["event_type"], _time_us(record["occurred_at"]), document)
        )
    for user, key, version in learners:
        state = states[(user, key, version)]
        for event_type, time_us, properties in by_user.get(user, ()):
            state.add(event_type, time_us, properties)


async def apply_experiments(conn: asyncpg.Connection, inputs: Sequence[ExperimentInput]) -> None:
    """Move the experiment state and sums by these new events (inside the batch transaction)."""
    if not inputs:
        return
    defined = await _definitions(conn)
    if not defined:
        return
    users = sorted({i[0] for i in inputs})
    await conn.execute(_LOCK, users)
    stored = {}
    for r in await conn.fetch(_STATES, users):
        known = defined.get((r["experiment_key"], r["version"]))
        metrics = known.metrics if known is not None else tuple(METRICS)
        stored[(r["user_hash"], r["experiment_key"], r["version"])] = LearnerState.from_record(r, metrics)
    states = {k: s.copy() for k, s in stored.items()}
    exposures = (
        _first_exposures(inputs, {k: d.variants for k, d in defined.items()})
        if any(i[1] == EXPOSURE_EVENT for i in inputs)
        else {}
    )
    fresh: list[tuple[str, str, int]] = []
    for learner, (time_us, event_id, variant) in sorted(exposures.items()):
        old = stored.get(learner)
        if old is not None and (old.exposed_us, str(old.exposure_id)) <= (time_us, str(event_id)):
            continue
        states[learner] = LearnerState(variant, time_us, event_id, metrics=defined[learner[1:]].metrics)
        fresh.append(learner)
    await _recompute(conn, states, fresh)
    recomputed = set(fresh)
    by_user: dict[str, list[tuple[str, str, int]]] = {}
    for learner in states:
        if learner not in recomputed:
            by_user.setdefault(learner[0], []).append(learner)
    for user, event_type, time_us, _event_id, properties in inputs:
        for learner in by_user.get(user, ()):
            states[learner].add(event_type, time_us, properties)
    await _write(conn, stored, states)


async def _write(
    conn: asyncpg.Connection,
    stored: dict[tuple[str, str, int], LearnerState],
    states: dict[tuple[str, str, int], LearnerState],
) -> None:
    changed = sorted(k for k, s in states.items() if k not in stored or stored[k] != s)
    if not changed:
        return
    sums = _Sums()
    for learner in changed:
        sums.move(learner[1], learner[2], stored.get(learner), states[learner])
    await conn.execute(
        _UPSERT_LEARNERS,
        [k[0] for k in changed],
        [k[1] for k in changed],
        [k[2] for k in changed],
        [states[k].variant for k in changed],
        [_EPOCH + states[k].exposed_us * _MICROSECOND for k in changed],
        [states[k].exposure_id for k in changed],
        [states[k].document() for k in changed],
    )
    await conn.execute(_UPSERT_SUMS, *sums.columns())
    if sums.day_rows:
        await conn.execute(_UPSERT_DAY_SUMS, *sums.day_columns())
