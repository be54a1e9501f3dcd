"""Generated learner paths straight into ``analytics_events`` (as the migrating role), for API tests.

The aggregator's own path (bus -> rounds -> table) is tested in
tests/aggregator/analysis/test_end_to_end.py; API tests that need many workloads write the rows
the aggregator would have written, with ``COPY``.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from studyin_analytics.aggregator.analysis.loader import AnalysisStore
from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import ensure_partitions

from ..api import Api, open_api
from .reference import US, Event

COLUMNS = ["event_id", "occurred_at", "event_type", "user_hash", "properties"]


def _text(value: str) -> str:
    """A value in COPY's text format (backslash is its escape character)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def moved(events: list[Event], shift_us: int) -> list[Event]:
    return [Event(e.user_hash, e.time_us + shift_us, e.event_type, e.event_id, e.props) for e in events]


async def store_events(settings: Settings, events: list[Event], *, replace: bool = False) -> list[Event]:
    """Write ``events`` as stored learning events (``replace``: the table's rows go first); those
    in the future (workloads run for weeks from a fixed date) are left out. Returns those written."""
    horizon = (datetime.now(UTC) - timedelta(minutes=5)).timestamp() * US
    events = [e for e in events if e.time_us < horizon]
    conn = await connect(settings)
    try:
        if replace:
            await conn.execute("TRUNCATE analytics_events")
        stamps = [datetime.fromtimestamp(e.time_us / US, UTC) for e in events]
        await ensure_partitions(conn, {s.date() for s in stamps}, set())
        lines = [
            "\t".join(
                (str(e.event_id), stamp.isoformat(), e.event_type, e.user_hash, _text(json.dumps(e.props)))
            )
            + "\n"
            for e, stamp in zip(events, stamps, strict=True)
        ]
        source = io.BytesIO("".join(lines).encode())
        await conn.copy_to_table("analytics_events", source=source, columns=COLUMNS, format="text")
    finally:
        await conn.close()
    return events


async def until_loaded(store: AnalysisStore, rows: int, timeout_s: float = 60) -> None:
    """Wait until the API's store holds ``rows`` events (its background task refreshes it).

    A row becomes readable on the commit-ordered watermark once every transaction older than
    its own has ended, on the whole (shared) server: other work can hold that back a while.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(store.store) < rows:
        assert asyncio.get_running_loop().time() < deadline, f"store has {len(store.store)} of {rows} rows"
        await asyncio.sleep(0.1)


@asynccontextmanager
async def opened_api(settings: Settings) -> AsyncIterator[Api]:
    """``open_api`` as a context manager: the app's lifespan ends in this task even when the body
    fails (an ``async for`` left by an exception would leave it to the garbage collector)."""
    generator = open_api(settings)
    try:
        yield await anext(generator)
    finally:
        await generator.aclose()
