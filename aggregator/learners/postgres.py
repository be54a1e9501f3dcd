"""A learner's rows in PostgreSQL: every per-learner table of the registry, and the audit log.

Read for the access export, counted by the verification pass, deleted by the erasure in one
transaction (so an erasure killed midway left nothing half done there, and running it again
finds what is left). The raw events table has no index on ``user_hash`` (the aggregator's
insert path stays lean, revision 0002): deleting one learner's raw events scans the table's
partitions once (``bench`` measures it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from .identity import Learner
from .registry import AUDIT_TABLE, LEARNER_TABLES, LearnerTable

RECEIPT_ENDPOINT = "learner erase"
"""The audit log's ``endpoint`` of an erasure receipt (the API's route template otherwise)."""


def _where(table: LearnerTable) -> str:
    where = f"{table.column} = ANY($1::text[])"
    if table.lrs_expression is not None:
        where += f" OR {table.lrs_expression} = ANY($2::text[])"
    return where


def _args(table: LearnerTable, learner: Learner) -> list[Any]:
    args: list[Any] = [list(learner.user_hashes)]
    if table.lrs_expression is not None:
        args.append(list(learner.lrs_hashes))
    return args


async def rows(conn: asyncpg.Connection, learner: Learner) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Every row about ``learner``: (table, row as JSON-ready values), table by table."""
    for table in LEARNER_TABLES:
        query = (
            f"SELECT to_jsonb(t)::text FROM {table.table} t WHERE {_where(table)} ORDER BY {table.order_by}"
        )
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            async for record in conn.cursor(query, *_args(table, learner), prefetch=2000):
                yield table.table, json.loads(record[0])
    audit = f"SELECT to_jsonb(t)::text FROM {AUDIT_TABLE} t WHERE {_AUDIT_WHERE} ORDER BY id"
    for record in await conn.fetch(audit, list(learner.pseudonyms)):
        yield AUDIT_TABLE, json.loads(record[0])


_AUDIT_WHERE = "actor_hash = ANY($1::text[]) OR subject_hash = ANY($1::text[])"


async def counts(conn: asyncpg.Connection, learner: Learner) -> dict[str, int]:
    """How many rows of each per-learner table, and of the audit log, still name ``learner``."""
    out: dict[str, int] = {}
    for table in LEARNER_TABLES:
        query = f"SELECT count(*) FROM {table.table} WHERE {_where(table)}"
        out[table.table] = int(await conn.fetchval(query, *_args(table, learner)))
    audit = f"SELECT count(*) FROM {AUDIT_TABLE} WHERE {_AUDIT_WHERE}"
    out[AUDIT_TABLE] = int(await conn.fetchval(audit, list(learner.pseudonyms)))
    return out


async def erase(conn: asyncpg.Connection, learner: Learner) -> dict[str, int]:
    """Delete ``learner``'s rows from every per-learner table and replace their pseudonyms in the
    audit log by :attr:`Learner.reference`, in one transaction. Returns rows per table."""
    out: dict[str, int] = {}
    async with conn.transaction():
        for table in LEARNER_TABLES:
            status = await conn.execute(
                f"DELETE FROM {table.table} WHERE {_where(table)}", *_args(table, learner)
            )
            out[table.table] = int(status.split()[-1])
        status = await conn.execute(
            f"""
            UPDATE {AUDIT_TABLE}
            SET actor_hash = CASE WHEN actor_hash = ANY($1::text[]) THEN $2 ELSE actor_hash END,
                subject_hash = CASE WHEN subject_hash = ANY($1::text[]) THEN $2 ELSE subject_hash END
            WHERE {_AUDIT_WHERE}
            """,
            list(learner.pseudonyms),
            learner.reference,
        )
        out[AUDIT_TABLE] = int(status.split()[-1])
    return out


EXPORT_ENDPOINT = "learner export"
"""The audit log's ``endpoint`` of an access export made with the command line."""


async def record_receipt(
    conn: asyncpg.Connection,
    learner: Learner,
    actor: str,
    detail: dict[str, Any],
    endpoint: str = RECEIPT_ENDPOINT,
) -> None:
    """Append the erasure receipt (or an export's record) to the audit log: who, when (the row's
    time), what and where; the learner named by :attr:`Learner.reference`."""
    await conn.execute(
        f"""
        INSERT INTO {AUDIT_TABLE} (actor_hash, actor_role, endpoint, subject_hash, scope, outcome, detail)
        VALUES ($1, 'staff', $2, $3, 'user', 'allowed', $4::text::jsonb)
        """,
        actor,
        endpoint,
        learner.reference,
        json.dumps(detail, sort_keys=True),
    )


async def receipts(conn: asyncpg.Connection, learner: Learner) -> list[dict[str, Any]]:
    """The erasure receipts of ``learner``, oldest first."""
    records = await conn.fetch(
        f"SELECT occurred_at, actor_hash, detail::text FROM {AUDIT_TABLE} "
        "WHERE endpoint = $1 AND subject_hash = $2 ORDER BY id",
        RECEIPT_ENDPOINT,
        learner.reference,
    )
    return [
        {"occurred_at": r["occurred_at"].isoformat(), "actor": r["actor_hash"], **json.loads(r[2] or "{}")}
        for r in records
    ]
