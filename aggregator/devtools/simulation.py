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
import json
import random
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
from fastapi import FastAPI, HTTPException, Request

from ...exporter.event_types import API_REQUEST
from ...instrumentation import LearningSession, StudyInTracker, events, instrument_app
from ...instrumentation.privacy import Pseudonymizer

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


def build_backend(tracker: StudyInTracker, pseudonymizer: Pseudonymizer, **instrument_kwargs: Any) -> Any:
    """The instrumented simulated StudyIn backend (an ASGI app)."""
    app = FastAPI(title="Simulated StudyIn backend")
    app.add_middleware(_DemoAuth)
    sessions: dict[str, LearningSession] = {}
    material_types = dict(MATERIALS)

    def user_of(request: Request) -> str:
        user_id = getattr(request.state, "user_id", None)
        if user_id is None:
            raise HTTPException(status_code=401, detail="not signed in")
        return str(user_id)

    def session_of(session_id: str) -> LearningSession:
        session = sessions.get(session_id)
        if session is None:
            raise HTTPException(status_code=404, detail="no such session")
        return session

    def material_type_of(material_id: str) -> str:
        material_type = material_types.get(material_id)
        if material_type is None:
            raise HTTPException(status_code=404, detail="no such material")
        return material_type

    @app.post("/auth/login")
    async def login(request: Request) -> dict[str, str]:
        body = await request.json()
        return {"token": str(body["email"]).split("@")[0]}

    @app.post("/sessions")
    async def start_session(request: Request) -> dict[str, str]:
        session = tracker.start_session(user_of(request))
        sessions[str(session.session_id)] = session
        return {"session_id": str(session.session_id)}

    @app.post("/sessions/{session_id}/materials/{material_id}/{action}")
    async def material(request: Request, session_id: str, material_id: str, action: str) -> dict[str, bool]:
        user = user_of(request)
        session = session_of(session_id)
        material_type = material_type_of(material_id)
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
        user = user_of(request)
        session = session_of(session_id)
        material_type = material_type_of(deck_id)
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

    @app.post("/coach/ask")
    async def coach_ask(request: Request) -> dict[str, str]:
        """The AI coach answers (simulated); only latency, token counts and a topic are recorded."""
        user = user_of(request)
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
        user = user_of(request)
        rating = int((await request.json())["rating"])
        tracker.emit(events.AiCoachFeedback, user_id=user, interaction_id=interaction_id, rating=rating)
        return {"ok": True}

    @app.post("/sessions/{session_id}/end")
    async def end_session(request: Request, session_id: str) -> dict[str, bool]:
        user = user_of(request)
        session = sessions.pop(session_id, None)
        if session is None:
            raise HTTPException(status_code=404, detail="no such session")
        body = await request.json()
        session.end(xp_earned=0)
        tracker.emit(events.StreakUpdated, user_id=user, streak_days=int(body["streak_days"]))
        for achievement in body.get("achievements", []):
            tracker.emit(events.AchievementUnlocked, user_id=user, achievement_id=str(achievement))
        return {"ok": True}

    @app.get("/materials/{material_id}")
    async def get_material(material_id: str) -> dict[str, str]:
        if material_id == "broken":
            raise RuntimeError("simulated failure")
        return {"id": material_id}

    return instrument_app(app, pseudonymizer=pseudonymizer, **instrument_kwargs)


# --- drivers --------------------------------------------------------------------------------------


class Client(Protocol):
    async def request(self, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
        """Send one request; returns the status and the decoded JSON body (or ``None``)."""
        ...


class HttpxClient:
    """Through ``httpx.ASGITransport`` (what a test client does)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def request(self, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = await self._client.request(method, path, headers=headers, json=body)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None


class AsgiClient:
    """Calls the ASGI app directly: one scope, one body message, the response collected."""

    def __init__(self, app: Any, host: str = "studyin.test") -> None:
        self._app = app
        self._host = host.encode()

    async def request(self, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [(b"host", self._host), (b"user-agent", b"studyin-sim/1")]
        if body is not None:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("studyin.test", 80),
        }
        sent = False
        status = 500
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.Event().wait()  # a disconnect never comes
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self._app(scope, receive, send)
        except Exception:  # the app re-raises after its 500 response, like a server would log it
            status = 500
        data = b"".join(chunks)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None


# --- the students -------------------------------------------------------------------------------------


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
    async def call(method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        ledger.requests += 1
        ledger.count(API_REQUEST)
        status, data = await client.request(method, path, token, body)
        if on_step is not None:
            on_step()
        await asyncio.sleep(0)  # let every other student take a step: they all study at once
        if status >= 400 and not path.endswith("/broken"):
            raise RuntimeError(f"simulated backend answered {status} to {method} {path}")
        return data

    async def sync_reviews(session_id: str, deck_id: str) -> None:
        results = [rng.random() < 0.7 for _ in range(flashcards)]
        path = f"/sessions/{session_id}/flashcards/{deck_id}/reviews"
        await call("POST", path, token, {"results": results})
        correct = sum(results)
        ledger.count("material_progress", len(results))
        ledger.count("xp_awarded", correct)
        ledger.add(ledger.xp, user_id, FLASHCARD_XP * correct)

    token = (await call("POST", "/auth/login", body={"email": f"{user_id}@studyin.example"}))["token"]
    for number in range(sessions):
        session_id = (await call("POST", "/sessions", token))["session_id"]
        ledger.add(ledger.sessions, user_id)
        ledger.count("session_start")
        for material_id, material_type in rng.sample(MATERIALS, k=rng.randint(1, 3)):
            base = f"/sessions/{session_id}/materials/{material_id}"
            await call("POST", f"{base}/view", token)
            ledger.add(ledger.materials_viewed, user_id)
            ledger.count("material_view")
            if material_type == "flashcards" and flashcards:
                await sync_reviews(session_id, material_id)
            elif rng.random() < 0.5:
                checkpoints = [0.25, 0.5, 0.75][: rng.randint(1, 3)]
                await call("POST", f"{base}/progress", token, {"checkpoints": checkpoints})
                ledger.count("material_progress", len(checkpoints))
            if rng.random() < 0.6:
                await call("POST", f"{base}/complete", token)
                ledger.add(ledger.materials_completed, user_id)
                ledger.add(ledger.xp, user_id, 10)
                ledger.count("material_complete")
                ledger.count("xp_awarded")
            await call("GET", f"/materials/{material_id}", token)
        if flashcards:
            for _ in range(bulk_syncs):  # an offline review session, synced in batches
                await sync_reviews(session_id, FLASHCARD_DECK)
        if coach and rng.random() < 0.3:
            body = {
                "topic": rng.choice(COACH_TOPICS),
                "latency_ms": round(rng.uniform(300, 4000), 1),
                "tokens_in": rng.randint(20, 400),
                "tokens_out": rng.randint(50, 800),
            }
            interaction = (await call("POST", "/coach/ask", token, body))["interaction_id"]
            ledger.count("ai_coach_interaction")
            if rng.random() < 0.5:
                await call("POST", f"/coach/{interaction}/feedback", token, {"rating": rng.randint(1, 5)})
                ledger.count("ai_coach_feedback")
        if rng.random() < 0.2:
            await call("GET", "/materials/broken", token)
        achievements = ["first-session"] if number == 0 else []
        await call(
            "POST",
            f"/sessions/{session_id}/end",
            token,
            {"streak_days": number + 1, "achievements": achievements},
        )
        ledger.count("session_end")
        ledger.count("streak_updated")
        ledger.count("achievement_unlocked", len(achievements))


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
