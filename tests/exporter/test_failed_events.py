"""Failed events: their ids are the aggregator's, they round-trip through stream fields, and they keep no
raw identifier or e-mail address."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer.mapping import event_id as mapping_event_id
from studyin_analytics.exporter.failed_events import FailedEvent, event_id, protected
from studyin_analytics.instrumentation.custom_schemas import EventError
from studyin_analytics.instrumentation.privacy import is_pseudonym
from tests.support.pipeline import PSEUDONYMIZER

pytestmark = pytest.mark.unit


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.integers(0, 70_000))
def test_ids_are_the_aggregators(trace: bytes, span: bytes, index: int) -> None:
    assert event_id(trace, span, index) == mapping_event_id(trace, span, index)


def test_fields_round_trip_and_scrub_emails() -> None:
    event = FailedEvent(
        uuid.uuid4(),
        1_764_000_000_123_456,
        "org.example/x",
        "1-0-0",
        (
            EventError("/a", "fails maxLength 3"),
            EventError("", "schema org.example/x 1-0-0 is not registered"),
        ),
        {"a": "mail me at someone@example.org", "b": [1, "x"], "c": {"nested": 1}},
        "k1:" + "0" * 32,
        None,
        "track",
    )
    back = FailedEvent.of_fields({k.encode(): v.encode() for k, v in event.fields().items()})
    assert back.event_id == event.event_id and back.time_us == event.time_us and back.errors == event.errors
    assert "example.org" not in back.properties["a"] and back.properties["b"] == [1, "x"]
    assert back.properties["c"] is None and back.source == "track" and back.user_hash == event.user_hash
    assert back.occurred_at.timestamp() * 1_000_000 == pytest.approx(event.time_us)


def test_identifiers_are_hmaced_before_they_are_kept() -> None:
    props = {"patient_ref": "patient-7", "email": "a@b.org", "case_id": "c1", "user_name": 42}
    unknown = protected(props, None, PSEUDONYMIZER.pseudonymize)  # no schema: names that look like identity
    assert unknown["case_id"] == "c1"
    for key in ("patient_ref", "email", "user_name"):
        assert is_pseudonym(unknown[key]), key
    known = protected(props, frozenset({"case_id"}), PSEUDONYMIZER.pseudonymize)  # the schema decides
    assert (
        is_pseudonym(known["case_id"]) and is_pseudonym(known["email"]) and is_pseudonym(known["patient_ref"])
    )
    assert protected(props, None, None) == {"case_id": "c1"}  # no key: identifiers go
