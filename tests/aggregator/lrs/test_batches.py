"""Planning batches from bus entries and isolating refused statements (pure: the LRS here is a model of the
all-or-nothing POST rule; tests/aggregator/lrs/test_delivery.py does the same against the real Ralph)."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studyin_analytics.aggregator.consumer.mapping import EventRow
from studyin_analytics.aggregator.lrs.batches import Item, plan_batches
from studyin_analytics.aggregator.lrs.delivery import (
    LrsAnswer,
    LrsMisconfigured,
    LrsUnavailable,
    deliver,
)
from studyin_analytics.aggregator.lrs.xapi import Selection, SkipReason, StatementMapper
from studyin_analytics.instrumentation import events
from tests.support.lrs.samples import CONFIG, rows_through_pipeline, sample_rows

pytestmark = pytest.mark.unit

MAPPER = StatementMapper(CONFIG)


def views(count: int, user: str = "learner-1") -> list[EventRow]:
    return rows_through_pipeline(
        (user, events.MaterialView, {"material_id": f"m-{i}", "material_type": "pdf"}) for i in range(count)
    )


def test_batches_hold_every_statement_once_in_bus_order_within_the_limits() -> None:
    rows = views(23)
    entries = [(f"1-{i}", rows[i * 5 : i * 5 + 5]) for i in range(5)]  # 5, 5, 5, 5, 3 rows
    plan = plan_batches(entries, MAPPER, max_statements=4)
    assert [len(b.items) for b in plan.batches] == [4, 4, 4, 4, 4, 3]
    sent = [json.loads(item.json) for b in plan.batches for item in b.items]
    assert sent == [MAPPER.map(row) for row in rows]
    assert all(json.loads(b.body()) == [json.loads(i.json) for i in b.items] for b in plan.batches)
    # an entry completes with the batch holding its last statement
    assert [b.completes for b in plan.batches] == [(), ("1-0",), ("1-1",), ("1-2",), ("1-3",), ("1-4",)]


def test_the_byte_limit_splits_batches_and_a_larger_statement_goes_alone() -> None:
    rows = views(6)
    sizes = [len(json.dumps(MAPPER.map(r), separators=(",", ":"))) for r in rows]
    plan = plan_batches([("1-0", rows)], MAPPER, max_bytes=2 + sizes[0] + 1 + sizes[1])
    assert [len(b.items) for b in plan.batches] == [2, 2, 2]
    assert all(len(b.body()) <= 2 + sizes[0] + 1 + sizes[1] for b in plan.batches)
    tiny = plan_batches([("1-0", rows)], MAPPER, max_bytes=10)
    assert [len(b.items) for b in tiny.batches] == [1] * 6


def test_skipped_events_are_counted_and_their_entries_still_complete() -> None:
    system = sample_rows("api_request")
    level = sample_rows("level_up")
    bad = level[0]._replace(properties={**level[0].properties, "level": 0})
    mapper = StatementMapper(CONFIG, Selection.of(["material_view", "level_up"]))
    plan = plan_batches(
        [("1-0", system), ("1-1", sample_rows("streak_updated")), ("1-2", [bad]), ("1-3", views(1))], mapper
    )
    assert plan.skipped == Counter(
        {SkipReason.SYSTEM_EVENT: 1, SkipReason.NOT_SELECTED: 1, SkipReason.INVALID_EVENT: 1}
    )
    assert [(i.entry_id, i.event_id) for i in plan.invalid] == [("1-2", str(bad.event_id))]
    assert plan.invalid[0].detail.startswith("level_up.level: ")
    assert [b.completes for b in plan.batches] == [("1-0", "1-1", "1-2", "1-3")]
    assert plan.statements == 1
    only_skipped = plan_batches([("1-0", system)], mapper)
    assert [(b.items, b.completes) for b in only_skipped.batches] == [((), ("1-0",))]
    assert plan_batches([], mapper).batches == []


def test_an_event_delivered_twice_on_the_bus_is_sent_once() -> None:
    rows = views(3)
    plan = plan_batches([("1-0", rows), ("1-1", rows[1:2]), ("1-2", rows)], MAPPER, max_statements=2)
    assert plan.duplicates == 4
    assert [i.statement_id for b in plan.batches for i in b.items] == [MAPPER.map(r)["id"] for r in rows]  # type: ignore[index]


def test_batch_limits_must_allow_a_statement() -> None:
    with pytest.raises(ValueError, match="at least one statement"):
        plan_batches([], MAPPER, max_statements=0)


# --- isolating refusals -----------------------------------------------------------------------------


class ModelLrs:
    """The xAPI POST rule: a batch holding any refused statement is refused whole; else all land."""

    def __init__(self, refused: dict[str, int]) -> None:
        self.refused = refused
        self.stored: list[str] = []

    async def __call__(self, body: bytes) -> LrsAnswer:
        ids = [s["id"] for s in json.loads(body)]
        statuses = [self.refused[i] for i in ids if i in self.refused]
        if statuses:
            return LrsAnswer(statuses[0], f"refused {ids[0]}")
        self.stored += [i for i in ids if i not in self.stored]
        return LrsAnswer(200)


def items(count: int) -> list[Item]:
    return [Item("1-0", str(i), f"id-{i}", json.dumps({"id": f"id-{i}"}).encode()) for i in range(count)]


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=64),
    bad=st.dictionaries(
        st.integers(min_value=0, max_value=63), st.sampled_from([400, 409, 413, 422]), max_size=6
    ),
)
def test_refused_statements_are_isolated_and_all_others_land(count: int, bad: dict[int, int]) -> None:
    batch = items(count)
    refused = {f"id-{i}": status for i, status in bad.items() if i < count}
    lrs = ModelLrs(refused)
    outcome = asyncio.run(deliver(batch, lrs))
    assert [i.statement_id for i in outcome.delivered] == [
        i.statement_id for i in batch if i.statement_id not in refused
    ]
    assert lrs.stored == [i.statement_id for i in outcome.delivered]
    assert {r.item.statement_id: r.status for r in outcome.rejected} == refused
    assert all(r.reason == f"refused {r.item.statement_id}" for r in outcome.rejected)
    assert {r.item.statement_id for r in outcome.conflicts} == {i for i, s in refused.items() if s == 409}
    bound = 1 + 2 * len(refused) * max(1, math.ceil(math.log2(count)))
    assert outcome.requests <= bound


@pytest.mark.parametrize(
    ("status", "error"), [(500, LrsUnavailable), (503, LrsUnavailable), (429, LrsUnavailable)]
)
def test_an_unavailable_lrs_is_raised_not_isolated(status: int, error: type[Exception]) -> None:
    async def unavailable(body: bytes) -> LrsAnswer:
        return LrsAnswer(status, "busy")

    with pytest.raises(error, match=f"LRS answered {status}: busy"):
        asyncio.run(deliver(items(8), unavailable))


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_a_misconfigured_forwarder_is_raised_not_isolated(status: int) -> None:
    async def refusing_us(body: bytes) -> LrsAnswer:
        return LrsAnswer(status, "who are you")

    with pytest.raises(LrsMisconfigured, match=f"LRS answered {status}"):
        asyncio.run(deliver(items(8), refusing_us))


def test_nothing_to_deliver_sends_nothing() -> None:
    async def never(body: bytes) -> LrsAnswer:
        raise AssertionError("sent")

    assert asyncio.run(deliver([], never)).requests == 0
