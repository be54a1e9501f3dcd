"""Custom events in the aggregator: their rows, the authoritative validation, the per-type daily rollup.

* :func:`custom_row` (a hook in :func:`.mapping.rows_from_span`): a ``studyin.custom`` span event becomes
  a row whose ``event_type`` is the schema's vendor-qualified name and whose properties are the event's
  plus ``$version``;
* :class:`CustomGate` (a hook in :mod:`.preparing`): validates every custom row against the registry
  read from PostgreSQL (reloaded every :data:`RELOAD_S`, and at once, at most every
  :data:`UNKNOWN_RELOAD_S`, when a row names a version it does not know); invalid rows go to the failed
  events stream (:mod:`...exporter.failed_events`) instead of being stored;
* ``custom_event_daily`` is merged with the hourly summary (:data:`.rollup_sql.UPSERT_CUSTOM_DAILY`, sent
  with the summary's upsert by :meth:`.rollups.Rollup.apply`): from the round's events per (hour, type),
  inside the round's transaction, so it is exactly-once like every rollup.
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

if TYPE_CHECKING:
    from .mapping import EventRow

RELOAD_S = 10.0
UNKNOWN_RELOAD_S = 1.0
CLAIMED_FIELD = "$schema"
"""Property holding the claimed schema name when it is not a vendor-qualified name."""


_UNQUALIFIED = semconv.CUSTOM_EVENT_TYPE


def is_custom(event_type: str) -> bool:
    return "/" in event_type or event_type == _UNQUALIFIED


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


_PREFIX = semconv.CUSTOM_PROPERTY_PREFIX
_CUT = len(_PREFIX)


def custom_row(attributes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event type and stored properties of a custom event's span-event attributes."""
    name, version = attributes.get(semconv.CUSTOM_SCHEMA), attributes.get(semconv.CUSTOM_VERSION)
    properties: dict[str, Any] = {VERSION_FIELD: version if isinstance(version, str) else ""}
    for key, value in attributes.items():  # custom_properties(attributes), in the same pass
        if key.startswith(_PREFIX):
            properties[key[_CUT:]] = list(value) if isinstance(value, tuple) else value
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


def _forbids_dollar_keys(schema: Mapping[str, Any]) -> bool:
    """Every object with a ``$`` property fails ``schema``: it forbids additional properties, declares
    none starting with ``$`` and matches none by pattern (every registrable schema: property names are
    snake_case, ``additionalProperties`` false)."""
    properties = schema.get("properties")
    return (
        schema.get("additionalProperties") is False
        and "patternProperties" not in schema
        and isinstance(properties, Mapping)
        and not any(str(name).startswith("$") for name in properties)
    )


class CustomGate:
    """The aggregator's registry (from PostgreSQL) and the split of rows into valid and failed."""

    def __init__(self) -> None:
        self.registry: CustomRegistry = EMPTY_REGISTRY
        self._validators: dict[tuple[str, str], Any] = {}
        """(name, version) -> the compiled validator, for the versions whose schema forbids ``$`` keys."""
        self._loaded_at = -1e9
        self.failed = 0

    async def _reload(self, pool: asyncpg.Pool) -> None:
        from ..custom.registry import all_versions, registry_of

        async with pool.acquire() as conn:
            self.use(registry_of(await all_versions(conn)))
        self._loaded_at = time.monotonic()

    def use(self, registry: CustomRegistry) -> None:
        """Validate against ``registry`` from now on (until the next reload)."""
        self.registry = registry
        self._validators = {
            key: compiled.validator
            for key, compiled in registry.schemas.items()
            if _forbids_dollar_keys(compiled.schema)
        }

    def failed_rows(self, custom: list[EventRow]) -> tuple[list[FailedEvent], bool]:
        """The failed events among ``custom`` rows, and whether one names a version the registry lacks.

        A row of a registered version whose schema forbids ``$`` keys is checked on its own properties
        less ``$version`` by the schema's validator alone: valid there is valid for :func:`failed_of`
        (which validates them less every ``$`` key: any other ``$`` key fails the schema, and the row
        then goes through :func:`failed_of`), without building its errors or a second dictionary.
        """
        registry = self.registry
        schemas, validators = registry.schemas, self._validators
        failed: list[FailedEvent] = []
        unknown = False
        for row in custom:
            properties = row.properties
            version = properties.get(VERSION_FIELD, "")
            if type(version) is str:  # else (a list, a number: a hostile sender) failed_of says why
                key = (row.event_type, version)
                validator = validators.get(key)
                if validator is not None:
                    own = properties.copy()
                    own.pop(VERSION_FIELD, None)
                    if validator.is_valid(own):
                        continue
                elif schemas.get(key) is None:
                    unknown = True
            event = failed_of(row, registry)
            if event is not None:
                failed.append(event)
        return failed, unknown

    async def split(
        self, pool: asyncpg.Pool | None, redis: Any, settings: BusSettings, rows: list[EventRow]
    ) -> list[EventRow]:
        """``rows`` without the invalid custom ones, which are written to the failed events stream.

        The registry is reloaded every :data:`RELOAD_S`, and at once (at most every
        :data:`UNKNOWN_RELOAD_S`) when a row names a version it does not know: the rows are then
        validated again against the reloaded registry.
        """
        custom = [r for r in rows if "/" in r.event_type or r.event_type == _UNQUALIFIED]
        if not custom or pool is None:
            return rows
        age = time.monotonic() - self._loaded_at
        if age >= RELOAD_S:
            await self._reload(pool)
        failed, unknown = self.failed_rows(custom)
        if unknown and UNKNOWN_RELOAD_S <= age < RELOAD_S:
            await self._reload(pool)
            failed, _ = self.failed_rows(custom)
        if not failed:
            return rows
        async with redis.pipeline(transaction=False) as pipe:
            for key, fields in add_commands(settings, failed):
                pipe.xadd(key, fields, maxlen=MAX_LEN, approximate=True)
            await pipe.execute()
        self.failed += len(failed)
        bad = {f.event_id for f in failed}
        return [r for r in rows if r.event_id not in bad]
