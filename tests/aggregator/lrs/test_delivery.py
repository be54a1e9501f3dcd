"""Delivering planned batches to the real Ralph: a batch with an invalid statement and a conflicting one
lands everything else, and the two come back isolated with Ralph's reasons; delivering again lands nothing
twice; wrong credentials and an absent LRS are raised, never dead-lettered."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from studyin_analytics.aggregator.lrs.batches import Item, plan_batches
from studyin_analytics.aggregator.lrs.delivery import HttpSender, LrsMisconfigured, LrsUnavailable, deliver
from studyin_analytics.aggregator.lrs.xapi import StatementMapper
from studyin_analytics.instrumentation import events
from tests.support.lrs.ralph import RalphServer, as_sent
from tests.support.lrs.samples import CONFIG, rows_through_pipeline

pytestmark = pytest.mark.timeout(1200)  # the first test of a machine creates Ralph's venv

MAPPER = StatementMapper(CONFIG)


def planned_items(count: int) -> list[Item]:
    user = f"learner-{uuid.uuid4().hex[:8]}"
    rows = rows_through_pipeline(
        (
            user,
            events.MaterialProgress,
            {"material_id": f"m-{i}", "material_type": "video", "progress": i / count},
        )
        for i in range(count)
    )
    (batch,) = plan_batches([("1-0", rows)], MAPPER, max_statements=count).batches
    return list(batch.items)


def with_json(item: Item, statement: dict[str, object]) -> Item:
    return item._replace(json=orjson.dumps(statement))


async def test_a_refused_batch_is_split_until_only_the_refused_statements_remain(ralph: RalphServer) -> None:
    good = planned_items(40)
    stored_first = good[7]
    assert ralph.post([orjson.loads(stored_first.json)]).status_code == 200
    invalid = with_json(good[20], {k: v for k, v in orjson.loads(good[20].json).items() if k != "verb"})
    conflicting = orjson.loads(stored_first.json)
    conflicting["result"] = {"extensions": {"https://w3id.org/xapi/cmi5/result/extensions/progress": 99}}
    batch = [*good[:20], invalid, *good[21:], with_json(stored_first, conflicting)]
    del batch[7]  # the conflicting version goes last instead

    async with httpx.AsyncClient(auth=ralph.auth, timeout=60) as client:
        outcome = await deliver(batch, HttpSender(client, ralph.statements_url))
        again = await deliver(batch, HttpSender(client, ralph.statements_url))

    landed = [i for i in good if i not in (good[7], good[20])]
    assert [i.statement_id for i in outcome.delivered] == [i.statement_id for i in landed]
    assert [(r.item.statement_id, r.status) for r in outcome.rejected] == [
        (invalid.statement_id, 422),
        (stored_first.statement_id, 409),
    ]
    assert outcome.rejected[0].reason == "0.verb: Field required"
    assert stored_first.statement_id in outcome.rejected[1].reason
    assert [r.item for r in outcome.conflicts] == [batch[-1]]
    assert outcome.requests <= 1 + 2 * 2 * 6  # 1 + 2·k·⌈log2 40⌉
    counts = ralph.stored_ids()
    for item in landed:
        assert as_sent(ralph.get(item.statement_id) or {}) == orjson.loads(item.json)
        assert counts[item.statement_id] == 1
    assert ralph.get(invalid.statement_id) is None
    assert as_sent(ralph.get(stored_first.statement_id) or {}) == orjson.loads(stored_first.json)
    # delivering the same batch again: nothing new is stored, the same two are isolated
    assert [i.statement_id for i in again.delivered] == [i.statement_id for i in landed]
    assert [(r.item.statement_id, r.status) for r in again.rejected] == [
        (invalid.statement_id, 422),
        (stored_first.statement_id, 409),
    ]
    assert ralph.stored_ids() == counts


async def test_wrong_credentials_are_a_misconfiguration_not_a_refusal(ralph: RalphServer) -> None:
    items = planned_items(3)
    async with httpx.AsyncClient(auth=(ralph.username, "wrong"), timeout=60) as client:
        with pytest.raises(LrsMisconfigured, match="LRS answered 401"):
            await deliver(items, HttpSender(client, ralph.statements_url))
    assert all(ralph.get(i.statement_id) is None for i in items)


async def test_an_absent_lrs_is_unavailable(ralph_python: Path, tmp_path: Path) -> None:
    server = RalphServer(ralph_python, tmp_path)
    server.start()
    url = server.statements_url
    server.stop()
    async with httpx.AsyncClient(auth=server.auth, timeout=10) as client:
        with pytest.raises(LrsUnavailable, match="LRS unreachable: ConnectError"):
            await deliver(planned_items(2), HttpSender(client, url))
