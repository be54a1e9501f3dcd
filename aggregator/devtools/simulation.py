"""A small simulated StudyIn backend and its students (for the demo, the bench and tests).

The backend is an ordinary FastAPI app that knows nothing of analytics except the tracker
calls a StudyIn engineer would add; :func:`build_backend` wraps it with
:func:`~studyin_analytics.instrumentation.instrument_app` like any StudyIn service.

:func:`simulate_students` drives it as many concurrent students (each a coroutine that
yields after every request, so all of them have sessions open at once) and counts what
they did in a :class:`Ledger`, independently of the pipeline: the ground truth that the
demo and the end-to-end benchmark compare the rollups against. Two drivers: ``"httpx"``
(through ``httpx.ASGITransport``, like a test client) and ``"asgi"`` (calls the ASGI app
directly, a fraction of the client-side cost, for the benchmark).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from fastapi import FastAPI, HTTPException, Request

from ...exporter.event_types import API_REQUEST
from ...instrumentation import LearningSession, StudyInTracker, events, instrument_app
from ...instrumentation.privacy import Pseudonymizer
from .drivers import AsgiClient, Client, HttpxClient

MATERIALS: list[tuple[str, str]] = [
    ("cardio-101", "video"),
    ("ecg-basics", "pdf"),
    ("renal-qbank", "question_bank"),
    ("pharm-cards", "flashcards"),
    ("neuro-cases", "case_study"),
]
COACH_TOPICS = ("cardiology", "pharmacology", "nephrology", "neurology")
FLASHCARD_XP = 2
"""XP for each correctly answered flashcard."""
FLASHCARD_DECK = "pharm-cards"


@dataclass
class Ledger:
    """What the simulated students did, counted independently of the pipeline (ground truth)."""

    sessions: dict[str, int] = field(default_factory=dict)
    materials_viewed: dict[str, int] = field(default_factory=dict)
    materials_completed: dict[str, int] = field(default_factory=dict)
    xp: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    events: dict[str, int] = field(default_factory=dict)
    """Events by type, each API request counted as one ``api_request``."""

    def add(self, table: dict[str, int], user: str, amount: int = 1) -> None:
        table[user] = table.get(user, 0) + amount

    def count(self, event_type: str, amount: int = 1) -> None:
        self.events[event_type] = self.events.get(event_type, 0) + amount

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    def merge(self, other: Ledger) -> None:
        for mine, theirs in (
            (self.sessions, other.sessions),
            (self.materials_viewed, other.materials_viewed),
            (self.materials_completed, other.materials_completed),
            (self.xp, other.xp),
            (self.events, other.events),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self.requests += other.requests


# --- the backend ----------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]


class _DemoAuth:
    """Stand-in for StudyIn's auth: the bearer token *is* the user id (demo only).

    A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task group per request).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization" and value.startswith(b"Bearer "):
                    scope.setdefault("state", {})["user_id"] = value[7:].decode()
                    break
        await self.app(scope, receive, send)


@dataclass
class _Backend:
    """The simulated backend's state: its tracker, open sessions and materials."""

    tracker: StudyInTracker
    sessions: dict[str, LearningSession] = field(default_factory=dict)
    material_types: dict[str, str] = field(default_factory=lambda: dict(MATERIALS))
    experiments: tuple[str, ...] = ()
    """Experiment keys whose variant a session start asks for (``tracker.use_experiments`` first)."""

    @staticmethod
    def user_of(request: Request) -> str:
        user_id = getattr(request.state, "user_id", None)
        if user_id is None:
            raise HTTPException(status_code=401, detail="not signed in")
        return str(user_id)

    def session_of(self, session_id: str) -> LearningSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise HTTPException(status_code=404, detail="no such session")
        return session

    def material_type_of(self, material_id: str) -> str:
        material_type = self.material_types.get(material_id)
        if material_type is None:
            raise HTTPException(status_code=404, detail="no such material")
        return material_type


