"""Members with their own shards (``consumer_shards``): disjoint work, and failover when one is gone.

Why it exists: members that read every shard aggregate the same learners at the same time and
wait on each other's rollup rows (the scaling bench measures ~1.0x for 2 and 4 members); with
disjoint shards they do not. A shard whose member is gone must not stall: any member adopts it
once no member of it has said it is alive for ``claim_idle_ms`` (``test_member_liveness.py``:
the same with real processes, a backlog older than that, and a SIGKILL).
"""

from __future__ import annotations

import asyncio

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from studyin_analytics.instrumentation.settings import Settings
from tests.support.workload import Workload, build, mismatches, push, truth_of

SHARDS = 4


def _spread(settings: Settings, seed: int) -> tuple[Workload, dict[str, int]]:
    """A workload pushed round-robin over the shard streams; entries per stream."""
    wl = build(Pseudonymizer.from_settings(settings), users=60, seed=seed, spans_per_entry=10)
    streams = stream_keys(settings)
    per_stream = {stream: wl.entries[i :: len(streams)] for i, stream in enumerate(streams)}
    for stream, entries in per_stream.items():
        push(settings.redis_url or "", stream, entries)
    return wl, {stream: len(entries) for stream, entries in per_stream.items()}


async def _exact(settings: Settings, wl: Workload) -> list[str]:
    conn = await connect(settings)
    try:
        return await mismatches(conn, truth_of(wl))
    finally:
        await conn.close()


async def test_members_read_only_their_own_shards(migrated: Settings) -> None:
    base = migrated.with_overrides(stream_shards=SHARDS)
    wl, entries = _spread(base, seed=41)
    first = base.with_overrides(consumer_shards="0/2", consumer_name="member-a")
    second = base.with_overrides(consumer_shards="1/2", consumer_name="member-b")
    streams = stream_keys(base)
    committed: dict[str, set[str]] = {"member-a": set(), "member-b": set()}
    async with Aggregator(first) as a, Aggregator(second) as b:
        a.on_committed = lambda stream, _ids: committed["member-a"].add(stream)
        b.on_committed = lambda stream, _ids: committed["member-b"].add(stream)
        assert a.own_streams == [streams[0], streams[2]] and b.own_streams == [streams[1], streams[3]]
        await asyncio.gather(a.drain(timeout_s=60), b.drain(timeout_s=60))
        assert a.totals.entries == entries[streams[0]] + entries[streams[2]]
        assert b.totals.entries == entries[streams[1]] + entries[streams[3]]
        assert await a.lag() == 0  # the whole bus, both members together
    assert committed == {"member-a": {streams[0], streams[2]}, "member-b": {streams[1], streams[3]}}
    assert await _exact(base, wl) == []


async def test_a_shard_without_its_member_is_adopted_and_given_back(migrated: Settings) -> None:
    base = migrated.with_overrides(stream_shards=SHARDS, claim_idle_ms=300)
    wl, _ = _spread(base, seed=42)
    alone = base.with_overrides(consumer_shards="0/2", consumer_name="survivor")
    streams = stream_keys(base)
    async with Aggregator(alone) as survivor:
        # Nothing changes hands before a member has been up for claim_idle_ms: members that
        # restart with it have that long to say they are alive.
        assert await survivor.adopt_orphans() == []
        await asyncio.sleep(0.4)
        # No member of shards 1 and 3 is alive (none ever said so).
        assert await survivor.adopt_orphans() == [streams[1], streams[3]]
        await survivor.drain(timeout_s=60)
        assert await survivor.lag() == 0
        status = await survivor.status()
        assert status["adopted_streams"] == [streams[1], streams[3]]
        # Nothing waits on them, but their member is still gone: they stay adopted.
        await survivor.adopt_orphans()
        assert (await survivor.status())["adopted_streams"] == [streams[1], streams[3]]
        # Their member is back: they go back to it at once.
        returning = base.with_overrides(consumer_shards="1/2", consumer_name="returning")
        async with Aggregator(returning) as member:
            await member.drain(timeout_s=60)
            await survivor.adopt_orphans()
            assert (await survivor.status())["adopted_streams"] == []
    assert await _exact(base, wl) == []


def test_consumer_shards_are_validated_against_the_shard_count() -> None:
    assert Settings(stream_shards=8, consumer_shards="1/4", _env_file=None).preferred_shards == (1, 5)  # type: ignore[call-arg]
    assert Settings(stream_shards=8, consumer_shards="0-2, 6", _env_file=None).preferred_shards == (
        0,
        1,
        2,
        6,
    )  # type: ignore[call-arg]
    assert Settings(stream_shards=3, _env_file=None).preferred_shards == (0, 1, 2)  # type: ignore[call-arg]
    for text, reason in (("4/4", "0 <= i < n"), ("9", "stream_shards is 8"), ("x", "pattern")):
        try:
            Settings(stream_shards=8, consumer_shards=text, _env_file=None)  # type: ignore[call-arg]
        except ValueError as exc:
            assert "consumer_shards" in str(exc) and reason in str(exc), str(exc)
        else:
            raise AssertionError(f"{text!r} was accepted")
