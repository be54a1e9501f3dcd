"""Every lag figure clears once the group has read everything, whatever Redis's counter says.

On Redis 7.0 a promoted replica keeps the consumer group's ``entries-read`` from before the
failover (``XREADGROUP`` did not replicate it), so ``XINFO GROUPS`` reports a ``lag`` of hundreds
for a group that has read the newest entry (reproduced on a real cluster in
``tests/cluster/test_lag_after_failover.py``). Here the same counter is set on one server with
``XGROUP SETID … ENTRIESREAD``, and every consumer of the figure is checked: the aggregator's
``lag()`` and ``status()`` (``aggregator --status``, the health endpoint, the lag metric), its
``drain()`` (demo, bench), ``bus stats`` and the query API's pipeline figure.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api.app import pipeline_lag
from studyin_analytics.exporter import bus
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.workload import build, push

STALE_BY = 300


def _make_counter_stale(settings: Settings, stream: str) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        added = int(client.xinfo_stream(stream)["entries-added"])
        client.execute_command(
            "XGROUP", "SETID", stream, settings.consumer_group, "$", "ENTRIESREAD", added - STALE_BY
        )
        (group,) = client.xinfo_groups(stream)
        assert group["lag"] == STALE_BY and group["pending"] == 0  # what Redis reports now
    finally:
        client.close()


async def test_every_lag_figure_is_zero_for_a_caught_up_group_with_a_stale_counter(
    migrated: Settings,
) -> None:
    settings = migrated
    wl = build(Pseudonymizer.from_settings(settings), users=40, seed=5, spans_per_entry=1)
    assert len(wl.entries) > STALE_BY
    stream = stream_keys(settings)[0]
    push(settings.redis_url or "", stream, wl.entries)
    async with Aggregator(settings) as agg:
        await agg.drain(timeout_s=60)
        _make_counter_stale(settings, stream)
        assert await agg.lag() == 0
        status = await agg.status()
        assert (status["lag"], status["pending"]) == (0, 0)
        await agg.drain(timeout_s=5)  # returns: nothing is left (it waited for 0 for ever)
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            figure = await pipeline_lag(client, settings)
            stats = await bus.stats(client, settings)
        finally:
            await client.aclose()
    assert (figure.entries_behind, figure.pending, figure.oldest_unprocessed_age_s) == (0, 0, None)
    (group,) = stats.streams[0].groups
    assert (group.lag, group.lag_exact) == (0, True)
