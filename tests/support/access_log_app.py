"""A FastAPI app for the access-log test, run by a real uvicorn in a subprocess.

Instrumented explicitly (spans are recorded, not exported: the filter reads the route template
from the current server span) and with the access-log filter installed at start-up, mode from
``STUDYIN_ANALYTICS_ACCESS_LOG``, unless ``ACCESS_LOG_TEST_INSTALLED_EARLY`` says the process did
it before uvicorn configured its logging (as the zero-code instrumentor does).
"""

from __future__ import annotations

import os

from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace import TracerProvider

from studyin_analytics.instrumentation import instrument_app
from studyin_analytics.instrumentation.accesslog import install_access_log_filter

app = FastAPI()
users = APIRouter()


@users.get("/users/{user_id}/profile")
async def profile(user_id: str) -> dict[str, str]:
    return {"ok": "yes"}


app.include_router(users)
app = instrument_app(app, tracer_provider=TracerProvider())
if not os.environ.get("ACCESS_LOG_TEST_INSTALLED_EARLY"):
    install_access_log_filter()
