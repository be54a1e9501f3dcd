"""Funnels, retention and saved funnels over HTTP, on the API bench's data set: p95 per request.

Data: the ``api`` bench's data set (:func:`.api.load_dataset`: 10M raw events of 10k learners over
90 days, half of them API requests; quick: 100k of 500), loaded the same way. The app is created as
``studyin-analytics api`` creates it; its background task loads the event-sequence store and warms
the saved funnels, as in production.

Measuring: each request goes through httpx's ASGI transport in this process (JWT check, request
model, the store's lock, the engine in its worker thread, the suppression, the audit insert and the
response model are all in the figure), sequentially. A value is the p95 of one repeat's requests; the
row is the median over repeats. Baseline: ``GET /healthz`` the same way in the same run.

* ``GET saved-funnels/{name}``, the latest version of a saved 5-step funnel (warm: its answer was
  computed when the store last changed). Target: p95 <= 25 ms.
* ``POST funnels`` (5 steps and 20 steps over 30 days) and ``POST retention`` (12 weekly cohorts):
  ad hoc, computed per request. Targets: <= 500 ms; 20 steps <= 2x 5 steps (the SQL baselines of the
  same questions are the ``analysis`` bench's).

Run alone: ``studyin-analytics bench --only analysis_http [--quick]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ..aggregator.api.app import create_app
from .api import load_dataset, p95, staff_or_learner_token
from .framework import BenchContext, Measurement, at_most, bench, median

PREFIX = "/api/analytics/analysis"
SAVED_NAME = "bench-pathway"
PATHWAY = ("session_start", "material_view", "material_progress", "material_complete", "xp_awarded")
SAVED_TARGET_MS, AD_HOC_TARGET_MS = 25.0, 500.0
SAVED_REQUESTS, QUICK_SAVED_REQUESTS = 200, 40
AD_HOC_REQUESTS, QUICK_AD_HOC_REQUESTS = 20, 5
WARMUP = 3
LOAD_TIMEOUT_S = 900.0


def _bodies(now: datetime) -> dict[str, tuple[str, dict[str, Any]]]:
    month = (now - timedelta(days=30)).isoformat()
    twenty = [*PATHWAY, "session_end"] * 3 + ["session_start", "material_view"]
    five = {"steps": [{"event": e} for e in PATHWAY], "start": month, "end": now.isoformat()}
    return {
        "POST funnels 5 steps, 30 days": (f"{PREFIX}/funnels", five),
        "POST funnels 20 steps, 30 days": (
            f"{PREFIX}/funnels",
            {**five, "steps": [{"event": e} for e in twenty]},
        ),
        "POST retention 12 weekly cohorts": (
            f"{PREFIX}/retention",
            {"start": (now - timedelta(weeks=12)).date().isoformat(), "cohorts": 12, "periods": 12},
        ),
    }


async def _loaded(app: Any) -> None:
    """Wait for the background task's first load of the store (it answers meanwhile)."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while app.state.analysis.watermark is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the analysis store did not load")
        await asyncio.sleep(0.5)


async def _p95(send: Callable[[], Any], count: int) -> float:
    for _ in range(WARMUP):
        await send()
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        response = await send()
        samples.append((time.perf_counter() - t0) * 1000)
        if response.status_code not in (200, 201):
            raise RuntimeError(
                f"{response.request.url} answered {response.status_code}: {response.text[:200]}"
            )
    return p95(samples)


def _poster(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Callable[[], Any]:
    return lambda: client.post(path, json=body)


@bench("analysis_http")
async def analysis_http(ctx: BenchContext) -> list[Measurement]:
    """Saved and ad hoc funnels and retention through the HTTP API, the API bench's data set."""
    settings = await ctx.migrated_settings("analysis_http")
    data = await load_dataset(ctx, settings, ctx.scale(10_000_000, 100_000), ctx.scale(10_000, 500))
    headers = {"authorization": f"Bearer {staff_or_learner_token(settings, 'bench-staff', staff=True)}"}
    now = datetime.now(UTC)
    bodies = _bodies(now)
    saved_count = ctx.scale(SAVED_REQUESTS, QUICK_SAVED_REQUESTS)
    ad_hoc_count = ctx.scale(AD_HOC_REQUESTS, QUICK_AD_HOC_REQUESTS)
    names = ["GET saved-funnels/{name} (warm)", *bodies]
    results: dict[str, list[float]] = {name: [] for name in names}
    baseline: list[float] = []
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            async with ctx.task("loading the analysis store"):
                await _loaded(app)
            five = bodies["POST funnels 5 steps, 30 days"][1]
            saved = await client.post(f"{PREFIX}/saved-funnels/{SAVED_NAME}/versions", json=five)
            if saved.status_code != 201:
                raise RuntimeError(f"saving the funnel answered {saved.status_code}: {saved.text[:200]}")
            sends: dict[str, Callable[[], Any]] = {
                names[0]: lambda: client.get(f"{PREFIX}/saved-funnels/{SAVED_NAME}"),
                **{n: _poster(client, p, b) for n, (p, b) in bodies.items()},
            }
            async with ctx.task("timing analysis requests", total=ctx.repeat_count * len(names)) as task:
                for _ in range(ctx.repeat_count):
                    baseline.append(await _p95(lambda: client.get("/healthz"), saved_count))
                    for name in names:
                        count = saved_count if name == names[0] else ad_hoc_count
                        results[name].append(await _p95(sends[name], count))
                        ctx.advance(task)
    floor = median(baseline)
    five_ms = median(results["POST funnels 5 steps, 30 days"])
    rows = []
    for name in names:
        value = median(results[name])
        if name == names[0]:
            target, met = at_most(value, SAVED_TARGET_MS, "ms")
        elif "20 steps" in name:
            target, met = "<= 2x the 5-step p95", value <= 2 * five_ms
        else:
            target, met = at_most(value, AD_HOC_TARGET_MS, "ms")
        rows.append(
            Measurement(
                name=f"analysis http p95 {name}",
                value=value,
                unit="ms",
                baseline=floor,
                baseline_name="GET /healthz p95 (same run)",
                target=target,
                met=met,
                samples=results[name],
                notes=f"{data.events:,} raw events, {len(data.user_ids):,} learners (the api bench's data)",
            )
        )
    return rows
