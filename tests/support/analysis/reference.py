"""Learner-path workloads and brute-force funnels and retention, independent of the engine.

Workloads model learner paths: sessions that start, view a material, make progress,
complete it and earn XP with a drop-off at every stage, some coach questions and
achievements, and learners who come back after days or weeks (most do not). Times are
whole seconds, so events of one learner often share a timestamp (ties).

The reference works on plain Python lists, one learner at a time, following the definitions
in docs/analytics.md literally: it enumerates chains (as sets of reachable (event, start)
states per included step sequence), windows and periods (zoneinfo per event).
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from studyin_analytics.aggregator.analysis.definitions import (
    EventMatcher,
    FunnelDefinition,
    RetentionDefinition,
)

US = 1_000_000
DAY_S = 86_400
MATERIALS = {"m-ecg": "video", "m-renal": "quiz", "m-pharm": "flashcards", "m-neuro": "case"}
TOPICS = ("cardiology", "pharmacology")
ACHIEVEMENTS = ("first-steps", "streak-7")
EPOCH = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday, a few weeks before a DST change in Europe


@dataclass
class Event:
    user_hash: str
    time_us: int
    event_type: str
    event_id: uuid.UUID
    props: dict[str, Any]

    @property
    def tie(self) -> int:
        return int.from_bytes(self.event_id.bytes[:8], "big", signed=True)

    def row(self) -> dict[str, Any]:
        return {
            "user_hash": self.user_hash,
            "time_us": self.time_us,
            "event_type": self.event_type,
            "tie": self.tie,
            **self.props,
        }


def learner_paths(seed: int, learners: int = 40, weeks: int = 8) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = []
    start_s = int(EPOCH.timestamp())

    def add(user: str, t: int, kind: str, **props: Any) -> None:
        events.append(Event(user, t * US, kind, uuid.UUID(int=rng.getrandbits(128)), props))

    for n in range(learners):
        user = f"k1:{n:032x}"
        t = start_s + rng.randrange(weeks * 7 * DAY_S // 2)
        sessions = 1 + (rng.random() < 0.5) + (rng.random() < 0.3) * rng.randrange(1, 4)
        for _ in range(sessions):
            session = str(uuid.UUID(int=rng.getrandbits(128)))
            add(user, t, "session_start", session_id=session)
            material = rng.choice(list(MATERIALS))
            kind = MATERIALS[material]
            t += rng.choice((0, 0, 1, 5, 30))
            add(user, t, "material_view", material_id=material, material_type=kind)
            if rng.random() < 0.6:
                t += rng.choice((0, 1, 20, 300))
                add(user, t, "material_progress", material_id=material, material_type=kind)
                if rng.random() < 0.5:
                    t += rng.choice((0, 2, 60, 900, 3 * DAY_S))
                    add(user, t, "material_complete", material_id=material, material_type=kind)
                    if rng.random() < 0.7:
                        add(
                            user,
                            t + rng.choice((0, 1)),
                            "xp_awarded",
                            xp_amount=rng.choice((10, 25)),
                            xp_reason="quiz",
                        )
            if rng.random() < 0.25:
                t += rng.choice((0, 40))
                add(user, t, "ai_coach_interaction", topic_category=rng.choice(TOPICS))
            if rng.random() < 0.1:
                add(user, t, "achievement_unlocked", achievement_id=rng.choice(ACHIEVEMENTS))
            duration = rng.choice((120, 700, 1500))
            t += duration
            add(user, t, "session_end", session_id=session, duration_s=float(duration))
            if rng.random() < 0.1:  # a second end of the same session: counted once
                add(user, t + 5, "session_end", session_id=session, duration_s=float(duration + 5))
            t += rng.choice((3600, DAY_S, 3 * DAY_S, 9 * DAY_S, 20 * DAY_S))
    return events


# --- brute force ----------------------------------------------------------------------------------


def matches(matcher: EventMatcher, e: Event) -> bool:
    if e.event_type != matcher.event:
        return False
    return all(e.props.get(f.property) in f.values for f in matcher.filters)


def _by_learner(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e.user_hash].append(e)
    for seq in out.values():
        seq.sort(key=lambda e: (e.time_us, e.tie))
    return out


@dataclass
class LearnerTruth:
    reached: list[bool]
    first_us: list[int | None]
    entry: Event


def _chain_states(d: FunnelDefinition, seq: list[Event], included: list[int]) -> list[set[tuple[int, int]]]:
    """For steps ``included`` (in order), the reachable (event index, start index) after each."""
    t0, t1 = int(d.start.timestamp() * US), int(d.end.timestamp() * US)
    first = d.steps[included[0]]
    states = {(i, i) for i, e in enumerate(seq) if matches(first, e) and t0 <= e.time_us < t1}
    out = [states]
    for j in included[1:]:
        step = d.steps[j]
        nxt = set()
        for i, s in states:
            later = [i + 1] if d.order == "strict" else range(i + 1, len(seq))
            for n in later:
                if n >= len(seq) or not matches(step, seq[n]):
                    continue
                if seq[n].time_us - seq[s].time_us > d.window_s * US:
                    continue
                if step.within_s is not None and seq[n].time_us - seq[i].time_us > step.within_s * US:
                    continue
                if any(
                    ex.from_step < j + 1 <= ex.to_step and matches(ex, seq[m])
                    for ex in d.exclusions
                    for m in range(i + 1, n)
                ):
                    continue
                nxt.add((n, s))
        states = nxt
        out.append(states)
    return out


def funnel_truth(d: FunnelDefinition, events: list[Event]) -> dict[str, LearnerTruth]:
    """Every entering learner's truth."""
    t0, t1 = int(d.start.timestamp() * US), int(d.end.timestamp() * US)
    n = len(d.steps)
    out = {}
    for user, seq in _by_learner(events).items():
        if d.order == "any":
            truth = _any_truth(d, seq, t0, t1)
            if truth is not None:
                out[user] = truth
            continue
        entries = [e for e in seq if matches(d.steps[0], e) and t0 <= e.time_us < t1]
        if not entries:
            continue
        reached = [False] * n
        first: list[int | None] = [None] * n
        optional = [k for k in range(n) if d.steps[k].optional]
        for chosen in itertools.chain.from_iterable(
            itertools.combinations(optional, r) for r in range(len(optional) + 1)
        ):
            included = [k for k in range(n) if not d.steps[k].optional or k in chosen]
            for j, states in zip(included, _chain_states(d, seq, included), strict=True):
                if states:
                    reached[j] = True
                    t = min(seq[i].time_us for i, _ in states)
                    first[j] = t if first[j] is None else min(first[j], t)
        out[user] = LearnerTruth(reached, first, entries[0])
    return out


