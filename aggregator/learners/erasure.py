"""``learner export`` and ``learner erase``: every sink, in an order that is safe to repeat.

Erasure, step by step (each idempotent, so a run killed anywhere is finished by the next one):

1. the tombstone (Redis): from here on the aggregator, the gateway, the app's exporter and the
   LRS forwarder drop the learner's late events (:mod:`...exporter.tombstone`);
2. PostgreSQL: every per-learner table of the registry and the raw events, one transaction;
   the audit log keeps its rows with the pseudonym replaced (:mod:`.postgres`);
3. the warehouse exports, under the exporter's lock (:mod:`.warehouse`);
4. the LRS: every statement it returns for the learner voided (:mod:`.lrs`);
5. the bus: entries rewritten without the learner (:mod:`.bus`);
6. the verification pass over every sink, then the receipt in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import httpx

from ...exporter import tombstone
from ...exporter.connection import AsyncClient, async_client
from ..api.settings import ApiSettings as Settings
from ..lrs.delivery import LrsMisconfigured, LrsUnavailable
from ..lrs.settings import LrsSettings
from ..storage.db import connect
from ..warehouse.settings import ExportSettings
from ..warehouse.watermark import EXPORT_LOCK_CLASS
from . import bus, lrs, postgres, warehouse
from .identity import Learner

Say = Callable[[str], None]


@dataclass
class Report:
    """What an erasure did and what its verification pass found (per sink, per place)."""

    erased: dict[str, dict[str, int]] = field(default_factory=dict)
    found: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    not_configured: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not any(self.found.values()) and not self.skipped

    def detail(self) -> dict[str, Any]:
        return {
            "erased": self.erased,
            "found_after": self.found,
            "skipped": self.skipped,
            "not_configured": self.not_configured,
            "seconds": self.seconds,
        }


async def _take_export_lock(conn: asyncpg.Connection, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        taken = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))", EXPORT_LOCK_CLASS
        )
        if taken or time.monotonic() >= deadline:
            return bool(taken)
        await asyncio.sleep(0.5)


def _warehouse_erase(
    settings: Settings, export: ExportSettings, learner: Learner
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if "parquet" in export.formats:
        out["parquet"] = warehouse.erase_parquet(Path(export.parquet_dir), learner)
    if "iceberg" in export.formats:
        catalog = warehouse.catalog_of(settings, export)
        out["iceberg"] = warehouse.erase_iceberg(catalog, export.namespace, learner)
    return out


def _warehouse_find(
    settings: Settings, export: ExportSettings, learner: Learner
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"parquet": {}, "iceberg": {}}
    for place, _row in warehouse.parquet_rows(Path(export.parquet_dir), learner):
        out["parquet"][place] = out["parquet"].get(place, 0) + 1
    if "iceberg" in export.formats:
        catalog = warehouse.catalog_of(settings, export)
        for place, _row in warehouse.iceberg_rows(catalog, export.namespace, learner):
            out["iceberg"][place] = out["iceberg"].get(place, 0) + 1
        for place, count in warehouse.iceberg_bounds(catalog, export.namespace, learner).items():
            out["iceberg"][f"{place} manifest bounds"] = count
    return out


LRS_ERRORS = (httpx.HTTPError, LrsUnavailable, LrsMisconfigured, lrs.LrsRefused)
"""What an unreachable or refusing LRS raises: the LRS pass is reported skipped, the rest goes on."""


async def _lrs_erase(lrs_settings: LrsSettings, learner: Learner, report: Report, say: Say) -> None:
    if not lrs.configured(lrs_settings):
        report.not_configured.append("lrs")
        say("lrs: not configured (STUDYIN_ANALYTICS_LRS_URL unset): nothing to void")
        return
    try:
        report.erased["lrs"] = await lrs.void(lrs_settings, learner)
        say(f"lrs: {report.erased['lrs']}")
    except LRS_ERRORS as exc:
        report.skipped["lrs"] = f"{type(exc).__name__}: {exc}"[:300]
        say(f"lrs: SKIPPED ({report.skipped['lrs']}); run again once the LRS answers")


async def verify(
    settings: Settings,
    export: ExportSettings,
    learner: Learner,
    client: AsyncClient,
    conn: asyncpg.Connection,
    lrs_settings: LrsSettings | None = None,
) -> dict[str, dict[str, int]]:
    """Search every sink for the learner's pseudonyms: what is found, per sink and place (0s dropped)."""
    found: dict[str, dict[str, int]] = {
        "postgresql": {k: v for k, v in (await postgres.counts(conn, learner)).items() if v},
        "redis": await bus.find(client, settings, learner),
    }
    found.update(await asyncio.to_thread(_warehouse_find, settings, export, learner))
    if not await tombstone.contains(client, settings, learner.pseudonyms):
        found["redis"]["tombstone missing"] = 1
    if lrs_settings is not None and lrs.configured(lrs_settings):
        try:
            found["lrs"] = await lrs.find(lrs_settings, learner)
        except LRS_ERRORS as exc:
            found["lrs"] = {f"not searched: {type(exc).__name__}"[:200]: 1}
    return found