def _session_routes(app: FastAPI, backend: _Backend) -> None:
    """Sign-in, and the start and end of a learning session."""
    tracker = backend.tracker

    @app.post("/auth/login")
    async def login(request: Request) -> dict[str, str]:
        body = await request.json()
        return {"token": str(body["email"]).split("@")[0]}

    @app.post("/sessions")
    async def start_session(request: Request) -> dict[str, Any]:
        user = backend.user_of(request)
        body = await request.json() if await request.body() else {}
        if body.get("streak_broken"):  # the app noticed a missed day when the learner came back
            tracker.streak_broken(user, int(body["streak_broken"]))
        # The app decides what this learner sees (and records the exposure) as the session starts.
        chosen = {key: tracker.variant(user, key) for key in backend.experiments}
        session = tracker.start_session(user)
        backend.sessions[str(session.session_id)] = session
        variants = {key: value for key, value in chosen.items() if value is not None}
        return {"session_id": str(session.session_id), "variants": variants}

    @app.post("/sessions/{session_id}/end")
    async def end_session(request: Request, session_id: str) -> dict[str, bool]:
        user = backend.user_of(request)
        session = backend.sessions.pop(session_id, None)
        if session is None:
            raise HTTPException(status_code=404, detail="no such session")
        body = await request.json()
        session.end(xp_earned=0)
        if "streak_days" in body:
            tracker.emit(events.StreakUpdated, user_id=user, streak_days=int(body["streak_days"]))
        for achievement in body.get("achievements", []):
            tracker.emit(events.AchievementUnlocked, user_id=user, achievement_id=str(achievement))
        if "level" in body:
            tracker.level_up(user, int(body["level"]), int(body["total_xp"]))
        return {"ok": True}


def _material_routes(app: FastAPI, backend: _Backend) -> None:
    """Viewing, progressing through and completing materials; flashcard reviews."""
    tracker = backend.tracker

    @app.post("/sessions/{session_id}/materials/{material_id}/{action}")
    async def material(request: Request, session_id: str, material_id: str, action: str) -> dict[str, bool]:
        user = backend.user_of(request)
        session = backend.session_of(session_id)
        material_type = backend.material_type_of(material_id)
        if action == "view":
            tracker.material_view(user, material_id, material_type, session=session)
        elif action == "complete":
            tracker.material_complete(user, material_id, material_type, score=0.8, session=session)
            tracker.xp_awarded(user, 10, "material_complete", session=session)
        elif action == "progress":
            # The mobile client batches its progress checkpoints: one request, many events,
            # recorded on this request's span (a long session would exceed the span event limit).
            body = await request.json()
            for progress in body["checkpoints"]:
                tracker.emit(
                    events.MaterialProgress,
                    user_id=user,
                    material_id=material_id,
                    material_type=material_type,
                    progress=progress,
                    session_id=session.session_id,
                )
        else:
            raise HTTPException(status_code=400, detail="action must be view, progress or complete")
        return {"ok": True}

    @app.post("/sessions/{session_id}/flashcards/{deck_id}/reviews")
    async def flashcard_reviews(request: Request, session_id: str, deck_id: str) -> dict[str, int]:
        """A synced batch of flashcard reviews: progress per card, XP per correct answer."""
        user = backend.user_of(request)
        session = backend.session_of(session_id)
        material_type = backend.material_type_of(deck_id)
        results: list[bool] = (await request.json())["results"]
        xp = 0
        for index, correct in enumerate(results, start=1):
            tracker.emit(
                events.MaterialProgress,
                user_id=user,
                material_id=deck_id,
                material_type=material_type,
                progress=index / len(results),
                session_id=session.session_id,
            )
            if correct:
                tracker.emit(
                    events.XpAwarded,
                    user_id=user,
                    xp_amount=FLASHCARD_XP,
                    xp_reason="flashcard_correct",
                    session_id=session.session_id,
                )
                xp += FLASHCARD_XP
        return {"xp": xp}

    @app.get("/materials/{material_id}")
    async def get_material(material_id: str) -> dict[str, str]:
        if material_id == "broken":
            raise RuntimeError("simulated failure")
        return {"id": material_id}


