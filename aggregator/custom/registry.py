"""The custom event schema registry in PostgreSQL (``custom_event_schemas``, full history) and its
publication to applications through Redis (a snapshot of every version, :mod:`...exporter.snapshots`).

Registration takes a transaction-scoped advisory lock per name, so two concurrent registrations of one
name are decided one after the other against the same history; the rules are
:func:`~...instrumentation.custom_schemas.check_registration`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import redis

from ...exporter import custom_registry
from ...exporter.snapshots import publish_snapshot
from ...instrumentation.custom_schemas import (
    CompiledSchema,
    CustomRegistry,
    SchemaRefused,
    check_registration,
    encode_snapshot,
    parse_version,
)

SNAPSHOT_KIND = custom_registry.SNAPSHOT_KIND
"""``kind`` of the registry's snapshot (``{stream_prefix}:snapshot:custom-schemas``)."""


def snapshot_prefix(stream_prefix: str) -> str:
    """The ``prefix`` argument of the snapshot functions for a bus's ``stream_prefix``."""
    return f"{stream_prefix}:"


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: str
    level: str
    schema: dict[str, Any]
    registered_at: datetime
    registered_by: str
    deprecated_at: datetime | None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "level": self.level,
            "registered_at": self.registered_at.isoformat(),
            "registered_by": self.registered_by,
            "deprecated_at": self.deprecated_at.isoformat() if self.deprecated_at else None,
        }


_COLUMNS = "name, version, level, schema, registered_at, registered_by, deprecated_at"
_ORDER = "ORDER BY name, model, revision, addition"


def _row(record: asyncpg.Record) -> SchemaVersion:
    schema = record["schema"]
    if isinstance(schema, str):  # a connection without the JSON codec
        schema = json.loads(schema)
    return SchemaVersion(
        record["name"],
        record["version"],
        record["level"],
        schema,
        record["registered_at"],
        record["registered_by"],
        record["deprecated_at"],
    )


async def register(
    conn: asyncpg.Connection, name: str, version: str, schema: Any, registered_by: str
) -> SchemaVersion:
    """Register ``schema`` as ``name`` ``version``, or raise :class:`SchemaRefused` (nothing written)."""
    async with conn.transaction():
        existing: dict[str, Any] = {}
        if isinstance(name, str):
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('custom_event_schemas:' || $1))", name)
            existing = {v.version: v.schema for v in await history(conn, name)}
        level = check_registration(name, version, schema, existing)
        try:
            CompiledSchema.compile(name, version, schema)
        except Exception as exc:  # e.g. a pattern the Rust regex engine refuses
            raise SchemaRefused([("", f"does not compile: {type(exc).__name__}")]) from None
        model, revision, addition = parse_version(version)
        record = await conn.fetchrow(
            f"""INSERT INTO custom_event_schemas
                (name, version, model, revision, addition, level, schema, registered_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) RETURNING {_COLUMNS}""",
            name,
            version,
            model,
            revision,
            addition,
            level,
            schema,
            registered_by,
        )
    assert record is not None
    return _row(record)


async def history(conn: asyncpg.Connection, name: str) -> list[SchemaVersion]:
    """Every version of ``name``, oldest first."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM custom_event_schemas WHERE name = $1 {_ORDER}", name)
    return [_row(r) for r in rows]


async def all_versions(conn: asyncpg.Connection) -> list[SchemaVersion]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM custom_event_schemas {_ORDER}")
    return [_row(r) for r in rows]


async def deprecate(conn: asyncpg.Connection, name: str, version: str | None = None) -> int:
    """Mark ``name`` (one ``version``, or all) deprecated; returns how many versions changed. Deprecated
    versions still validate (data keeps flowing); listings flag them so teams move on."""
    result = await conn.execute(
        """UPDATE custom_event_schemas SET deprecated_at = now()
           WHERE name = $1 AND ($2::text IS NULL OR version = $2) AND deprecated_at IS NULL""",
        name,
        version,
    )
    return int(result.split()[-1])


def registry_of(versions: list[SchemaVersion]) -> CustomRegistry:
    return CustomRegistry(
        {
            (v.name, v.version): CompiledSchema.compile(
                v.name, v.version, v.schema, v.deprecated_at is not None
            )
            for v in versions
        }
    )


def snapshot_payload(versions: list[SchemaVersion]) -> bytes:
    return encode_snapshot((v.name, v.version, v.schema, v.deprecated_at is not None) for v in versions)


async def publish(conn: asyncpg.Connection, client: redis.Redis, stream_prefix: str) -> int:
    """Publish the whole registry as it is now (blocking Redis call); returns the snapshot's version."""
    payload = snapshot_payload(await all_versions(conn))
    return publish_snapshot(client, snapshot_prefix(stream_prefix), SNAPSHOT_KIND, payload)
