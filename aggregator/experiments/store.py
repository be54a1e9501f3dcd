"""Experiment definitions in PostgreSQL (every version kept: the history) and their snapshot for apps.

Rules: a key's first definition is version 1; while a version runs, a new definition is refused unless a
new version is asked for (``new_version``), which stops the running one in the same transaction; after a
stop, the next definition is the next version. So the weights of a running version never change (that
would break its analysis). After each change the running versions are published to the bus's Redis as
the ``experiments`` snapshot (``exporter/snapshots.py``), which apps follow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from ...exporter.connection import sync_client
from ...exporter.settings import BusSettings
from ...exporter.snapshots import publish_snapshot
from ...instrumentation.experiments import SNAPSHOT_KIND, ExperimentSpec, encode_snapshot
from ...instrumentation.settings_base import require
from .definitions import ExperimentDefinition

__all__ = [
    "ExperimentConflict",
    "ExperimentNotFound",
    "StoredVersion",
    "create",
    "history",
    "latest",
    "publish",
    "running_snapshot",
    "stop",
]


class ExperimentConflict(Exception):
    """The change would break a running version (the message names the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ExperimentNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class StoredVersion:
    key: str
    version: int
    definition: ExperimentDefinition
    status: str
    created_at: datetime
    created_by: str
    stopped_at: datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> StoredVersion:
        raw = r["definition"]
        document = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
        return cls(
            r["experiment_key"],
            r["version"],
            ExperimentDefinition.model_validate(document),
            r["status"],
            r["created_at"],
            r["created_by"],
            r["stopped_at"],
        )

    def spec(self) -> ExperimentSpec:
        return self.definition.spec(self.version)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "version": self.version,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "definition": self.definition.model_dump(mode="json"),
        }


_COLUMNS = (
    "experiment_key, version, definition::text AS definition, status, created_at, created_by, stopped_at"
)


async def create(
    conn: asyncpg.Connection, definition: ExperimentDefinition, created_by: str, *, new_version: bool = False
) -> StoredVersion:
    """Store ``definition`` as the key's next version (rules: module docstring)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1913))", definition.key)
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM experiment_versions WHERE experiment_key = $1 ORDER BY version",
            definition.key,
        )
        versions = [StoredVersion.from_record(r) for r in rows]
        running = [v for v in versions if v.status == "running"]
        if running and not new_version:
            same = list(running[-1].definition.variants.items()) == list(definition.variants.items())
            field = "key" if same else "variants"
            raise ExperimentConflict(
                field,
                f"version {running[-1].version} of {definition.key!r} is running; "
                + ("" if same else "its variants and weights cannot change; ")
                + "start a new version to change it",
            )
        if running:
            await conn.execute(
                "UPDATE experiment_versions SET status = 'stopped', stopped_at = now() "
                "WHERE experiment_key = $1 AND status = 'running'",
                definition.key,
            )
        record = await conn.fetchrow(
            "INSERT INTO experiment_versions (experiment_key, version, definition, status, created_by) "
            f"VALUES ($1, $2, $3::text::json, 'running', $4) RETURNING {_COLUMNS}",
            definition.key,
            (versions[-1].version + 1) if versions else 1,
            definition.model_dump_json(),
            created_by,
        )
    return StoredVersion.from_record(record)


async def stop(conn: asyncpg.Connection, key: str) -> StoredVersion:
    """Stop the running version of ``key`` (apps stop assigning: ``variant`` returns ``None``)."""
    record = await conn.fetchrow(
        "UPDATE experiment_versions SET status = 'stopped', stopped_at = now() "
        f"WHERE experiment_key = $1 AND status = 'running' RETURNING {_COLUMNS}",
        key,
    )
    if record is None:
        raise ExperimentNotFound(f"key: no running experiment {key!r}")
    return StoredVersion.from_record(record)


async def history(conn: asyncpg.Connection, key: str) -> list[StoredVersion]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM experiment_versions WHERE experiment_key = $1 ORDER BY version", key
    )
    return [StoredVersion.from_record(r) for r in rows]


async def latest(conn: asyncpg.Connection) -> list[StoredVersion]:
    """The latest version of every experiment, by key."""
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (experiment_key) {_COLUMNS} FROM experiment_versions "
        "ORDER BY experiment_key, version DESC"
    )
    return [StoredVersion.from_record(r) for r in rows]


async def running_snapshot(conn: asyncpg.Connection) -> bytes:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM experiment_versions WHERE status = 'running'")
    return encode_snapshot([StoredVersion.from_record(r).spec() for r in rows])


async def publish(conn: asyncpg.Connection, settings: BusSettings) -> int:
    """Publish the running versions as the ``experiments`` snapshot; its new version."""
    payload = await running_snapshot(conn)
    require(settings.redis_url, "redis_url")

    def send() -> int:
        client = sync_client(settings, socket_timeout=5.0, socket_connect_timeout=5.0)
        try:
            return publish_snapshot(client, settings.stream_prefix, SNAPSHOT_KIND, payload)
        finally:
            client.close()

    return await asyncio.to_thread(send)