def _coach_routes(app: FastAPI, backend: _Backend) -> None:
    """The AI coach: questions and the learners' ratings of its answers."""
    tracker = backend.tracker

    @app.post("/coach/ask")
    async def coach_ask(request: Request) -> dict[str, str]:
        """The AI coach answers (simulated); only latency, token counts and a topic are recorded."""
        user = backend.user_of(request)
        body = await request.json()
        interaction_id = uuid.uuid4()
        # ``emit(model, ..., **fields)`` cannot take the event's own ``model`` field: use the helper.
        record_interaction = getattr(tracker, "ai_coach_interaction", None)
        if record_interaction is None:
            raise HTTPException(status_code=501, detail="this tracker cannot record AI-coach interactions")
        record_interaction(
            user,
            interaction_id=interaction_id,
            latency_ms=float(body["latency_ms"]),
            tokens_in=int(body["tokens_in"]),
            tokens_out=int(body["tokens_out"]),
            model="coach-small",
            topic_category=str(body["topic"]),
        )
        return {"interaction_id": str(interaction_id)}

    @app.post("/coach/{interaction_id}/feedback")
    async def coach_feedback(request: Request, interaction_id: str) -> dict[str, bool]:
        user = backend.user_of(request)
        rating = int((await request.json())["rating"])
        tracker.emit(events.AiCoachFeedback, user_id=user, interaction_id=interaction_id, rating=rating)
        return {"ok": True}


def build_backend(
    tracker: StudyInTracker,
    pseudonymizer: Pseudonymizer,
    *,
    materials: list[tuple[str, str]] | None = None,
    experiments: tuple[str, ...] = (),
    **instrument_kwargs: Any,
) -> Any:
    """The instrumented simulated StudyIn backend (an ASGI app) serving ``materials`` (id, type);
    a session start answers the learner's variant of each of ``experiments`` that runs."""
    app = FastAPI(title="Simulated StudyIn backend")
    app.add_middleware(_DemoAuth)
    backend = _Backend(tracker, material_types=dict(materials or MATERIALS), experiments=experiments)
    _session_routes(app, backend)
    _material_routes(app, backend)
    _coach_routes(app, backend)
    return instrument_app(app, pseudonymizer=pseudonymizer, **instrument_kwargs)


# --- the students -------------------------------------------------------------------------------------


@dataclass
class _Student:
    """One simulated student: their requests, each counted in the ledger as it is made."""

    client: Client
    ledger: Ledger
    user_id: str
    rng: random.Random
    flashcards: int
    coach: bool
    on_step: Callable[[], None] | None
    token: str | None = None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        self.ledger.requests += 1
        self.ledger.count(API_REQUEST)
        status, data = await self.client.request(method, path, self.token, body)
        if self.on_step is not None:
            self.on_step()
        await asyncio.sleep(0)  # let every other student take a step: they all study at once
        if status >= 400 and not path.endswith("/broken"):
            raise RuntimeError(f"simulated backend answered {status} to {method} {path}")
        return data

    async def sync_reviews(self, session_id: str, deck_id: str) -> None:
        results = [self.rng.random() < 0.7 for _ in range(self.flashcards)]
        path = f"/sessions/{session_id}/flashcards/{deck_id}/reviews"
        await self.call("POST", path, {"results": results})
        correct = sum(results)
        self.ledger.count("material_progress", len(results))
        self.ledger.count("xp_awarded", correct)
        self.ledger.add(self.ledger.xp, self.user_id, FLASHCARD_XP * correct)

    async def study(self, session_id: str, material_id: str, material_type: str) -> None:
        """View one material, maybe progress through it (or review its flashcards) and complete it."""
        ledger, rng, user_id = self.ledger, self.rng, self.user_id
        base = f"/sessions/{session_id}/materials/{material_id}"
        await self.call("POST", f"{base}/view")
        ledger.add(ledger.materials_viewed, user_id)
        ledger.count("material_view")
        if material_type == "flashcards" and self.flashcards:
            await self.sync_reviews(session_id, material_id)
        elif rng.random() < 0.5:
            checkpoints = [0.25, 0.5, 0.75][: rng.randint(1, 3)]
            await self.call("POST", f"{base}/progress", {"checkpoints": checkpoints})
            ledger.count("material_progress", len(checkpoints))
        if rng.random() < 0.6:
            await self.call("POST", f"{base}/complete")
            ledger.add(ledger.materials_completed, user_id)
            ledger.add(ledger.xp, user_id, 10)
            ledger.count("material_complete")
            ledger.count("xp_awarded")
        await self.call("GET", f"/materials/{material_id}")

    async def ask_coach(self) -> None:
        rng = self.rng
        body = {
            "topic": rng.choice(COACH_TOPICS),
            "latency_ms": round(rng.uniform(300, 4000), 1),
            "tokens_in": rng.randint(20, 400),
            "tokens_out": rng.randint(50, 800),
        }
        interaction = (await self.call("POST", "/coach/ask", body))["interaction_id"]
        self.ledger.count("ai_coach_interaction")
        if rng.random() < 0.5:
            await self.call("POST", f"/coach/{interaction}/feedback", {"rating": rng.randint(1, 5)})
            self.ledger.count("ai_coach_feedback")

    async def session(self, number: int, bulk_syncs: int) -> None:
        """One learning session, from its start to its end."""
        ledger, rng, user_id = self.ledger, self.rng, self.user_id
        session_id = (await self.call("POST", "/sessions"))["session_id"]
        ledger.add(ledger.sessions, user_id)
        ledger.count("session_start")
        for material_id, material_type in rng.sample(MATERIALS, k=rng.randint(1, 3)):
            await self.study(session_id, material_id, material_type)
        if self.flashcards:
            for _ in range(bulk_syncs):  # an offline review session, synced in batches
                await self.sync_reviews(session_id, FLASHCARD_DECK)
        if self.coach and rng.random() < 0.3:
            await self.ask_coach()
        if rng.random() < 0.2:
            await self.call("GET", "/materials/broken")
        achievements = ["first-session"] if number == 0 else []
        body = {"streak_days": number + 1, "achievements": achievements}
        await self.call("POST", f"/sessions/{session_id}/end", body)
        ledger.count("session_end")
        ledger.count("streak_updated")
        ledger.count("achievement_unlocked", len(achievements))