def _any_truth(d: FunnelDefinition, seq: list[Event], t0: int, t1: int) -> LearnerTruth | None:
    best = 0
    entry = None
    for i, e in enumerate(seq):
        if not (t0 <= e.time_us < t1) or not any(matches(s, e) for s in d.steps):
            continue
        entry = entry or e
        window = [x for x in seq[i:] if x.time_us <= e.time_us + d.window_s * US]
        best = max(best, sum(any(matches(s, x) for x in window) for s in d.steps))
    if entry is None:
        return None
    return LearnerTruth([best >= k for k in range(1, len(d.steps) + 1)], [None] * len(d.steps), entry)


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


# --- retention ------------------------------------------------------------------------------------


def _period(t_us: int, unit: str, tz: str) -> int:
    day = datetime.fromtimestamp(t_us / US, ZoneInfo(tz)).date()
    return _period_of_date(day, unit)


def _period_of_date(day: date, unit: str) -> int:
    if unit == "day":
        return day.toordinal()
    if unit == "week":
        return (day.toordinal() - 1) // 7  # ordinal 1 (0001-01-01) was a Monday
    return day.year * 12 + day.month - 1


def retention_truth(
    d: RetentionDefinition, events: list[Event]
) -> tuple[list[int], list[list[int]], list[list[float]]]:
    """(sizes, retained[c][n], metric sums[c][n]) by brute force."""
    first = _period_of_date(d.start, d.period)
    sizes = [0] * d.cohorts
    retained = [[0] * (d.periods + 1) for _ in range(d.cohorts)]
    metric = [[0.0] * (d.periods + 1) for _ in range(d.cohorts)]
    for seq in _by_learner(events).values():
        starts = [e for e in seq if d.start_event is None or matches(d.start_event, e)]
        if not starts:
            continue
        start_periods = {_period(e.time_us, d.period, d.timezone) - first for e in starts}
        if d.mode == "first_time":
            start_periods = {_period(starts[0].time_us, d.period, d.timezone) - first}
        seen_sessions: set[str] = set()
        first_ends = []
        for e in seq:
            if e.event_type == "session_end":
                sid = e.props.get("session_id")
                if sid not in seen_sessions:
                    first_ends.append(e)
                if sid is not None:
                    seen_sessions.add(sid)
        ret = d.return_event
        returns = set()
        for e in seq:
            counted = ret.kind == "any_activity" or (
                ret.kind == "material_complete" and e.event_type == ret.kind
            )
            if counted or (ret.kind == "event" and ret.matcher is not None and matches(ret.matcher, e)):
                returns.add(_period(e.time_us, d.period, d.timezone) - first)
        if ret.kind == "session":
            for e in first_ends:
                if e.props["duration_s"] >= ret.min_session_minutes * 60:
                    returns.add(_period(e.time_us, d.period, d.timezone) - first)
        values: dict[int, float] = defaultdict(float)
        if d.metric == "xp":
            for e in seq:
                if e.event_type == "xp_awarded":
                    values[_period(e.time_us, d.period, d.timezone) - first] += e.props["xp_amount"]
        elif d.metric == "study_minutes":
            for e in first_ends:
                values[_period(e.time_us, d.period, d.timezone) - first] += e.props["duration_s"] / 60
        for c in start_periods:
            if not 0 <= c < d.cohorts:
                continue
            sizes[c] += 1
            retained[c][0] += 1
            for n in range(1, d.periods + 1):
                if c + n in returns:
                    retained[c][n] += 1
                    metric[c][n] += values.get(c + n, 0.0)
    return sizes, retained, metric
