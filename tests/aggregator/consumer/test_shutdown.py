"""An aggregator stops when told, even if its Redis client swallows a cancellation.

redis-py's asyncio pipeline (8.1) can return normally from ``execute()`` when a cancellation
lands while it hands its connection back (about 1 in 4 cancellations of an in-flight heartbeat
against a real Redis). The heartbeat loop used to go on forever after such a cancel, and
``close`` waited for it: a SIGTERMed ``studyin-analytics aggregator`` never exited
(``tests/faults/test_fault_injection.py::test_redis_restart_and_lost_group``, about 1 run in
7 to 30). Here the heartbeat swallows every cancellation the same way, deterministically, against
the real servers; ``close`` must still end the loop and return at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings


class SwallowingHeartbeat(Aggregator):
    """A heartbeat that, like redis-py's pipeline at an unlucky moment, returns when cancelled."""

    beats = 0

    async def heartbeat(self) -> None:
        await super().heartbeat()
        self.beats += 1
        # Still handing the connection back when close() cancels; swallowed, the task goes on.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.5)


async def test_close_ends_the_heartbeat_loop_even_if_a_cancellation_is_swallowed(migrated: Settings) -> None:
    settings = migrated.with_overrides(claim_idle_ms=1000)
    stop = asyncio.Event()
    agg = SwallowingHeartbeat(settings)
    await agg.__aenter__()
    runner = asyncio.create_task(agg.run(stop))
    try:
        for _ in range(100):  # the loop turns and a heartbeat is in flight
            if agg.beats >= 2:
                break
            await asyncio.sleep(0.05)
        assert agg.beats >= 2
        stop.set()
        await asyncio.wait_for(runner, 10)
        keeper = agg._keeper
        assert keeper is not None and not keeper.done()  # mid-heartbeat: the cancel will be swallowed
        started = time.monotonic()
        closing = asyncio.create_task(agg.__aexit__(None, None, None))
        done, _ = await asyncio.wait({closing}, timeout=8)
        assert closing in done, "close() waited forever for a heartbeat loop that swallowed its cancellation"
        assert time.monotonic() - started < 3
        await asyncio.wait({keeper}, timeout=2)
        assert keeper.done()  # and the loop itself is over, not left beating
    finally:
        stop.set()
        agg._keeper_stopping = True  # never leave a beating task behind, even when the test fails
