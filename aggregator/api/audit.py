"""The access audit log: one row per read of user data through the query API.

Actor and subject are pseudonyms (``user.hash``); the endpoint is the route template, so no
query string or raw id can reach the table. A read is audited on the same connection, before
its data leaves the API: if the audit row cannot be written, the data is not returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from .auth import Principal
from .telemetry import count_audit_write

Scope = Literal["user", "cohort", "system"]
Outcome = Literal["allowed", "denied"]

INSERT_AUDIT = """
INSERT INTO access_audit_log (actor_hash, actor_role, endpoint, subject_hash, scope, outcome)
VALUES ($1, $2, $3, $4, $5, $6)
"""


@dataclass(frozen=True)
class AuditEntry:
    occurred_at: datetime
    actor_hash: str
    actor_role: str
    endpoint: str
    subject_hash: str | None
    scope: str
    outcome: str


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: Principal,
    endpoint: str,
    *,
    subject: str | None,
    scope: Scope = "user",
    outcome: Outcome = "allowed",
) -> None:
    """Append one audit row (autocommit: it is durable once this returns)."""
    await conn.execute(
        INSERT_AUDIT,
        actor.user_hash,
        "staff" if actor.is_staff else "learner",
        endpoint,
        subject,
        scope,
        outcome,
    )
    count_audit_write(endpoint, scope, outcome)  # self-telemetry of the API serving this request


async def entries(
    conn: asyncpg.Connection | asyncpg.Pool, *, subject: str | None = None, limit: int = 1000
) -> list[AuditEntry]:
    """The newest audit rows (optionally for one subject), newest first."""
    records = await conn.fetch(
        """
        SELECT occurred_at, actor_hash, actor_role, endpoint, subject_hash, scope, outcome
        FROM access_audit_log
        WHERE $1::text IS NULL OR subject_hash = $1
        ORDER BY id DESC
        LIMIT $2
        """,
        subject,
        limit,
    )
    return [AuditEntry(**dict(r)) for r in records]
