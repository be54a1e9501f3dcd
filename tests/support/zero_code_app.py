"""An ordinary FastAPI app with no analytics code at all (run under ``opentelemetry-instrument``).

Its own auth middleware puts the signed-in user in ``request.state.user_id``, which is where
the default user-id hook looks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.middleware("http")
async def auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        request.state.user_id = header.removeprefix("Bearer ")
    return await call_next(request)


@app.get("/materials/{material_id}")
async def material(material_id: str) -> dict[str, str]:
    return {"id": material_id}


@app.post("/auth/login")
async def login() -> dict[str, str]:
    return {"token": "t"}


@app.get("/healthz")
async def health() -> dict[str, bool]:
    return {"ok": True}


@app.get("/fail")
async def fail() -> None:
    raise LookupError("nothing here")
