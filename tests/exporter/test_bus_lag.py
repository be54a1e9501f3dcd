"""Consumer-group lag from the one function that computes it (``bus.group_lags``), against brute force.

Any sequence of adds, reads, acknowledgements, trims and ``XGROUP SETID`` (with a wrong
``ENTRIESREAD`` too: the stale counter a Redis 7.0 replica ends up with after a failover) gives
the count of entries after the group's last-delivered id, exactly, on the machine's Redis 7
and on the embedded Redis 6.2 (which reports no ``lag`` at all).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studyin_analytics.exporter import bus
from studyin_analytics.instrumentation.settings import Settings
from tests.support import ServerUrls

GROUP = "g"

Op = tuple[str, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 30)),  # fewer than LAG_TRUST_ABOVE in all
        st.tuples(st.just("read"), st.integers(1, 40)),
        st.tuples(st.just("ack"), st.integers(1, 40)),
        st.tuples(st.just("trim"), st.integers(0, 60)),
        st.tuples(st.just("setid"), st.integers(0, 100)),  # a percentile of the stream's ids
        st.tuples(st.just("stale"), st.integers(0, 100)),  # entries-read set to a wrong value
    ),
    max_size=25,
)


def _apply(client: redis.Redis, key: str, op: Op, major: int) -> None:
    kind, n = op
    if kind == "add":
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(key, {"i": i})
        pipe.execute()
    elif kind == "read":
        client.xreadgroup(GROUP, "c", {key: ">"}, count=n)
    elif kind == "ack":
        pending: Any = client.xpending_range(key, GROUP, min="-", max="+", count=n)
        if pending:
            client.xack(key, GROUP, *[p["message_id"] for p in pending])
    elif kind == "trim":
        client.xtrim(key, maxlen=n, approximate=False)
    else:
        ids = [entry_id for entry_id, _ in client.xrange(key)]
        target = ids[min(len(ids) - 1, n * len(ids) // 100)] if ids else b"0-0"
        if kind == "setid" or major < 7:
            client.execute_command("XGROUP", "SETID", key, GROUP, target)
        else:  # what a promoted replica of Redis 7.0 may hold: a counter that lags the id
            added = int(client.xinfo_stream(key)["entries-added"])
            client.execute_command("XGROUP", "SETID", key, GROUP, target, "ENTRIESREAD", added * n // 100)


def _truth(client: redis.Redis, key: str) -> tuple[int, int, str | None]:
    """Brute force: (entries after the last-delivered id, pending, first of them)."""
    (group,) = client.xinfo_groups(key)
    after = client.xrange(key, min=f"({group['last-delivered-id'].decode()}", max="+")
    first = after[0][0].decode() if after else None
    return len(after), int(client.xpending(key, GROUP)["pending"]), first


def _check(url: str, sequence: list[Op]) -> None:
    key = f"test:lag:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(url)
    major = int(str(client.info("server")["redis_version"]).split(".", 1)[0])
    try:
        client.xgroup_create(key, GROUP, id="0", mkstream=True)
        for op in sequence:
            _apply(client, key, op, major)
        undelivered, pending, first = _truth(client, key)

        async def computed() -> bus.GroupLag | None:
            async_client = aioredis.Redis.from_url(url)
            try:
                return await bus.group_lag(async_client, key, GROUP)
            finally:
                await async_client.aclose()

        lag = asyncio.run(computed())
        assert lag is not None
        assert (lag.undelivered, lag.exact, lag.pending, lag.next_id) == (undelivered, True, pending, first)
        assert lag.behind == undelivered + pending
    finally:
        client.delete(key)
        client.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops)
def test_lag_equals_brute_force_on_redis_7(server_urls: ServerUrls, sequence: list[Op]) -> None:
    _check(server_urls.redis_url, sequence)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops)
def test_lag_equals_brute_force_on_redis_6(redis_62: str, sequence: list[Op]) -> None:
    _check(redis_62, sequence)


def test_a_caught_up_group_has_no_lag_whatever_redis_counts(settings: Settings) -> None:
    """The symptom of the 7.0 failover on one server: a stale entries-read, nothing left to read."""
    key = bus.stream_keys(settings)[0]
    client = redis.Redis.from_url(settings.redis_url or "")
    try:
        client.xgroup_create(key, GROUP, id="0", mkstream=True)
        for i in range(500):
            client.xadd(key, {"i": i})
        client.xreadgroup(GROUP, "c", {key: ">"}, count=1000)
        client.execute_command("XGROUP", "SETID", key, GROUP, "$", "ENTRIESREAD", 200)
        (group,) = client.xinfo_groups(key)
        assert group["lag"] == 300  # what Redis says
    finally:
        client.close()

    async def computed() -> bus.GroupLag | None:
        async_client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            return await bus.group_lag(async_client, key, GROUP)
        finally:
            await async_client.aclose()

    lag = asyncio.run(computed())
    assert lag is not None and (lag.undelivered, lag.pending, lag.next_id) == (0, 500, None)
