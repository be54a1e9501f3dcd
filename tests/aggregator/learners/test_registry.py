"""The registry covers every per-learner table; the audit log forgets an erased learner's pseudonym
and nothing else (revision 0015_erasure)."""

from __future__ import annotations

import asyncpg
import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.learners import postgres
from studyin_analytics.aggregator.learners.identity import learner_of
from studyin_analytics.aggregator.learners.registry import AUDIT_TABLE, LEARNER_TABLES, NOT_PER_LEARNER
from studyin_analytics.aggregator.storage.db import connect


async def test_every_relation_with_a_user_hash_column_is_in_the_registry(migrated: Settings) -> None:
    conn = await connect(migrated)
    try:
        names = {
            r[0]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
                "AND a.attname = 'user_hash' AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm') "
                "AND NOT c.relispartition"
            )
        }
    finally:
        await conn.close()
    listed = {t.table for t in LEARNER_TABLES} | set(NOT_PER_LEARNER)
    assert names and names <= listed, f"per-learner tables missing from the registry: {names - listed}"
    assert {t.table for t in LEARNER_TABLES} <= names


async def test_the_audit_log_keeps_its_rows_and_forgets_the_pseudonym(migrated: Settings) -> None:
    learner = learner_of("audit-learner-7", migrated)
    other = learner_of("audit-learner-8", migrated)
    me, them = learner.user_hashes[0], other.user_hashes[0]
    conn = await connect(migrated)
    try:
        insert = (
            f"INSERT INTO {AUDIT_TABLE} (actor_hash, actor_role, endpoint, subject_hash, scope, outcome) "
            "VALUES ($1, $2, '/x', $3, 'user', 'allowed')"
        )
        await conn.execute(insert, me, "learner", me)
        await conn.execute(insert, them, "staff", me)
        await conn.execute(insert, them, "learner", them)
        assert (await postgres.counts(conn, learner))[AUDIT_TABLE] == 2
        assert (await postgres.erase(conn, learner))[AUDIT_TABLE] == 2
        rows = [
            tuple(r)
            for r in await conn.fetch(f"SELECT actor_hash, subject_hash FROM {AUDIT_TABLE} ORDER BY id")
        ]
        ref = learner.reference
        assert rows == [(ref, ref), (them, ref), (them, them)]
        assert (await postgres.counts(conn, learner))[AUDIT_TABLE] == 0
        for sql in (
            f"DELETE FROM {AUDIT_TABLE}",
            f"UPDATE {AUDIT_TABLE} SET endpoint = '/y'",
            f"UPDATE {AUDIT_TABLE} SET subject_hash = 'someone-else' WHERE subject_hash = '{them}'",
            f"UPDATE {AUDIT_TABLE} SET subject_hash = 'erased:x', endpoint = '/z'",
        ):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()
