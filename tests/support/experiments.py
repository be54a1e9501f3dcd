"""Builders of the experiment tests: workloads of learner events as bus entries, and the brute-force sums.

The reference (:func:`reference_sums`) is written from the definition of the metrics in
docs/experiments.md, one learner at a time, with no incremental state: the aggregator's per-variant sums
must equal it whatever the arrival order, duplication or batching.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.wire import EventRecord, SpanRecord
from studyin_analytics.instrumentation.custom_tracking import custom_attributes

DAY_NS = 86_400 * 10**9
METRIC_TYPES = ("session_start", "session_end", "material_complete", "xp_awarded", "ai_coach_feedback")
SumsKey = tuple[str, int, str, str]
"""(experiment key, version, variant, metric)"""


@dataclass
class Ev:
    user: str
    kind: str
    ns: int
    props: dict[str, Any]


@dataclass
class Workload:
    events: list[Ev] = field(default_factory=list)
    spans: list[SpanRecord] = field(default_factory=list)


def definition(
    key: str, variants: tuple[str, ...] = ("control", "treatment"), **extra: Any
) -> dict[str, Any]:
    return {
        "key": key,
        "variants": dict.fromkeys(variants, 1),
        "starts_at": "2020-01-01T00:00:00Z",
        "primary_metric": "study_minutes",
        "guardrail_metrics": ["completion_rate", "sessions", "xp", "ai_coach_rating", "day7_return"],
        **extra,
    }


def _props(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "session_start":
        return {"studyin.session.id": str(rng.randbytes(16).hex())}
    if kind == "session_end":
        return {"studyin.session.duration_s": round(rng.uniform(1, 3600), 3)}
    if kind == "material_complete":
        return {"studyin.material.id": "m1", "studyin.material.type": "pdf"}
    if kind == "xp_awarded":
        return {"studyin.xp.amount": rng.randint(1, 50), "studyin.xp.reason": "quiz"}
    return {
        "studyin.ai.interaction_id": "00000000-0000-4000-8000-000000000001",
        "studyin.ai.rating": rng.randint(1, 5),
    }


def build(
    rng: random.Random,
    users: list[str],
    key: str,
    start_ns: int,
    *,
    exposures_per_user: int = 2,
    custom_type: str | None = None,
) -> Workload:
    """Learners with events over ~20 days around their exposures; some learners are never exposed.
    With ``custom_type`` (registered with tests.support.custom_events.case_schema), some events are of it."""
    kinds = METRIC_TYPES + ((custom_type,) if custom_type else ())
    wl = Workload()
    for user in users:
        if rng.random() < 0.85:
            variant = rng.choice(("control", "treatment"))
            for _ in range(rng.randint(1, exposures_per_user)):
                at = start_ns + rng.randrange(0, 10 * DAY_NS) // 1000 * 1000
                wl.events.append(
                    Ev(
                        user,
                        "experiment_exposure",
                        at,
                        {
                            "studyin.experiment.key": key,
                            "studyin.experiment.version": 1,
                            "studyin.experiment.variant": variant,
                        },
                    )
                )
        for _ in range(rng.randint(0, 25)):
            kind = rng.choice(kinds)
            at = start_ns - 5 * DAY_NS + rng.randrange(0, 25 * DAY_NS) // 1000 * 1000
            props = (
                custom_attributes(kind, "1-0-0", {"case_id": "c1", "score": rng.randint(0, 100)})
                if "/" in kind
                else _props(rng, kind)
            )
            wl.events.append(Ev(user, kind, at, props))
    for ev in wl.events:  # one span per event, in its own trace: any order of arrival is possible
        attrs = {"user.hash": ev.user, "studyin.event.version": 1, **ev.props}
        name = "studyin." + ("custom" if "/" in ev.kind else ev.kind)
        wl.spans.append(
            SpanRecord(
                rng.randbytes(16),
                rng.randbytes(8),
                None,
                "studyin.event",
                wire.SPAN_KIND_INTERNAL,
                ev.ns,
                ev.ns + 1000,
                0,
                {"user.hash": ev.user},
                [EventRecord(name, ev.ns, attrs)],
                {"service.name": "test"},
            )
        )
    return wl


def entries(rng: random.Random, spans: list[SpanRecord], per_entry: int = 5) -> list[dict[Any, Any]]:
    shuffled = spans[:]
    rng.shuffle(shuffled)
    return [
        wire.entry_fields(wire.encode_records(shuffled[i : i + per_entry]), len(shuffled[i : i + per_entry]))
        for i in range(0, len(shuffled), per_entry)
    ]


def _value(kind: str, props: dict[str, Any], metric: str) -> Decimal | None:
    wanted = {
        "completion_rate": ("material_complete", None),
        "study_minutes": ("session_end", "studyin.session.duration_s"),
        "sessions": ("session_start", None),
        "xp": ("xp_awarded", "studyin.xp.amount"),
        "ai_coach_rating": ("ai_coach_feedback", "studyin.ai.rating"),
    }
    if metric == "day7_return":
        return Decimal(1)
    if metric.startswith("custom:"):
        return Decimal(1) if kind == metric.removeprefix("custom:") else None
    event_type, attribute = wanted[metric]
    if kind != event_type:
        return None
    return Decimal(1) if attribute is None else Decimal(str(props[attribute]))


def reference_sums(
    events: list[Ev], variants: tuple[str, ...] = ("control", "treatment"), custom: tuple[str, ...] = ()
) -> dict[SumsKey, tuple[Any, ...]]:
    """Brute force: per learner, the first exposure, then each metric's (y, x) from all their events."""
    day_us, window_us = 86_400 * 10**6, 14 * 86_400 * 10**6
    first: dict[tuple[str, str, int], tuple[int, str]] = {}
    for ev in events:
        if ev.kind != "experiment_exposure":
            continue
        learner = (ev.user, ev.props["studyin.experiment.key"], ev.props["studyin.experiment.version"])
        candidate = (ev.ns // 1000, ev.props["studyin.experiment.variant"])
        if learner not in first or candidate[0] < first[learner][0]:
            first[learner] = candidate
    sums: dict[SumsKey, list[Any]] = {}
    rates = {"completion_rate", "day7_return"}
    for (user, key, version), (t0, variant) in first.items():
        mine = [ev for ev in events if ev.user == user]
        for metric in (
            "completion_rate",
            "study_minutes",
            "sessions",
            "xp",
            "ai_coach_rating",
            "day7_return",
            *custom,
        ):
            y: list[Decimal] = []
            x: list[Decimal] = []
            for ev in mine:
                value = _value(ev.kind, ev.props, metric)
                if value is None:
                    continue
                offset = ev.ns // 1000 - t0
                after = 7 * day_us <= offset < 8 * day_us if metric == "day7_return" else offset >= 0
                if after:
                    y.append(value)
                elif -window_us <= offset < 0:
                    x.append(value)
            if metric == "ai_coach_rating":
                if not y:
                    continue
                places = Decimal("1e-9")
                yv = (sum(y, Decimal(0)) / len(y)).quantize(places)
                xv = (sum(x, Decimal(0)) / len(x)).quantize(places) if x else Decimal(0)
            elif metric in rates:
                yv, xv = Decimal(1 if y else 0), Decimal(1 if x else 0)
            else:
                yv, xv = sum(y, Decimal(0)), sum(x, Decimal(0))
            row = sums.setdefault((key, version, variant, metric), [0, 0] + [Decimal(0)] * 5)
            row[0] += 1
            row[1] += 1 if (metric in rates and yv > 0) else 0
            for index, amount in enumerate((yv, yv * yv, xv, xv * xv, xv * yv), start=2):
                row[index] += amount
    return {k: tuple(v) for k, v in sums.items()}


async def stored_sums(conn: Any, key: str) -> dict[SumsKey, tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT experiment_key, version, variant, metric, n, successes, sum, sum_squares, covariate_sum, "
        "covariate_sum_squares, cross_sum FROM experiment_variant_sums WHERE experiment_key = $1",
        key,
    )
    return {(r[0], r[1], r[2], r[3]): tuple(r[4:]) for r in rows if r["n"] != 0 or any(v != 0 for v in r[5:])}


def reference_day_sums(
    events: list[Ev], days: range, custom: tuple[str, ...] = ()
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Brute force per UTC day D: the sums as they stood at D's end are :func:`reference_sums` of the
    events that happened before it (exposures after D do not count yet; covariates precede exposures)."""
    out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for day in days:
        for k, v in reference_sums(
            [ev for ev in events if ev.ns < (day + 1) * DAY_NS], custom=custom
        ).items():
            out[(*k, day)] = v
    return out


async def stored_day_sums(conn: Any, key: str, days: range) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The running totals of ``experiment_variant_day_sums`` at the end of each of ``days``."""
    rows = await conn.fetch(
        "SELECT experiment_key, version, variant, metric, (day - DATE '1970-01-01') AS day, n, successes, "
        "sum, sum_squares, covariate_sum, covariate_sum_squares, cross_sum FROM experiment_variant_day_sums "
        "WHERE experiment_key = $1",
        key,
    )
    out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for day in days:
        totals: dict[tuple[Any, ...], list[Any]] = {}
        for r in rows:
            if r["day"] <= day:
                row = totals.setdefault((r[0], r[1], r[2], r[3], day), [0, 0] + [Decimal(0)] * 5)
                for i in range(7):
                    row[i] += r[5 + i]
        out.update({k: tuple(v) for k, v in totals.items() if v[0] != 0 or any(x != 0 for x in v[1:])})
    return out


ExperimentsCli = Callable[..., subprocess.CompletedProcess[str]]
"""``studyin-analytics experiments ARGS...`` run in-process (the ``experiments_cli`` fixture)."""


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment that points the command line at the test's servers, schema and key prefix."""
    return {
        "STUDYIN_ANALYTICS_POSTGRES_URL": settings.postgres_url or "",
        "STUDYIN_ANALYTICS_POSTGRES_SCHEMA": settings.postgres_schema,
        "STUDYIN_ANALYTICS_REDIS_URL": settings.redis_url or "",
        "STUDYIN_ANALYTICS_STREAM_PREFIX": settings.stream_prefix,
    }
