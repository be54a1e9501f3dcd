"""Experiments through the staff API: definitions (4xx naming the field, 409 on a running change,
history), the snapshot the apps follow, and the analysis over the REAL pipeline (tracker.variant ->
exporter -> bus -> aggregator -> PostgreSQL -> endpoint), whose sums equal the brute-force ones."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.snapshots import SnapshotFollower
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from studyin_analytics.instrumentation.experiments import SNAPSHOT_KIND, decode_snapshot
from tests.support.api import STAFF, Api, aggregate
from tests.support.experiments import Ev, definition, reference_sums, stored_sums

PATH = "/api/analytics/experiments"
ASSIGNMENT_KEY = "assignment-key-for-tests-0001"


async def _create(api: Api, body: dict[str, Any], **params: Any) -> Any:
    return await api.client.post(PATH, json=body, params=params, headers=api.auth(STAFF, roles=["staff"]))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": "Not A Slug"}, ["body", "key"]),
        ({"variants": {"only": 1}}, ["body", "variants"]),
        ({"variants": {"a": 0, "b": 1}}, ["body", "variants", "a"]),
        ({"variants": {"Not A Slug": 1, "b": 1}}, ["body", "variants", "Not A Slug"]),
        ({"primary_metric": "revenue"}, ["body", "primary_metric"]),
        ({"guardrail_metrics": ["revenue"]}, ["body", "guardrail_metrics", 0]),
        ({"starts_at": "2020-01-01T00:00:00"}, ["body", "starts_at"]),
        ({"duration_days": 0}, ["body", "duration_days"]),
        ({"minimum_effect": -1}, ["body", "minimum_effect"]),
        ({"surprise": 1}, ["body", "surprise"]),
    ],
)
async def test_invalid_definitions_are_422_naming_the_field(
    api: Api, change: dict[str, Any], field: list[Any]
) -> None:
    response = await _create(api, {**definition("bad"), **change})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert any(e["loc"][: len(field)] == field for e in response.json()["errors"]), response.json()
    conn = await connect(api.settings)
    try:
        assert await conn.fetchval("SELECT count(*) FROM experiment_versions") == 0  # no partial write
    finally:
        await conn.close()


async def test_lifecycle_history_and_the_snapshot_apps_follow(api: Api) -> None:
    settings = api.settings
    follower = SnapshotFollower(
        settings.redis_url or "", settings.stream_prefix, SNAPSHOT_KIND, decode_snapshot, {}
    )
    staff = api.auth(STAFF, roles=["staff"])
    try:
        learner = await api.client.post(PATH, json=definition("flashcards"), headers=api.auth("learner-1"))
        assert learner.status_code == 403
        created = await _create(api, definition("flashcards"))
        assert created.status_code == 201 and created.json()["version"] == 1
        assert follower.refresh_now()
        assert follower.current()["flashcards"].weights == (1, 1)
        # New weights while version 1 runs: refused, naming the variants; fine as a new version.
        uneven = definition("flashcards")
        uneven["variants"] = {"control": 1, "treatment": 3}
        refused = await _create(api, uneven)
        assert refused.status_code == 409 and refused.json()["detail"].startswith("variants:")
        again = await _create(api, uneven, new_version="true")
        assert again.status_code == 201 and again.json()["version"] == 2
        assert follower.refresh_now()
        assert follower.current()["flashcards"].version == 2
        history = (await api.client.get(f"{PATH}/flashcards", headers=staff)).json()["versions"]
        assert [(v["version"], v["status"]) for v in history] == [(1, "stopped"), (2, "running")]
        listed = (await api.client.get(PATH, headers=staff)).json()["experiments"]
        assert [(v["key"], v["version"]) for v in listed] == [("flashcards", 2)]
        stopped_only = await api.client.get(PATH, params={"status": "stopped"}, headers=staff)
        assert stopped_only.json()["experiments"] == []
        stopped = await api.client.post(f"{PATH}/flashcards/stop", headers=staff)
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
        assert follower.refresh_now() and follower.current() == {}
        assert (await api.client.post(f"{PATH}/flashcards/stop", headers=staff)).status_code == 404
        assert (await api.client.get(f"{PATH}/nothing", headers=staff)).status_code == 404
        assert (await api.client.get(f"{PATH}/nothing/analysis", headers=staff)).status_code == 404
    finally:
        follower.close()


def _events_of(spans: list[ReadableSpan]) -> list[Ev]:
    out = []
    for span in spans:
        for event in span.events:
            attributes = dict(event.attributes or {})
            user = attributes.pop("user.hash", None)
            if user is not None and event.name.startswith("studyin."):
                out.append(Ev(user, event.name.removeprefix("studyin."), event.timestamp, attributes))
    return out


def _simulate(tracker: StudyInTracker, rng: random.Random, learners: int) -> None:
    for i in range(learners):
        user = f"learner-{i}"
        if rng.random() < 0.5:
            tracker.xp_awarded(user, rng.randint(1, 20), "warmup")  # before exposure: the covariate
        variant = tracker.variant(user, "coach-prompt")
        for _ in range(rng.randint(0, 3)):
            tracker.xp_awarded(user, rng.randint(1, 20) + (5 if variant == "treatment" else 0), "quiz")
        tracker.variant(user, "coach-prompt")  # repeated: no second exposure
        if rng.random() < 0.4:
            tracker.material_complete(user, "cardio-101", "video")
        if rng.random() < 0.3:
            tracker.ai_coach_feedback(user, "00000000-0000-4000-8000-000000000001", rng.randint(1, 5))


@pytest.mark.parametrize("seed", [11, 12])
async def test_real_pipeline_sums_are_exact_and_the_analysis_reads_them(api: Api, seed: int) -> None:
    settings = api.settings
    rng = random.Random(seed)
    assert (await _create(api, definition("coach-prompt"))).status_code == 201
    follower = SnapshotFollower(
        settings.redis_url or "", settings.stream_prefix, SNAPSHOT_KIND, decode_snapshot, {}
    )
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    try:
        assert follower.refresh_now()
        tracker.use_experiments(follower.current, assignment_key=ASSIGNMENT_KEY)
        _simulate(tracker, rng, learners=60)
    finally:
        follower.close()
    spans = list(memory.get_finished_spans())
    # Out of order and duplicated on the bus: shuffled batches, a third of them twice.
    shuffled = spans[:]
    rng.shuffle(shuffled)
    batches, start = [], 0
    while start < len(shuffled):
        size = rng.randint(1, 9)
        batches.append(shuffled[start : start + size])
        start += size
    exporter = RedisStreamSpanExporter(settings)
    for batch in batches + batches[::3]:
        exporter.export(batch)
    exporter.shutdown()
    await aggregate(settings)
    events = _events_of(spans)
    conn = await connect(settings)
    try:
        assert await stored_sums(conn, "coach-prompt") == reference_sums(events)
    finally:
        await conn.close()
    response = await api.client.get(f"{PATH}/coach-prompt/analysis", headers=api.auth(STAFF, roles=["staff"]))
    assert response.status_code == 200
    body = response.json()
    exposed = {e.user for e in events if e.kind == "experiment_exposure"}
    assert sum(v["learners"] for v in body["variants"]) == len(exposed) == 60
    xp = next(m for m in body["metrics"] if m["metric"] == "xp")
    assert xp["comparisons"][0]["comparison"]["status"] == "ok"
    assert xp["comparisons"][0]["comparison"]["method"] == "cuped welch"  # the warm-up XP varies
    primary = body["metrics"][0]
    assert primary["primary"] and "sample_size" in primary["comparisons"][0]
    assert body["sample_ratio"]["mismatch"] is None  # fewer than 100 exposures: not checked yet
    # Day by day (all events today here): the last look reads the same sums as the analysis.
    staff = api.auth(STAFF, roles=["staff"])
    days = await api.client.get(f"{PATH}/coach-prompt/analysis/days", params={"metric": "xp"}, headers=staff)
    assert days.status_code == 200, days.text
    last = days.json()["days"][-1]
    assert sum(last["learners"].values()) == 60
    assert last["comparisons"][0]["sequential"] == xp["comparisons"][0]["sequential"]
    missing = await api.client.get(
        f"{PATH}/coach-prompt/analysis/days", params={"metric": "nope"}, headers=staff
    )
    assert missing.status_code == 404


async def test_variants_under_k_learners_show_no_numbers(api: Api) -> None:
    settings = api.settings
    assert (await _create(api, definition("tiny"))).status_code == 201
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    follower = SnapshotFollower(
        settings.redis_url or "", settings.stream_prefix, SNAPSHOT_KIND, decode_snapshot, {}
    )
    try:
        assert follower.refresh_now()
        tracker.use_experiments(follower.current, assignment_key=ASSIGNMENT_KEY)
        for i in range(6):  # k is 5: at least one variant has fewer than 5 learners
            tracker.variant(f"few-{i}", "tiny")
            tracker.xp_awarded(f"few-{i}", 10, "quiz")
    finally:
        follower.close()
        provider.shutdown()
    await aggregate(settings)
    body = (await api.client.get(f"{PATH}/tiny/analysis", headers=api.auth(STAFF, roles=["staff"]))).json()
    assert body["suppressed"]
    small = [v for v in body["variants"] if v["learners"] is None]
    assert small, body["variants"]
    for metric in body["metrics"]:
        for row in metric["variants"]:
            if row["variant"] in {v["variant"] for v in small}:
                assert row["status"] == "suppressed" and row["mean"] is None
        for comparison in metric["comparisons"]:
            assert comparison["comparison"]["status"] == "suppressed"
            assert comparison["comparison"]["effect"] is None
