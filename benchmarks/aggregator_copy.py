"""Raw ``COPY`` encoding: rows laid out per column (``binary_copy``) vs asyncpg's per-row records.

The aggregator bench's rows as the aggregator copies them (raw records, times in microseconds at
hand), into two temporary tables of the raw columns' types on one connection, in 10k-row
``COPY`` statements, alternating, same run. Value: this process's CPU per row (encoding and
sending, ``time.process_time``: PostgreSQL's work and other processes' are left out, so the noise
of a shared machine mostly is too); baseline: asyncpg's ``copy_records_to_table`` of the same
records. No target: the ratio decides whether the columnar payload earns a place on the
aggregator's path (docs/aggregator.md#per-batch-work-measured-issue-25). ``headline=False``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg

from ..aggregator.cli.settings import require
from ..aggregator.consumer import binary_copy
from ..aggregator.consumer.mapping import RAW_COLUMNS, EventRow, RawRecord, raw_records
from ..aggregator.consumer.service import tuned_gc
from .framework import BenchContext, Measurement, median

CHUNK = 10_000
_TABLE = (
    "CREATE TEMP TABLE {} (event_id uuid, occurred_at timestamptz, event_type text,"
    " user_hash text, session_id uuid, properties jsonb)"
)


async def copy_encoding(ctx: BenchContext, rows: Sequence[EventRow]) -> list[Measurement]:
    records = raw_records(rows)
    times = [row.time_us for row in rows]
    conn = await asyncpg.connect(require(ctx.settings.postgres_url, "postgres_url"))
    by_rows: list[float] = []
    by_columns: list[float] = []
    try:
        await conn.reset_type_codec("jsonb", schema="pg_catalog")  # as the aggregator's connections
        await conn.execute(_TABLE.format("per_row") + ";" + _TABLE.format("per_column"))
        binary_copy.encode_rows(records[:10], times[:10])  # PyArrow loads its kernels on first use
        async with ctx.task("raw COPY per row vs per column", total=ctx.repeat_count) as task:
            for _ in range(ctx.repeat_count):
                with tuned_gc():  # as the aggregator command runs
                    pair = await _one_repeat(conn, records, times)
                by_rows.append(pair[0])
                by_columns.append(pair[1])
                ctx.advance(task)
        differ = await conn.fetchval(
            "SELECT count(*) FROM ((TABLE per_row EXCEPT ALL TABLE per_column)"
            " UNION ALL (TABLE per_column EXCEPT ALL TABLE per_row)) d"
        )
        if differ:
            raise RuntimeError(f"the two COPY paths stored {differ} different rows")
    finally:
        await conn.close()
    return [
        Measurement(
            "raw COPY built per column (client CPU per row)",
            median(by_columns),
            "us/row",
            baseline=median(by_rows),
            baseline_name="asyncpg copy_records_to_table, same records",
            notes=f"{len(records):,} rows in {CHUNK:,}-row COPYs; encoding and sending, this process only",
            samples=by_columns,
            headline=False,
        )
    ]


async def _one_repeat(
    conn: asyncpg.Connection, records: list[RawRecord], times: list[int]
) -> tuple[float, float]:
    """This process's CPU per row, µs: asyncpg's per-row COPY, then the per-column payload."""
    await conn.execute("TRUNCATE per_row, per_column")
    started = time.process_time()
    for i in range(0, len(records), CHUNK):
        await conn.copy_records_to_table("per_row", records=records[i : i + CHUNK], columns=RAW_COLUMNS)
    per_row = (time.process_time() - started) / len(records) * 1e6
    started = time.process_time()
    for i in range(0, len(records), CHUNK):
        payload = binary_copy.encode_rows(records[i : i + CHUNK], times[i : i + CHUNK])
        await conn.copy_to_table(
            "per_column",
            source=binary_copy.chunks(payload),
            columns=RAW_COLUMNS,
            format="binary",
        )
    per_column = (time.process_time() - started) / len(records) * 1e6
    return per_row, per_column