async def _student(
    client: Client,
    ledger: Ledger,
    user_id: str,
    rng: random.Random,
    *,
    sessions: int,
    flashcards: int,
    coach: bool,
    bulk_syncs: int,
    on_step: Callable[[], None] | None,
) -> None:
    student = _Student(client, ledger, user_id, rng, flashcards, coach, on_step)
    student.token = (await student.call("POST", "/auth/login", {"email": f"{user_id}@studyin.example"}))[
        "token"
    ]
    for number in range(sessions):
        await student.session(number, bulk_syncs)


async def simulate_students(
    backend: Any,
    user_ids: list[str],
    *,
    sessions_per_student: int = 2,
    seed: int = 7,
    on_step: Callable[[], None] | None = None,
    driver: Literal["httpx", "asgi"] = "httpx",
    flashcards: int = 10,
    coach: bool = False,
    bulk_syncs: int = 0,
) -> Ledger:
    """Drive ``backend`` in-process as the given students, all at once; returns the ground truth.

    Each student's choices come from its own seeded generator, so the same ``user_ids`` and
    ``seed`` give the same traffic whatever the driver and the interleaving.
    ``flashcards`` is the size of a synced batch of flashcard reviews (0: none); ``coach`` adds
    AI-coach questions and ratings; ``bulk_syncs`` adds that many flashcard syncs to every session
    (students reviewing offline, event-dense traffic).
    """
    ledger = Ledger()

    async def run(client: Client) -> None:
        students: list[Awaitable[None]] = [
            _student(
                client,
                ledger,
                user_id,
                random.Random(f"{seed}:{user_id}"),
                sessions=sessions_per_student,
                flashcards=flashcards,
                coach=coach,
                bulk_syncs=bulk_syncs,
                on_step=on_step,
            )
            for user_id in user_ids
        ]
        await asyncio.gather(*students)

    if driver == "asgi":
        await run(AsgiClient(backend))
    else:
        transport = httpx.ASGITransport(app=backend, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://studyin.test") as client:
            await run(HttpxClient(client))
    return ledger


def new_user_ids(count: int) -> list[str]:
    return [f"student-{uuid.uuid4().hex[:8]}" for _ in range(count)]
