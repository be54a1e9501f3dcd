"""Privacy canary for the xAPI mapping (pure): a distinctive raw user id goes through the tracker as the
learner's id, and is planted in the event rows at any depth and in any value type (unknown properties,
property names, fields of other event types, nested lists and maps, the LRS actor field itself). No
statement contains it, nor the analytics pseudonym; the LRS pseudonym is the only trace of the learner."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer.mapping import EventRow
from studyin_analytics.aggregator.lrs.xapi import LRS_ACTOR_FIELD, Skipped, SkipReason, StatementMapper
from studyin_analytics.instrumentation import events
from tests.support.lrs.samples import ANALYTICS, CONFIG, LRS, rows_through_pipeline
from tests.support.lrs.strategies import learning_events

RAW_ID = "canary-uid-3c1f9e7d"
RAW_NUMBER = 987_654_321_987
CANARIES = (RAW_ID, RAW_ID.upper(), "3c1f9e7d", str(RAW_NUMBER))
MAPPER = StatementMapper(CONFIG)

leaves = st.sampled_from(
    [RAW_ID, RAW_ID.upper(), RAW_NUMBER, f"mailto:{RAW_ID}@school.example", f"x {RAW_ID} y"]
)
planted_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", RAW_ID]), inner)
)
plantings = st.dictionaries(
    st.sampled_from(
        ["note", "user_id", "email", RAW_ID, "xp_reason", "topic_category", "material_id", "model"]
    ),
    planted_values,
    max_size=4,
)


def plant(row: EventRow, planted: dict[str, Any]) -> EventRow:
    """``planted`` added to the row's properties where it is not one of the event's own fields (those are
    content ids, copied by design: what a field carries is the event model's business)."""
    own = events.EVENT_TYPES[row.event_type].model_fields
    extra = {k: v for k, v in planted.items() if k not in own}
    return row._replace(properties={**row.properties, **extra})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=learning_events, planted=plantings, user=st.sampled_from([RAW_ID, RAW_NUMBER]))
def test_no_raw_id_and_no_analytics_pseudonym_in_any_statement(
    event: tuple[type[events.DomainEvent], dict[str, Any]], planted: dict[str, Any], user: str | int
) -> None:
    model, fields = event
    assume(not any(c in json.dumps(fields, default=str) for c in CANARIES))
    (row,) = rows_through_pipeline([(str(user), model, fields)])
    assert row.user_hash == ANALYTICS.pseudonymize(str(user))
    statement = MAPPER.map(plant(row, planted))
    assert not isinstance(statement, Skipped), statement
    text = json.dumps(statement)
    for canary in (*CANARIES, row.user_hash, row.user_hash.split(":")[1]):
        assert canary not in text
    assert statement["actor"]["account"]["name"] == LRS.pseudonymize(str(user))
    assert "mbox" not in text and "mbox_sha1sum" not in text and "openid" not in text


@settings(max_examples=50, deadline=None)
@given(event=learning_events, value=planted_values)
def test_a_raw_id_in_the_lrs_actor_field_gives_no_statement(
    event: tuple[type[events.DomainEvent], dict[str, Any]], value: Any
) -> None:
    """An app that put the raw id where the LRS pseudonym belongs: nothing is sent, and nothing falls back
    to another identity."""
    model, fields = event
    (row,) = rows_through_pipeline([(RAW_ID, model, fields)], lrs=None)
    broken = row._replace(properties={**row.properties, LRS_ACTOR_FIELD: value})
    assert MAPPER.map(broken) == Skipped(SkipReason.NO_LRS_ACTOR)
