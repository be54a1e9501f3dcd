"""A learning session's own events (``session_start`` without a material, ``session_end`` from the
session's tally) are built without the model's validation, as nothing in them came from the caller
unchecked: they must be exactly what the validated path records and returns."""

from __future__ import annotations

import pickle
import random
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from studyin_analytics.instrumentation import StudyInTracker, semconv
from studyin_analytics.instrumentation.events import SessionEnd, SessionEndReason, SessionStart
from studyin_analytics.instrumentation.sessions import MAX_XP_EARNED, new_session_id
from tests.support.pipeline import PSEUDONYMIZER, Pipeline

pytestmark = pytest.mark.unit

USER = "student-fast-1"
DURATION = semconv.FIELD_ATTRIBUTES["duration_s"]


def _exported(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes as the SDK keeps them (lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}


@settings(max_examples=60, deadline=None)
@given(
    xp=st.lists(st.integers(1, 5000), max_size=4),
    materials=st.lists(st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,10}", fullmatch=True), max_size=4),
    reason=st.sampled_from(list(SessionEndReason)),
    via_with=st.booleans(),
)
def test_lifecycle_events_equal_the_validated_ones(
    xp: list[int], materials: list[str], reason: SessionEndReason, via_with: bool
) -> None:
    pipeline = Pipeline()
    tracker = StudyInTracker(tracer_provider=pipeline.tracer_provider, pseudonymizer=PSEUDONYMIZER)
    session = tracker.start_session(USER)
    for amount in xp:
        tracker.xp_awarded(USER, amount, "quiz", session=session)
    for material in materials:
        tracker.material_view(USER, material, "video", session=session)
    returned = None
    if via_with:
        with session:
            pass
        reason = SessionEndReason.COMPLETED
    else:
        returned = session.end(end_reason=reason)
    span = pipeline.span(semconv.LEARNING_SESSION_SPAN)
    recorded = [(e.name, dict(e.attributes or {})) for e in span.events]
    user = {semconv.USER_HASH: PSEUDONYMIZER.pseudonymize(USER)}
    assert recorded[0] == (
        "studyin.session_start",
        _exported(SessionStart(session_id=session.session_id).attributes() | user),
    )
    end_name, end = recorded[-1]
    expected = SessionEnd(
        session_id=session.session_id,
        duration_s=end[DURATION],
        xp_earned=sum(xp),
        materials_touched=tuple(dict.fromkeys(materials)),
        end_reason=reason,
    )
    assert (end_name, end) == ("studyin.session_end", _exported(expected.attributes() | user))
    if not via_with:
        assert returned == expected


def test_xp_bound_is_the_models() -> None:
    """Above MAX_XP_EARNED the end event takes the validated path (and is refused there)."""
    SessionEnd(session_id=new_session_id(), duration_s=1.0, xp_earned=MAX_XP_EARNED)
    with pytest.raises(ValidationError):
        SessionEnd(session_id=new_session_id(), duration_s=1.0, xp_earned=MAX_XP_EARNED + 1)


def test_session_ids_are_what_uuid_makes_of_the_same_bits() -> None:
    state = random.getstate()
    try:
        random.seed(20261204)
        fast = [new_session_id() for _ in range(500)]
        random.seed(20261204)
        made = [uuid.UUID(int=random.getrandbits(128), version=4) for _ in range(500)]
    finally:
        random.setstate(state)
    assert fast == made
    assert [(str(f), hash(f), f.is_safe) for f in fast] == [(str(m), hash(m), m.is_safe) for m in made]
    assert pickle.loads(pickle.dumps(fast[0])) == made[0]


def test_session_ids_are_version_4_and_distinct() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert (
        len(ids) == 1000
        and {i.version for i in ids} == {4}
        and {i.variant for i in ids} == {"specified in RFC 4122"}
    )