async def erase_learner(
    settings: Settings,
    learner: Learner,
    *,
    actor: str,
    export: ExportSettings | None = None,
    lrs_settings: LrsSettings | None = None,
    lock_wait_s: float = 60.0,
    settle_s: float = tombstone.REFRESH_S + 0.5,
    say: Say = lambda _line: None,
) -> Report:
    """Erase ``learner`` everywhere (idempotent, resumable), verify, and write the receipt."""
    export = export or ExportSettings()
    lrs_settings = lrs_settings or LrsSettings()
    report = Report()
    started = time.monotonic()
    client = async_client(settings, socket_timeout=30.0, socket_connect_timeout=5.0)
    conn = await connect(settings, "erasure")
    try:
        added = await tombstone.add(client, settings, learner.pseudonyms)
        report.erased["tombstone"] = {"pseudonyms added": added}
        say(f"tombstone: {len(learner.pseudonyms)} pseudonyms ({added} new); waiting {settle_s:.1f} s")
        # Every writer and reader re-reads the tombstone within REFRESH_S: from now on none of
        # them stores, sends or writes the learner's events, so nothing deleted below comes back.
        await asyncio.sleep(settle_s)
        report.erased["postgresql"] = await postgres.erase(conn, learner)
        say(f"postgresql: {report.erased['postgresql']}")
        if await _take_export_lock(conn, lock_wait_s):
            try:
                done = await asyncio.to_thread(_warehouse_erase, settings, export, learner)
            finally:
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, hashtext(current_schema()))", EXPORT_LOCK_CLASS
                )
            report.erased.update(done)
            say(f"warehouse: {done}")
        else:
            report.skipped["warehouse"] = "the exporter held its lock: stop `export --follow` and run again"
            say(f"warehouse: SKIPPED ({report.skipped['warehouse']})")
        await _lrs_erase(lrs_settings, learner, report, say)
        report.erased["redis"] = await bus.erase(client, settings, learner)
        say(f"bus: {report.erased['redis']}")
        report.found = await verify(settings, export, learner, client, conn, lrs_settings)
        report.seconds = round(time.monotonic() - started, 3)
        await postgres.record_receipt(conn, learner, actor, report.detail())
    finally:
        await conn.close()
        await client.aclose()
    return report


async def learner_records(
    settings: Settings,
    learner: Learner,
    export: ExportSettings | None = None,
    lrs_settings: LrsSettings | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every record held about ``learner``, one dict per JSON line (see :data:`EXPORT_README`)."""
    export = export or ExportSettings()
    lrs_settings = lrs_settings or LrsSettings()
    conn = await connect(settings, "erasure")
    try:
        async for table, row in postgres.rows(conn, learner):
            yield {"sink": "postgresql", "place": table, "record": row}
    finally:
        await conn.close()
    client = async_client(settings, socket_timeout=30.0, socket_connect_timeout=5.0)
    try:
        async for item in bus.entries_of(client, settings, learner):
            yield {"sink": "redis", "place": item.pop("stream"), "record": item}
    finally:
        await client.aclose()
    rows = await asyncio.to_thread(lambda: list(warehouse.parquet_rows(Path(export.parquet_dir), learner)))
    for place, row in rows:
        yield {"sink": "parquet", "place": place, "record": row}
    if "iceberg" in export.formats:
        catalog = await asyncio.to_thread(warehouse.catalog_of, settings, export)
        found = await asyncio.to_thread(
            lambda: list(warehouse.iceberg_rows(catalog, export.namespace, learner))
        )
        for place, row in found:
            yield {"sink": "iceberg", "place": place, "record": row}
    if lrs.configured(lrs_settings):
        for statement in await lrs.records(lrs_settings, learner):
            yield {"sink": "lrs", "place": "statements", "record": statement}


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


async def write_export(
    settings: Settings,
    learner: Learner,
    out: TextIO,
    export: ExportSettings | None = None,
    lrs_settings: LrsSettings | None = None,
) -> dict[str, int]:
    """Write the access export as JSON Lines to ``out``; returns records per sink."""
    counts: dict[str, int] = {}
    async for record in learner_records(settings, learner, export, lrs_settings):
        out.write(json.dumps(record, default=_default, sort_keys=True) + "\n")
        counts[record["sink"]] = counts.get(record["sink"], 0) + 1
    return counts


async def audit_export(settings: Settings, learner: Learner, actor: str, counts: dict[str, int]) -> None:
    """The command line's access export, in the audit log like the API's (no raw id, no pseudonym)."""
    conn = await connect(settings, "erasure")
    try:
        await postgres.record_receipt(conn, learner, actor, {"records": counts}, postgres.EXPORT_ENDPOINT)
    finally:
        await conn.close()


EXPORT_README = """\
# Access export of one learner (JSON Lines)

One JSON object per line, one line per record held about the learner, from every sink:

- `sink`: where it is held: `postgresql` (the analytics database), `redis` (the event bus, still
  waiting for its retention), `parquet` and `iceberg` (the warehouse exports), `lrs` (the school's
  Learning Record Store, when one is configured).
- `place`: the table (PostgreSQL, Iceberg), the stream key (Redis), the file (Parquet, relative
  to the export's root) or `statements` (the LRS).
- `record`: the record itself, field by field as stored. PostgreSQL tables are described in
  docs/aggregator.md: `analytics_events` (one row per event: `event_id`, `occurred_at`,
  `event_type`, `user_hash` the learner's pseudonym, `session_id`, `properties` the event's
  fields), the per-learner rollups (`learning_sessions`, `daily_activity_summary`,
  `gamification_stats`, `user_activity_hourly`, `ai_coach_metrics`) and `access_audit_log` (who
  read the learner's data, when, through which endpoint). Redis records are spans as sent by the
  apps (`trace_id`, `span_id`, `name`, times in Unix nanoseconds, `attributes`, `events`).
  Warehouse rows are copies of the PostgreSQL rows (a rollup row once per exported version).
  LRS records are xAPI 1.0.3 statements as the LRS returns them for the learner's account
  (`actor.account.name` is the learner's LRS pseudonym; `stored` and `authority` added by the LRS).

Times are UTC (ISO 8601, or Unix nanoseconds where named so). The learner appears only as keyed
pseudonyms (`user_hash`, and `lrs_actor` for the Learning Record Store); no raw id is held anywhere.
"""
