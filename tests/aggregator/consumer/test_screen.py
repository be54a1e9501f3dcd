"""Screening event rows and the partition window as pure functions (no servers)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from studyin_analytics.aggregator.consumer.mapping import micros_of, rows_from_span, screen, time_of
from studyin_analytics.aggregator.storage.schema import (
    PARTITIONS_AHEAD,
    PartitionOutOfWindow,
    ensure_partitions,
)
from studyin_analytics.exporter import wire
from studyin_analytics.exporter.admission import EventWindow
from studyin_analytics.instrumentation.settings import Settings

pytestmark = pytest.mark.unit

DAY_NS = 86_400 * 10**9
SETTINGS = Settings(raw_retention_days=90, _env_file=None)  # type: ignore[call-arg]


def span(events: list[tuple[str, int, dict[str, object]]]) -> wire.SpanRecord:
    now = time.time_ns()
    return wire.SpanRecord(
        b"\x01" * 16,
        b"\x02" * 8,
        None,
        "s",
        wire.SPAN_KIND_INTERNAL,
        now,
        now,
        0,
        {},
        [wire.EventRecord(name, at, attributes) for name, at, attributes in events],
        {},
    )


def test_screen_keeps_expires_and_refuses_with_reasons() -> None:
    now = time.time_ns()
    record = span(
        [
            ("studyin.material_view", now, {"studyin.material.id": "ok"}),
            ("studyin.material_view", now - 100 * DAY_NS, {"studyin.material.id": "old"}),
            ("studyin.material_view", now + 2 * DAY_NS, {"studyin.material.id": "future"}),
            ("studyin.material_view", now, {"studyin.material.id": "nul\x00"}),
            ("studyin.material_view", now, {"studyin.material.id": ["a", {"k": "b\x00"}]}),
            ("studyin.material_view", now, {"studyin.material.id": "a backslash \\u0000 is no NUL"}),
            ("studyin.material_view", 2**64 - 1, {}),  # past what a datetime holds
        ]
    )
    screened = screen(rows_from_span(record), EventWindow.of(SETTINGS))
    assert [row.properties["material_id"] for row in screened.rows] == ["ok", "a backslash \\u0000 is no NUL"]
    assert [r[0] for r in screened.records] == [row.event_id for row in screened.rows]
    assert screened.expired == 1
    reasons = [refusal.reason for refusal in screened.refused]
    assert len(reasons) == 4
    assert "ahead" in reasons[0] and "ahead" in reasons[3]
    assert all("'material_id' holds a NUL character" in reason for reason in reasons[1:3])
    # The ends of the wire's 64-bit range map to datetimes, outside any window.
    assert time_of(micros_of(2**64 - 1)).year == 2554 and time_of(micros_of(-(2**63))).year == 1677


async def test_no_partition_outside_the_window_is_ever_asked_of_postgresql() -> None:
    """The check comes before any statement (here there is no connection at all)."""
    today = datetime.now(UTC).date()
    with pytest.raises(PartitionOutOfWindow):
        await ensure_partitions(None, {today + timedelta(days=PARTITIONS_AHEAD + 1)}, set())  # type: ignore[arg-type]
    with pytest.raises(PartitionOutOfWindow):
        await ensure_partitions(None, {today - timedelta(days=10)}, set(), oldest=today - timedelta(days=9))  # type: ignore[arg-type]
    await ensure_partitions(None, {today}, {today})  # type: ignore[arg-type]  (known: nothing to do)
