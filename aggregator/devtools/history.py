"""Weeks of simulated study, played through the real backend with a simulated clock.

:func:`play_history` plays the sessions of :func:`.learners.plan` one after another, in start order,
against the instrumented simulated backend (:func:`.simulation.build_backend`): before each request
the :class:`~...instrumentation.clock.ManualClock` the tracker and the ASGI instrumentation read is
set to the request's simulated time, and :class:`SimulatedLatency` (inside the instrumentation)
moves it on by the request's latency before the response goes out. So events, sessions and
request spans carry the times and durations of the simulation, and everything else (exporter,
bus, aggregator) is the real pipeline. What the learners did is counted in a
:class:`HistoryLedger` as it happens, independently of the pipeline: the truth the demo checks
every printed number against.

Inside a session: for learners on a pathway, sometimes its next module (:mod:`.pathway`); one to
three everyday materials (viewed, sometimes worked through, often completed: a little more often
in the experiment's treatment, :mod:`.experiment`), flashcard reviews for those who use them, the
AI coach with ratings for some, now and then a failing or a mistyped request. Around sessions:
streaks that grow on consecutive days and break after a missed one, XP from completions and
correct cards, level-ups and achievements.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ...exporter.event_types import API_REQUEST
from ...instrumentation.clock import ManualClock
from ...instrumentation.experiments import EXPOSURE_EVENT
from ..consumer import histogram
from . import experiment
from .drivers import Client
from .learners import MATERIALS, Learner, PlannedSession
from .pathway import PATHWAYS, PathwayState, next_module
from .simulation import FLASHCARD_XP, Ledger

COMPLETION_XP = 10
COMPLETION_CHANCE = 0.55
"""Of an everyday material viewed in a session (a pathway's modules have their own chances)."""
MIN_GAP_NS = 1_000_000
"""Between two requests of a session: events of different requests never share a microsecond, so
their order is their time's (the funnel's truth relies on it)."""
XP_PER_LEVEL = 200
COACH_TOPICS = ("cardiology", "pharmacology", "nephrology", "neurology", "endocrinology")

Scope = MutableMapping[str, Any]


def level_of(xp: int) -> int:
    return 1 + xp // XP_PER_LEVEL


@dataclass
class RouteTruth:
    requests: int = 0
    errors: int = 0
    latency_hist: dict[str, int] = field(default_factory=dict)


@dataclass
class LearnerState:
    """What the app knows of a learner between sessions (and the truth of their gamification)."""

    xp: int = 0
    completions: int = 0
    streak: int = 0
    streak_day: date | None = None
    longest: int = 0
    achievements: set[str] = field(default_factory=set)
    coach_used: bool = False
    last_day: date | None = None
    level: int = 1
    pathway: PathwayState = field(default_factory=PathwayState)
    variant: str | None = None
    """The learner's variant of :data:`.experiment.KEY`, as the backend answered it."""


@dataclass
class HistoryLedger(Ledger):
    """:class:`.simulation.Ledger` plus study time per learner and day, gamification and routes."""

    study_seconds: dict[tuple[str, date], float] = field(default_factory=dict)
    learners: dict[str, LearnerState] = field(default_factory=dict)
    routes: dict[tuple[str, str], RouteTruth] = field(default_factory=dict)
    coach_ratings: list[int] = field(default_factory=list)
    variants: dict[str, str] = field(default_factory=dict)
    """Exposed learners of :data:`.experiment.KEY` and their variants."""
    pathway_events: dict[str, dict[str, list[tuple[int, int]]]] = field(default_factory=dict)
    """Pathway -> learner -> (funnel step, time in µs): the first module's views (step 0) and
    each module's completion (step i + 1)."""

    def study_minutes(self, user_id: str, since: date) -> float:
        """As the overview sums them: per UTC day, rounded to 3 decimals, then summed."""
        total = sum(
            round(seconds / 60, 3)
            for (user, day), seconds in self.study_seconds.items()
            if user == user_id and day >= since
        )
        return round(total, 3)


class SimulatedLatency:
    """ASGI middleware (inside the instrumentation): the clock moves on by the request's latency
    when the response starts (or the app fails), so the request span lasts that long."""

    def __init__(self, app: Any, clock: ManualClock, latency_ns: Callable[[], int]) -> None:
        self.app = app
        self._clock = clock
        self._latency_ns = latency_ns

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        moved = False

        def move() -> None:
            nonlocal moved
            if not moved:
                moved = True
                self._clock.set(self._clock.time_ns() + self._latency_ns())

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                move()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            move()
            raise


class HistoryPlayer:
    """Plays planned sessions through ``client``, setting ``clock`` for each request."""

    def __init__(self, client: Client, clock: ManualClock, ledger: HistoryLedger) -> None:
        self.client = client
        self.clock = clock
        self.ledger = ledger
        self.pending_latency_ns = 0
        self.pace = False
        """Wait for the wall clock to reach each request's time (live traffic) instead of jumping."""

    def latency_ns(self) -> int:
        """The latency :class:`SimulatedLatency` applies to the request being played."""
        return self.pending_latency_ns

    async def call(
        self, at_ns: int, method: str, path: str, route: str, user: str, body: Any, latency_ms: float
    ) -> Any:
        """One request at simulated time ``at_ns`` taking ``latency_ms`` (whole microseconds)."""
        if self.pace and at_ns > time.time_ns():
            await asyncio.sleep((at_ns - time.time_ns()) / 1e9)
        micros = max(round(latency_ms * 1000), 1)
        self.pending_latency_ns = micros * 1000
        self.clock.set(at_ns)
        status, data = await self.client.request(method, path, user, body)
        self.ledger.requests += 1
        self.ledger.count(API_REQUEST)
        truth = self.ledger.routes.setdefault((route, method), RouteTruth())
        truth.requests += 1
        truth.errors += status >= 500
        histogram.add(truth.latency_hist, micros * 1000 / 1e6)
        if status >= 400 and route not in EXPECTED_FAILURES:
            raise RuntimeError(f"simulated backend answered {status} to {method} {route}")
        return data

    async def play(self, planned: PlannedSession) -> None:
        """One session: start (with the streak broken if a day was missed), steps, end."""
        learner, ledger = planned.learner, self.ledger
        user = learner.user_id
        rng = random.Random(planned.seed)
        state = ledger.learners.setdefault(user, LearnerState())
        day = planned.start.date()
        start_ns = _ns(planned.start)
        if state.last_day is None:  # the learner signs in for the first time
            await self.call(
                start_ns - 20_000_000_000, "POST", "/auth/login", "/auth/login", "", _login(user), 40
            )
        first_today = state.last_day != day
        broken = (
            state.streak
            if first_today and state.last_day is not None and (day - state.last_day).days > 1
            else 0
        )
        body = {"streak_broken": broken} if broken else None
        started = await self.call(start_ns, "POST", "/sessions", "/sessions", user, body, _ms(rng, 18))
        sid = started["session_id"]
        self._exposed(state, user, started.get("variants", {}).get(experiment.KEY))
        ledger.add(ledger.sessions, user)
        ledger.count("session_start")
        if broken:
            ledger.count("streak_broken")
            state.streak = 0
        steps = self._steps(rng, learner, state, sid, day)
        total_ns = round(planned.minutes * 60 * 1e9)
        offsets = sorted(rng.randint(5_000_000_000, total_ns - 5_000_000_000) for _ in steps)
        for i in range(1, len(offsets)):
            offsets[i] = max(offsets[i], offsets[i - 1] + MIN_GAP_NS)
        for offset, step in zip(offsets, steps, strict=True):
            await step(start_ns + offset)
        end_body = self._gamification(state, day, first_today)
        await self.call(
            start_ns + total_ns, "POST", f"/sessions/{sid}/end", "/sessions/{session_id}/end", user, end_body,
            _ms(rng, 22),
        )  # fmt: skip
        ledger.count("session_end")
        key = (user, day)
        ledger.study_seconds[key] = ledger.study_seconds.get(key, 0.0) + total_ns / 1e9
        state.last_day = day

    def _exposed(self, state: LearnerState, user: str, variant: str | None) -> None:
        if variant is not None and user not in self.ledger.variants:  # the backend records it once
            self.ledger.variants[user] = variant
            self.ledger.count(EXPOSURE_EVENT)
        state.variant = variant

    def _gamification(self, state: LearnerState, day: date, first_today: bool) -> dict[str, Any]:
        """The end request's body: streak (first session of a day), new achievements, a level-up."""
        ledger = self.ledger
        body: dict[str, Any] = {"achievements": []}
        if first_today:
            state.streak = (
                state.streak + 1 if state.last_day is not None and (day - state.last_day).days == 1 else 1
            )
            state.streak_day = day
            state.longest = max(state.longest, state.streak)
            body["streak_days"] = state.streak
            ledger.count("streak_updated")
        level = level_of(state.xp)
        earned = {
            "first-session": True,
            "streak-3": state.streak >= 3,
            "streak-7": state.streak >= 7,
            "level-3": level >= 3,
            "level-5": level >= 5,
            "coach-curious": state.coach_used,
            "ten-completions": state.completions >= 10,
        }
        for achievement, reached in earned.items():
            if reached and achievement not in state.achievements:
                state.achievements.add(achievement)
                body["achievements"].append(achievement)
                ledger.count("achievement_unlocked")
        if level > state.level:
            body["level"], body["total_xp"] = level, state.xp
            state.level = level
            ledger.count("level_up")
        return body

    def _steps(
        self, rng: random.Random, learner: Learner, state: LearnerState, sid: str, day: date
    ) -> list[Callable[[int], Any]]:
        """The requests of one session between its start and end, as functions of their time."""
        pool = [m for m in MATERIALS if learner.flashcards or m[1] != "flashcards"]
        steps = self._pathway(rng, learner, state, sid, day)
        chance = COMPLETION_CHANCE + (experiment.EFFECT if state.variant == experiment.TREATMENT else 0.0)
        for material_id, material_type in rng.sample(pool, k=rng.choice((1, 1, 2, 2, 2, 3))):
            completed = rng.random() < chance
            steps.extend(self._material(rng, learner, state, sid, material_id, material_type, completed))
        if learner.coach and rng.random() < 0.35:
            steps.extend(self._coach(rng, learner, state))
        if rng.random() < 0.04:
            steps.append(lambda at: self.call(at, "GET", "/materials/broken", "/materials/{material_id}",
                                              learner.user_id, None, _ms(rng, 6)))  # fmt: skip
        if rng.random() < 0.03:  # a stale tab: a session the backend no longer knows
            steps.append(lambda at: self.call(
                at, "POST", f"/sessions/{random.Random(at).getrandbits(64):x}/materials/ecg-basics/view",
                "/sessions/{session_id}/materials/{material_id}/{action}", learner.user_id, None, _ms(rng, 9),
            ))  # fmt: skip
        return steps

    def _pathway(
        self, rng: random.Random, learner: Learner, state: LearnerState, sid: str, day: date
    ) -> list[Callable[[int], Any]]:
        """This session's work on the learner's pathway, if any: the next module, viewed, maybe completed."""
        if learner.pathway is None:
            return []
        work = next_module(rng, PATHWAYS[learner.pathway], state.pathway, day)
        if work is None:
            return []
        events = self.ledger.pathway_events.setdefault(learner.pathway, {}).setdefault(learner.user_id, [])

        def mark(action: str, at_ns: int) -> None:
            if action == "complete":
                events.append((work.index + 1, at_ns // 1000))
            elif work.index == 0:
                events.append((0, at_ns // 1000))

        return self._material(
            rng, learner, state, sid, work.material_id, work.material_type, work.completed, mark
        )

    def _material(
        self,
        rng: random.Random,
        learner: Learner,
        state: LearnerState,
        sid: str,
        material_id: str,
        kind: str,
        completed: bool,
        mark: Callable[[str, int], None] | None = None,
    ) -> list[Callable[[int], Any]]:
        """View, maybe progress (or flashcard reviews), complete if ``completed``; ``mark`` sees each
        view and completion with its time."""
        ledger, user = self.ledger, learner.user_id
        base = f"/sessions/{sid}/materials/{material_id}"
        route = "/sessions/{session_id}/materials/{material_id}/{action}"
        steps: list[Callable[[int], Any]] = []

        async def view(at: int) -> None:
            await self.call(at, "POST", f"{base}/view", route, user, None, _ms(rng, 25))
            ledger.add(ledger.materials_viewed, user)
            ledger.count("material_view")
            if mark is not None:
                mark("view", at)

        steps.append(view)
        if kind == "flashcards":
            results = [rng.random() < 0.72 for _ in range(rng.randint(8, 20))]

            async def reviews(at: int) -> None:
                path = f"/sessions/{sid}/flashcards/{material_id}/reviews"
                await self.call(at, "POST", path, "/sessions/{session_id}/flashcards/{deck_id}/reviews", user,
                                {"results": results}, _ms(rng, 40))  # fmt: skip
                ledger.count("material_progress", len(results))
                ledger.count("xp_awarded", sum(results))
                gained = FLASHCARD_XP * sum(results)
                ledger.add(ledger.xp, user, gained)
                state.xp += gained

            steps.append(reviews)
        elif rng.random() < 0.5:
            checkpoints = [0.25, 0.5, 0.75][: rng.randint(1, 3)]

            async def progress(at: int) -> None:
                await self.call(at, "POST", f"{base}/progress", route, user, {"checkpoints": checkpoints},
                                _ms(rng, 20))  # fmt: skip
                ledger.count("material_progress", len(checkpoints))

            steps.append(progress)
        if completed:

            async def complete(at: int) -> None:
                await self.call(at, "POST", f"{base}/complete", route, user, None, _ms(rng, 30))
                if mark is not None:
                    mark("complete", at)
                ledger.add(ledger.materials_completed, user)
                ledger.add(ledger.xp, user, COMPLETION_XP)
                ledger.count("material_complete")
                ledger.count("xp_awarded")
                state.xp += COMPLETION_XP
                state.completions += 1

            steps.append(complete)
        return steps

    def _coach(self, rng: random.Random, learner: Learner, state: LearnerState) -> list[Callable[[int], Any]]:
        ledger, user = self.ledger, learner.user_id
        asked: list[str] = []
        latency_ms = round(rng.lognormvariate(7.0, 0.4), 1)
        body: dict[str, Any] = {
            "topic": rng.choice(COACH_TOPICS),
            "latency_ms": latency_ms,
            "tokens_in": rng.randint(20, 400),
            "tokens_out": rng.randint(80, 900),
        }

        async def ask(at: int) -> None:
            answer = await self.call(at, "POST", "/coach/ask", "/coach/ask", user, body, latency_ms)
            asked.append(answer["interaction_id"])
            ledger.count("ai_coach_interaction")
            state.coach_used = True

        steps: list[Callable[[int], Any]] = [ask]
        if rng.random() < 0.6:
            rating = rng.choices((1, 2, 3, 4, 5), weights=(1, 2, 5, 10, 9))[0]

            async def rate(at: int) -> None:
                await self.call(at, "POST", f"/coach/{asked[0]}/feedback", "/coach/{interaction_id}/feedback",
                                user, {"rating": rating}, _ms(rng, 15))  # fmt: skip
                ledger.count("ai_coach_feedback")
                ledger.coach_ratings.append(rating)

            steps.append(rate)
        return steps


EXPECTED_FAILURES = {"/materials/{material_id}", "/sessions/{session_id}/materials/{material_id}/{action}"}
"""Routes the simulation calls wrongly on purpose (a failing material, a stale session)."""


def _ms(rng: random.Random, median: float) -> float:
    """A request's latency in ms: log-normal around ``median``, with a slow tail."""
    value = rng.lognormvariate(0, 0.45) * median
    return value * rng.uniform(4, 12) if rng.random() < 0.02 else value


def _login(user: str) -> dict[str, str]:
    return {"email": f"{user}@studyin.example"}


def _ns(moment: datetime) -> int:
    return ManualClock(moment).time_ns()
