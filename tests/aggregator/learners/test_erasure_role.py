"""The erasure role (revision 0022_erasure_finish): exactly the rights ``learner export|erase`` need, and an
erasure run by a login that is a member of that role only (never the schema's owner) reaches every sink."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.learners import erasure
from studyin_analytics.aggregator.learners.identity import learner_of
from studyin_analytics.aggregator.learners.registry import AUDIT_TABLE, LEARNER_TABLES
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.schema import MIGRATIONS_DIR
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.aggregator.warehouse.readback import export_all
from tests.support.erasure import drain
from tests.support.workload import build, push

from .conftest import Warehouse

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:pw-{user}@{parts.hostname or '127.0.0.1'}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def migration_tables() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location(
        "m0022", Path(MIGRATIONS_DIR) / "versions" / "0022_erasure_finish.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.LEARNER_TABLES)


async def held(conn: asyncpg.Connection, role: str, schema: str) -> dict[str, set[str]]:
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition",
        schema,
    )
    out: dict[str, set[str]] = {}
    for (table,) in tables:
        rights = {
            p
            for p in PRIVILEGES
            if await conn.fetchval(
                "SELECT has_table_privilege($1, format('%I.%I', $2::text, $3::text), $4)",
                role,
                schema,
                table,
                p,
            )
        }
        if rights:
            out[table] = rights
    return out


async def test_the_erasure_role_has_exactly_the_documented_rights(migrated: Settings) -> None:
    role = migrated.postgres_erasure_role
    assert migration_tables() == tuple(t.table for t in LEARNER_TABLES)  # the grants follow the registry
    conn = await connect(migrated)
    try:
        expected = {t.table: {"SELECT", "DELETE"} for t in LEARNER_TABLES}
        expected[AUDIT_TABLE] = {"SELECT", "INSERT"}
        assert await held(conn, role, migrated.postgres_schema) == expected
        columns = {
            r["attname"]
            for r in await conn.fetch(
                "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 "
                "AND has_column_privilege($2, a.attrelid, a.attnum, 'UPDATE')",
                f"{migrated.postgres_schema}.{AUDIT_TABLE}",
                role,
            )
        }
        assert columns == {"actor_hash", "subject_hash"}
        flags = await conn.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = $1", role
        )
        assert flags is not None and not any(flags.values())
    finally:
        await conn.close()


def test_a_login_in_the_erasure_role_only_erases_everywhere(warehouse: Warehouse, test_id: str) -> None:
    wh = warehouse
    login = f"t_{test_id}_eraser"
    owner = wh.settings
    wl = build(Pseudonymizer.from_settings(owner), users=5, seed=5, spans_per_entry=5)
    push(owner.redis_url or "", stream_keys(owner)[0], wl.entries)
    asyncio.run(drain(owner))
    export_all(wh)  # the exporter creates the catalog's tables: the role reaches them by default privileges

    async def as_member_only() -> erasure.Report:
        admin = await connect(owner)
        await admin.execute(
            f"CREATE ROLE {login} LOGIN PASSWORD 'pw-{login}' IN ROLE {owner.postgres_erasure_role}"
        )
        try:
            settings = owner.with_overrides(erasure_postgres_url=with_user(owner.postgres_url or "", login))
            probe = await connect(settings, "erasure")
            who = await probe.fetchrow("SELECT current_user AS role, session_user AS login")
            await probe.close()
            assert (who["login"], who["role"]) == (login, owner.postgres_erasure_role)
            learner = learner_of("wl-user-5-1", settings)
            return await erasure.erase_learner(settings, learner, actor="t", export=wh.export, settle_s=0)
        finally:
            await admin.execute(f"DROP OWNED BY {login}")
            await admin.execute(f"DROP ROLE {login}")
            await admin.close()

    report = asyncio.run(as_member_only())
    assert report.clean, report.detail()
    assert report.erased["postgresql"]["analytics_events"] > 0
    assert report.erased["iceberg"] and report.erased["parquet"]
