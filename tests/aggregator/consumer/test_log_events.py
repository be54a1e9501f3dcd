"""Events carried as log records (wire version 2 log rows) give exact rollups: alone, mixed with span
events in one entry, next to version-1 entries of a writer before the upgrade, and redelivered."""

from __future__ import annotations

import pytest

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.consumer.mapping import locate, rows_from_span
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support.pipeline import PSEUDONYMIZER
from tests.support.workload import build, mismatches, push, truth_of
from tests.support.workload.carriers import as_version_1, with_log_carrier


async def test_both_carriers_and_both_versions_on_one_stream_are_exact(migrated: Settings) -> None:
    settings = migrated.with_overrides(batch_size=9)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    old_writer = build(pseudonymizer, users=25, seed=11)  # span events, wire version 1
    log_writer = with_log_carrier(build(pseudonymizer, users=25, seed=12))  # every session's events as logs
    mixed = with_log_carrier(build(pseudonymizer, users=25, seed=13), share=0.5)  # both in one entry
    wl = old_writer + log_writer + mixed
    entries = [*(as_version_1(e) for e in old_writer.entries), *log_writer.entries, *mixed.entries]
    assert sum(1 for e in entries if e[wire.FIELD_VERSION] == b"1") == len(old_writer.entries)
    # Redelivered entries (a retried export) count once.
    push(
        settings.redis_url or "",
        stream_keys(settings)[0],
        entries + log_writer.entries[::2] + mixed.entries[::3],
    )
    async with Aggregator(settings) as aggregator:
        totals = await aggregator.drain(timeout_s=90)
    assert totals.dead_lettered == 0
    assert totals.events_inserted == wl.event_count
    conn = await connect(settings)
    try:
        assert await mismatches(conn, truth_of(wl)) == []
    finally:
        await conn.close()


@pytest.mark.unit
def test_log_events_have_stable_ids_and_are_located() -> None:
    wl = with_log_carrier(build(PSEUDONYMIZER, users=3, seed=2))
    records = [r for e in wl.entries for r in wire.decode_batch(e[wire.FIELD_DATA])]
    logs = [r for r in records if r.log is not None]
    assert logs
    rows = [row for r in records for row in rows_from_span(r)]
    assert len(rows) == wl.event_count and len({row.event_id for row in rows}) == len(rows)
    again = [
        row.event_id
        for e in wl.entries
        for r in wire.decode_batch(e[wire.FIELD_DATA])
        for row in rows_from_span(r)
    ]
    assert again == [row.event_id for row in rows]  # the same entry maps to the same ids
    wanted = {row.event_id for r in logs for row in rows_from_span(r)}
    found = locate(records, wanted)
    assert set(found) == wanted and all(records[position].log is not None for position, _ in found.values())
