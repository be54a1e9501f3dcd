"""Custom events can be funnel steps and retention return events (by their schema name)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from studyin_analytics.aggregator.analysis.definitions import EventMatcher, FunnelStep, ReturnEvent

pytestmark = pytest.mark.unit


def test_a_custom_schema_name_is_an_event_a_malformed_one_is_not() -> None:
    assert FunnelStep(event="org.example/case_completed").event == "org.example/case_completed"
    ret = ReturnEvent(kind="event", matcher=EventMatcher(event="org.example/case_completed"))
    assert ret.matcher is not None
    for bad in ("case_completed", "org.example/", "Org.example/x"):
        with pytest.raises(ValidationError):
            FunnelStep(event=bad)
