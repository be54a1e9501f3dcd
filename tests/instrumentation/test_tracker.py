"""The tracker API: sessions (in-process and stateless), every helper, validation, lenient mode."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from studyin_analytics.instrumentation import EventRejected, StudyInTracker, current_session, semconv
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

pytestmark = pytest.mark.unit

USER = "student-7f3a"
SESSION_ID_ATTR = semconv.FIELD_ATTRIBUTES["session_id"]


def events_of(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


def test_session_context_manager_records_one_span(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    with tracker.session(USER, material_id="cardio-101") as session:
        assert current_session() is session
        tracker.material_view(USER, "cardio-101", "video", session=session)
        tracker.material_progress(USER, "cardio-101", "video", 0.5)  # current session, implicitly
        tracker.material_complete(USER, "cardio-101", "video", score=0.9, time_spent_s=60.0)
        tracker.xp_awarded(USER, 25, "material_complete")
        tracker.xp_awarded(USER, 5, "streak_bonus", session=session)
    assert current_session() is None
    span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    names = [name for name, _ in events_of(span)]
    assert names == [
        "studyin.session_start",
        "studyin.material_view",
        "studyin.material_progress",
        "studyin.material_complete",
        "studyin.xp_awarded",
        "studyin.xp_awarded",
        "studyin.session_end",
    ]
    user_hash = PSEUDONYMIZER.pseudonymize(USER)
    assert span.attributes is not None and span.attributes[semconv.USER_HASH] == user_hash
    for _name, attributes in events_of(span):
        assert attributes[semconv.USER_HASH] == user_hash
        assert attributes[SESSION_ID_ATTR] == str(session.session_id)
    end = events_of(span)[-1][1]
    assert end["studyin.session.xp_earned"] == 30  # tallied from the session's events
    assert end["studyin.session.materials_touched"] == ("cardio-101",)
    assert end["studyin.session.end_reason"] == "completed"
    assert 0 <= end["studyin.session.duration_s"] <= (span.end_time - span.start_time) / 1e9 + 1e-3  # type: ignore[operator]
    assert USER not in repr([span.attributes, [e.attributes for e in span.events]])


def test_session_ends_once_and_explicit_values_win(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    session = tracker.start_session(USER)
    tracker.xp_awarded(USER, 10, "quiz", session=session)
    first = session.end(xp_earned=0, materials_touched=["a-1"])
    assert first is not None and session.ended
    assert session.end() is None
    end = events_of(pipeline.span(semconv.LEARNING_SESSION_SPAN))[-1][1]
    assert end["studyin.session.xp_earned"] == 0
    assert end["studyin.session.materials_touched"] == ("a-1",)


def test_exception_in_session_block_ends_it_abandoned(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    with pytest.raises(RuntimeError), tracker.session(USER):
        raise RuntimeError("left the app")
    end = events_of(pipeline.span(semconv.LEARNING_SESSION_SPAN))[-1][1]
    assert end["studyin.session.end_reason"] == "abandoned"


def test_timeout_duration_runs_to_last_activity(
    pipeline: Pipeline, tracker: StudyInTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [50.0]  # the system clock's monotonic time, as sessions read it (instrumentation/clock.py)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    session = tracker.start_session(USER)
    clock[0] += 120
    tracker.material_view(USER, "cardio-101", "video", session=session)
    clock[0] += 1800
    assert session.idle_s() == 1800
    session.timeout()
    end = events_of(pipeline.span(semconv.LEARNING_SESSION_SPAN))[-1][1]
    assert end["studyin.session.end_reason"] == "timeout"
    assert end["studyin.session.duration_s"] == 120  # the idle tail is not study time


def test_abandon(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    tracker.start_session(USER).abandon()
    end = events_of(pipeline.span(semconv.LEARNING_SESSION_SPAN))[-1][1]
    assert end["studyin.session.end_reason"] == "abandoned"


async def test_async_sessions_are_isolated_per_task(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    async def study(user: str) -> uuid.UUID:
        async with tracker.session(user) as session:
            await asyncio.sleep(0.01)
            assert current_session() is session
            tracker.material_view(user, "cardio-101", "video")
            await asyncio.sleep(0.01)
            return uuid.UUID(str(session.session_id))

    ids = await asyncio.gather(study("u-a"), study("u-b"))
    spans = [s for s in pipeline.spans() if s.name == semconv.LEARNING_SESSION_SPAN]
    assert len(spans) == 2
    for span in spans:
        assert span.attributes is not None
        session_id = span.attributes[SESSION_ID_ATTR]
        views = [a for n, a in events_of(span) if n == "studyin.material_view"]
        assert len(views) == 1 and views[0][SESSION_ID_ATTR] == session_id
    assert {str(i) for i in ids} == {s.attributes[SESSION_ID_ATTR] for s in spans if s.attributes}


def test_stateless_session_across_trackers(pipeline: Pipeline) -> None:
    """Start in one worker, end in another that only knows the id and the start time."""
    worker_a = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    worker_b = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    ticket = worker_a.begin_session(USER, material_id="cardio-101")
    started_at = ticket.started_at - timedelta(minutes=25)  # as if stored 25 minutes ago
    event = worker_b.end_session(
        USER,
        str(ticket.session_id),
        started_at=started_at,
        xp_earned=40,
        materials_touched=["cardio-101"],
        end_reason="completed",
    )
    assert event is not None
    start = pipeline.span(semconv.STANDALONE_EVENT_SPAN)
    assert events_of(start)[0][0] == "studyin.session_start"
    assert events_of(start)[0][1][SESSION_ID_ATTR] == str(ticket.session_id)
    session_span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    name, end = events_of(session_span)[0]
    assert name == "studyin.session_end"
    assert end[SESSION_ID_ATTR] == str(ticket.session_id)
    assert 25 * 60 <= end["studyin.session.duration_s"] < 25 * 60 + 5
    assert end[semconv.USER_HASH] == PSEUDONYMIZER.pseudonymize(USER)
    # the span covers the session
    assert session_span.start_time == int(started_at.timestamp() * 1e9)
    span_s = (session_span.end_time - session_span.start_time) / 1e9  # type: ignore[operator]
    assert abs(span_s - end["studyin.session.duration_s"]) < 5


def test_stateless_end_rejects_naive_start(tracker: StudyInTracker) -> None:
    with pytest.raises(EventRejected, match="started_at"):
        tracker.end_session(USER, uuid.uuid4(), started_at=datetime.now())


def test_session_events_leave_with_the_request(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    """A session kept across requests: its events (start included) travel on each request's
    span, tagged with the session id, not held on the long session span; the end is on it."""
    tracer = pipeline.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("POST /sessions"):
        session = tracker.start_session(USER)
    with tracer.start_as_current_span("POST /view") as request:
        tracker.material_view(USER, "cardio-101", "video", session=session)
        with tracer.start_as_current_span("db") as db:
            pass
    with tracer.start_as_current_span("POST /end"):
        session.end()
    view = pipeline.span("POST /view")
    assert [(n, a[SESSION_ID_ATTR]) for n, a in events_of(view)] == [
        ("studyin.material_view", str(session.session_id))
    ]
    start = pipeline.span("POST /sessions")  # the start leaves with its request, at once
    assert [(n, a[SESSION_ID_ATTR]) for n, a in events_of(start)] == [
        ("studyin.session_start", str(session.session_id))
    ]
    session_span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    assert [n for n, _ in events_of(session_span)] == ["studyin.session_end"]
    assert session_span.parent is None  # its own trace, linked to the request that started it
    assert session_span.links[0].context.span_id == pipeline.span("POST /sessions").context.span_id
    assert db.parent is not None and db.parent.span_id == request.get_span_context().span_id
    assert events_of(session_span)[-1][1]["studyin.session.materials_touched"] == ("cardio-101",)


def test_session_span_event_cap_spills_to_own_spans(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    with tracker.session(USER):
        for _ in range(150):
            tracker.xp_awarded(USER, 1, "quiz")
    session_span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    on_session = len(session_span.events)
    spilled = [s for s in pipeline.spans() if s.name == semconv.STANDALONE_EVENT_SPAN]
    assert on_session <= 100 and on_session + len(spilled) == 152  # + start and end
    assert events_of(session_span)[-1][1]["studyin.session.xp_earned"] == 150


def test_events_go_on_current_span_or_their_own(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    tracer = pipeline.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("GET /quiz"):
        tracker.achievement_unlocked(USER, "first-week")
    tracker.level_up(USER, 3, 1200)
    request = pipeline.span("GET /quiz")
    assert [n for n, _ in events_of(request)] == ["studyin.achievement_unlocked"]
    own = pipeline.span(semconv.STANDALONE_EVENT_SPAN)
    assert [n for n, _ in events_of(own)] == ["studyin.level_up"]


def test_every_helper(pipeline: Pipeline, tracker: StudyInTracker) -> None:
    interaction = tracker.ai_coach_interaction(
        USER,
        latency_ms=812.0,
        tokens_in=120,
        tokens_out=340,
        model="gpt-4o-mini",
        topic_category="cardiology",
    )
    assert interaction is not None
    interaction_id = interaction.interaction_id
    tracker.ai_coach_feedback(USER, interaction_id, 4)
    tracker.streak_updated(USER, 5)
    tracker.streak_broken(USER, 5)
    tracker.level_up(USER, 2, 500)
    tracker.achievement_unlocked(USER, "night-owl")
    tracker.system_metric("queue.depth", 17, "1")  # no user: allowed for system metrics
    tracker.system_metric("cache.hit_ratio", 0.93, "1", user_id=USER)
    tracker.api_request("/jobs/{job_id}", "POST", 202, 12.5)
    names = sorted(n for s in pipeline.spans() for n, _ in events_of(s))
    assert names == sorted(
        [
            "studyin.ai_coach_interaction",
            "studyin.ai_coach_feedback",
            "studyin.streak_updated",
            "studyin.streak_broken",
            "studyin.level_up",
            "studyin.achievement_unlocked",
            "studyin.system_metric",
            "studyin.system_metric",
            "studyin.api_request",
        ]
    )
    by_name = {n: a for s in pipeline.spans() for n, a in events_of(s)}
    assert by_name["studyin.ai_coach_feedback"]["studyin.ai.interaction_id"] == str(interaction_id)
    metrics = [a for s in pipeline.spans() for n, a in events_of(s) if n == "studyin.system_metric"]
    assert [semconv.USER_HASH in a for a in metrics].count(True) == 1


def test_invalid_input_names_field_and_reason_not_value(tracker: StudyInTracker) -> None:
    secret = "Dr. House house@example.com"
    with pytest.raises(EventRejected) as caught:
        tracker.material_view(USER, secret, "video")
    message = str(caught.value)
    assert "material_id" in message and "pattern" in message
    assert secret not in message and "house@" not in message
    with pytest.raises(EventRejected, match=r"rating: Input should be less than or equal to 5"):
        tracker.ai_coach_feedback(USER, uuid.uuid4(), 9)
    with pytest.raises(EventRejected, match=r"user_id: required"):
        tracker.level_up(None, 2, 10)
    with pytest.raises(EventRejected, match=r"user_id"):
        tracker.level_up("", 2, 10)


def test_lenient_mode_counts_and_logs_without_values(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = StudyInTracker(
        tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, lenient=True
    )
    secret = "patient-john-doe@example.com"
    with caplog.at_level(logging.WARNING):
        assert tracker.material_view(USER, secret, "video") is None
        assert tracker.xp_awarded(USER, -5, secret) is None
        assert tracker.xp_awarded(USER, 5, "ok") is not None
    assert tracker.dropped_events == 2
    assert tracker.dropped_by_type == {"material_view": 1, "xp_awarded": 1}
    assert "material_id" in caplog.text and "xp_amount" in caplog.text and "xp_reason" in caplog.text
    assert secret not in caplog.text and USER not in caplog.text
    assert len([s for s in pipeline.spans() for e in s.events]) == 1


def test_hot_path_does_no_io(pipeline: Pipeline, tracker: StudyInTracker, no_network: None) -> None:
    with tracker.session(USER) as session:
        tracker.material_view(USER, "cardio-101", "video", session=session)
        tracker.xp_awarded(USER, 5, "quiz")
    tracker.system_metric("queue.depth", 1)
    assert len(pipeline.spans()) == 2


def test_pseudonymizer_comes_from_settings_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from studyin_analytics.instrumentation.settings import get_settings

    monkeypatch.setenv("STUDYIN_ANALYTICS_PSEUDONYM_KEYS", "kx=" + "s" * 20)
    get_settings.cache_clear()
    try:
        tracker = StudyInTracker(tracer_provider=Pipeline().tracer_provider)
        assert (tracker.user_hash(USER) or "").startswith("kx:")
    finally:
        get_settings.cache_clear()


def test_ticket_is_serializable() -> None:
    tracker = StudyInTracker(tracer_provider=Pipeline().tracer_provider, pseudonymizer=PSEUDONYMIZER)
    ticket = tracker.begin_session(USER)
    assert ticket.started_at.tzinfo is UTC
    assert uuid.UUID(str(ticket.session_id)) == ticket.session_id


def test_rejection_carries_no_chained_value(tracker: StudyInTracker) -> None:
    import traceback

    secret = "Jane Roe jane.roe@example.com"
    with pytest.raises(EventRejected) as caught:
        tracker.material_view(USER, secret, "video")
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert secret not in "".join(traceback.format_exception(caught.value))


def test_failing_log_handler_prints_no_value(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    """logging prints a traceback when a handler fails: it must not chain the rejected value."""

    class ClosedStream:
        def write(self, text: str) -> int:
            raise ValueError("I/O operation on closed file")  # a stale handler of a closed stderr

        def flush(self) -> None:
            pass

    logger = logging.getLogger("studyin_analytics.instrumentation.tracker")
    handler = logging.StreamHandler(ClosedStream())  # type: ignore[arg-type]
    logger.addHandler(handler)
    try:
        tracker = StudyInTracker(
            tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER, lenient=True
        )
        secret = "jane.roe@example.com"
        assert tracker.material_view(USER, secret, "video") is None
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Logging error" in err  # the handler did fail, and logging reported it
    assert secret not in err


def test_idle_sessions_expire_as_timeouts(
    pipeline: Pipeline, tracker: StudyInTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]  # a fake monotonic clock: no dependence on real timing
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    idle = tracker.start_session(USER)
    busy = tracker.start_session("student-busy")
    assert tracker.open_sessions == 2 and tracker.open_session(str(idle.session_id)) is idle
    clock[0] += 600
    tracker.material_view("student-busy", "cardio-101", "video", session=busy)
    clock[0] += 60
    assert tracker.expire_idle_sessions(max_idle_s=300) == 1
    assert idle.ended and not busy.ended
    assert tracker.open_session(idle.session_id) is None and tracker.open_sessions == 1
    busy.end()
    assert tracker.open_sessions == 0
    ends = [
        a
        for s in pipeline.spans()
        for n, a in events_of(s)
        if n == "studyin.session_end" and a[SESSION_ID_ATTR] == str(idle.session_id)
    ]
    assert ends[0]["studyin.session.end_reason"] == "timeout"
    assert ends[0]["studyin.session.duration_s"] == 0.0  # no activity after the start
