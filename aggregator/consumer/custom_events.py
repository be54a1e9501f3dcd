"""Custom events in the aggregator: their rows, the authoritative validation, the per-type daily rollup.

* :func:`custom_row` (a hook in :func:`.mapping.rows_from_span`): a ``studyin.custom`` span event becomes
  a row whose ``event_type`` is the schema's vendor-qualified name and whose properties are the event's
  plus ``$version``;
* :class:`CustomGate` (a hook in :mod:`.preparing`): validates every custom row against the registry
  read from PostgreSQL (reloaded every :data:`RELOAD_S`, and at once, at most every
  :data:`UNKNOWN_RELOAD_S`, when a row names a version it does not know); invalid rows go to the failed
  events stream (:mod:`...exporter.failed_events`) instead of being stored;
* :func:`apply_custom_daily` (a hook in :meth:`.rollups.Rollup.apply`): ``custom_event_daily`` from the
  round's events per (hour, type), inside the round's transaction, so it is exactly-once like every rollup.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncpg

from ...exporter.failed_events import MAX_LEN, VERSION_FIELD, FailedEvent, add_commands
from ...exporter.settings import BusSettings
from ...instrumentation import semconv
from ...instrumentation.custom_schemas import EMPTY_REGISTRY, NAME_PATTERN, CustomRegistry, validate_event
from ...instrumentation.custom_tracking import custom_properties

if TYPE_CHECKING:
    from .mapping import EventRow

RELOAD_S = 10.0
UNKNOWN_RELOAD_S = 1.0
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
CLAIMED_FIELD = "$schema"
"""Property holding the claimed schema name when it is not a vendor-qualified name."""


def is_custom(event_type: str) -> bool:
    return "/" in event_type or event_type == semconv.CUSTOM_EVENT_TYPE


_QUALIFIED: dict[str, bool] = {}
_QUALIFIED_MAX = 10_000


def _qualified(name: str) -> bool:
    """``NAME_PATTERN`` matches ``name``, remembered: a stream names few schemas, each many times."""
    known = _QUALIFIED.get(name)
    if known is None:
        if len(_QUALIFIED) >= _QUALIFIED_MAX:  # bounded: a stream of made-up names cannot grow it
            _QUALIFIED.clear()
        known = _QUALIFIED[name] = NAME_PATTERN.match(name) is not None
    return known


def custom_row(attributes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event type and stored properties of a custom event's span-event attributes."""
    name, version = attributes.get(semconv.CUSTOM_SCHEMA), attributes.get(semconv.CUSTOM_VERSION)
    properties: dict[str, Any] = {VERSION_FIELD: version if isinstance(version, str) else ""}
    properties.update(custom_properties(attributes))
    if isinstance(name, str) and _qualified(name):
        return name, properties
    properties[CLAIMED_FIELD] = name[:200] if isinstance(name, str) else ""
    return semconv.CUSTOM_EVENT_TYPE, properties


def failed_of(row: EventRow, registry: CustomRegistry, source: str = "aggregator") -> FailedEvent | None:
    """The row as a failed event when it does not validate, else ``None``."""
    props = {k: v for k, v in row.properties.items() if not k.startswith("$")}
    version = row.properties.get(VERSION_FIELD, "")
    name = row.properties.get(CLAIMED_FIELD, row.event_type) if row.event_type == "custom" else row.event_type
    errors = validate_event(registry, name, version, props)
    if not errors:
        return None
    session = str(row.session_id) if row.session_id is not None else None
    return FailedEvent(
        row.event_id,
        row.time_us,
        str(name),
        str(version),
        tuple(errors),
        props,
        row.user_hash,
        session,
        source,
    )


class CustomGate:
    """The aggregator's registry (from PostgreSQL) and the split of rows into valid and failed."""

    def __init__(self) -> None:
        self.registry: CustomRegistry = EMPTY_REGISTRY
        self._loaded_at = -1e9
        self.failed = 0

    async def _registry(self, pool: asyncpg.Pool, rows: list[EventRow]) -> CustomRegistry:
        from ..custom.registry import all_versions, registry_of

        age = time.monotonic() - self._loaded_at
        unknown = any(
            self.registry.get(r.event_type, r.properties.get(VERSION_FIELD, "")) is None for r in rows
        )
        if age >= RELOAD_S or (unknown and age >= UNKNOWN_RELOAD_S):
            async with pool.acquire() as conn:
                self.registry = registry_of(await all_versions(conn))
            self._loaded_at = time.monotonic()
        return self.registry

    async def split(
        self, pool: asyncpg.Pool | None, redis: Any, settings: BusSettings, rows: list[EventRow]
    ) -> list[EventRow]:
        """``rows`` without the invalid custom ones, which are written to the failed events stream."""
        custom = [r for r in rows if is_custom(r.event_type)]
        if not custom or pool is None:
            return rows
        registry = await self._registry(pool, custom)
        failed = [f for f in (failed_of(r, registry) for r in custom) if f is not None]
        if not failed:
            return rows
        async with redis.pipeline(transaction=False) as pipe:
            for key, fields in add_commands(settings, failed):
                pipe.xadd(key, fields, maxlen=MAX_LEN, approximate=True)
            await pipe.execute()
        self.failed += len(failed)
        bad = {f.event_id for f in failed}
        return [r for r in rows if r.event_id not in bad]


_UPSERT_DAILY = """
INSERT INTO custom_event_daily AS d (day, event_type, events)
SELECT * FROM unnest($1::date[], $2::text[], $3::bigint[])
ON CONFLICT (day, event_type) DO UPDATE SET events = d.events + EXCLUDED.events
"""


def custom_daily(by_type: Mapping[tuple[int, str], int]) -> dict[tuple[int, str], int]:
    """(day, custom type) -> events, from a rollup's (hour, type) counts."""
    out: dict[tuple[int, str], int] = {}
    for (hour, event_type), count in by_type.items():
        if "/" in event_type:
            key = (hour * HOUR_US // DAY_US, event_type)
            out[key] = out.get(key, 0) + count
    return out


async def apply_custom_daily(conn: asyncpg.Connection, by_type: Mapping[tuple[int, str], int]) -> None:
    """Merge a round's custom events into ``custom_event_daily`` (sorted: no deadlock between members)."""
    import datetime as dt

    daily = sorted(custom_daily(by_type).items())
    if daily:
        epoch = dt.date(1970, 1, 1)
        await conn.execute(
            _UPSERT_DAILY,
            [epoch + dt.timedelta(days=day) for (day, _), _ in daily],
            [t for (_, t), _ in daily],
            [n for _, n in daily],
        )
