"""A small simulated StudyIn backend and its students (for the demo, the bench and tests).

The backend is an ordinary FastAPI app that knows nothing of analytics except the tracker
calls a StudyIn engineer would add; :func:`build_backend` wraps it with
:func:`~studyin_analytics.instrumentation.instrument_app` like any StudyIn service.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from ..instrumentation import LearningSession, StudyInTracker, instrument_app
from ..instrumentation.privacy import Pseudonymizer

MATERIALS: list[tuple[str, str]] = [
    ("cardio-101", "video"),
    ("ecg-basics", "pdf"),
    ("renal-qbank", "question_bank"),
    ("pharm-cards", "flashcards"),
    ("neuro-cases", "case_study"),
]


@dataclass
class Ledger:
    """What the simulated students did, counted independently of the pipeline (ground truth)."""

    sessions: dict[str, int] = field(default_factory=dict)
    materials_viewed: dict[str, int] = field(default_factory=dict)
    materials_completed: dict[str, int] = field(default_factory=dict)
    xp: dict[str, int] = field(default_factory=dict)
    requests: int = 0

    def add(self, table: dict[str, int], user: str, amount: int = 1) -> None:
        table[user] = table.get(user, 0) + amount


class _DemoAuth(BaseHTTPMiddleware):
    """Stand-in for StudyIn's auth: the bearer token *is* the user id (demo only)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            request.state.user_id = header.removeprefix("Bearer ")
        return await call_next(request)


def build_backend(tracker: StudyInTracker, pseudonymizer: Pseudonymizer, **instrument_kwargs: Any) -> Any:
    """The instrumented simulated StudyIn backend (an ASGI app)."""
    app = FastAPI(title="Simulated StudyIn backend")
    app.add_middleware(_DemoAuth)
    sessions: dict[str, LearningSession] = {}

    def user_of(request: Request) -> str:
        user_id = getattr(request.state, "user_id", None)
        if user_id is None:
            raise HTTPException(status_code=401, detail="not signed in")
        return str(user_id)

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
        session = sessions.get(session_id)
        if session is None:
            raise HTTPException(status_code=404, detail="no such session")
        material_type = dict(MATERIALS).get(material_id)
        if material_type is None:
            raise HTTPException(status_code=404, detail="no such material")
        if action == "view":
            tracker.material_view(user, material_id, material_type, session=session)
        elif action == "complete":
            tracker.material_complete(user, material_id, material_type, score=0.8, session=session)
            tracker.xp_awarded(user, 10, "material_complete", session=session)
        else:
            raise HTTPException(status_code=400, detail="action must be view or complete")
        return {"ok": True}

    @app.post("/sessions/{session_id}/end")
    async def end_session(request: Request, session_id: str) -> dict[str, bool]:
        user_of(request)
        session = sessions.pop(session_id, None)
        if session is None:
            raise HTTPException(status_code=404, detail="no such session")
        session.end(xp_earned=0)
        return {"ok": True}

    @app.get("/materials/{material_id}")
    async def get_material(material_id: str) -> dict[str, str]:
        if material_id == "broken":
            raise RuntimeError("simulated failure")
        return {"id": material_id}

    return instrument_app(app, pseudonymizer=pseudonymizer, **instrument_kwargs)


async def simulate_students(
    backend: Any,
    user_ids: list[str],
    *,
    sessions_per_student: int = 2,
    seed: int = 7,
    on_step: Callable[[], None] | None = None,
) -> Ledger:
    """Drive ``backend`` in-process as the given students; returns the ground truth."""
    rng = random.Random(seed)
    ledger = Ledger()
    transport = httpx.ASGITransport(app=backend, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://studyin.test") as client:

        async def call(method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            ledger.requests += 1
            response = await client.request(method, path, headers=headers, **kw)
            if on_step is not None:
                on_step()
            return response

        async def student(user_id: str) -> None:
            login = await call("POST", "/auth/login", json={"email": f"{user_id}@studyin.example"})
            token = login.json()["token"]
            for _ in range(sessions_per_student):
                session_id = (await call("POST", "/sessions", token)).json()["session_id"]
                ledger.add(ledger.sessions, user_id)
                for material_id, _type in rng.sample(MATERIALS, k=rng.randint(1, 3)):
                    await call("POST", f"/sessions/{session_id}/materials/{material_id}/view", token)
                    ledger.add(ledger.materials_viewed, user_id)
                    if rng.random() < 0.6:
                        await call("POST", f"/sessions/{session_id}/materials/{material_id}/complete", token)
                        ledger.add(ledger.materials_completed, user_id)
                        ledger.add(ledger.xp, user_id, 10)
                    await call("GET", f"/materials/{material_id}", token)
                    await asyncio.sleep(0)
                if rng.random() < 0.2:
                    await call("GET", "/materials/broken", token)
                await call("POST", f"/sessions/{session_id}/end", token)

        await asyncio.gather(*(student(u) for u in user_ids))
    return ledger


def new_user_ids(count: int) -> list[str]:
    return [f"student-{uuid.uuid4().hex[:8]}" for _ in range(count)]
