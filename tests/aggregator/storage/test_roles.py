"""Least privilege in PostgreSQL (revision 0004): what the aggregator and API roles may and may not do."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from alembic import command

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api import audit
from studyin_analytics.aggregator.api.auth import Principal
from studyin_analytics.aggregator.cli.settings import ConfigurationError, Settings
from studyin_analytics.aggregator.storage.db import connect, create_pool
from studyin_analytics.aggregator.storage.schema import (
    MIGRATIONS_DIR,
    alembic_config,
    ensure_partitions,
    existing_partitions,
    migrate,
    partition_name,
)
from studyin_analytics.exporter.bus import stream_keys
from studyin_analytics.instrumentation.privacy import Pseudonymizer
from tests.support import ServerUrls
from tests.support.workload import build, mismatches, push, truth_of

ROLLUPS = (
    "learning_sessions",
    "daily_activity_summary",
    "gamification_stats",
    "user_activity_hourly",
    "ai_coach_metrics",
    "system_metrics",
    "system_metrics_hourly",
    "hourly_analytics_summary",
)
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _roles_migration() -> ModuleType:
    path = MIGRATIONS_DIR / "versions" / "0004_roles.py"
    spec = importlib.util.spec_from_file_location("revision_0004_roles", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _admin(settings: Settings) -> asyncpg.Connection:
    return await connect(settings)


async def _denied(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    """``sql`` fails for lack of privilege (not for any other reason), changing nothing."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with conn.transaction():
            await conn.execute(sql, *args)


def _migrate_concurrently(env: dict[str, str], schemas: list[str]) -> None:
    """``studyin-analytics migrate`` for every schema at once, as separate processes."""
    cmd = [sys.executable, "-m", "studyin_analytics.aggregator.cli", "migrate"]
    procs = [
        subprocess.Popen(cmd, env={**env, "STUDYIN_ANALYTICS_POSTGRES_SCHEMA": s}, stderr=subprocess.PIPE)
        for s in schemas
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()


# --- the aggregator role --------------------------------------------------------------------------


async def test_aggregator_role_consumes_a_batch_end_to_end(migrated: Settings) -> None:
    """Partitions through the definer function, raw insert, rollups and retention, all as the role."""
    settings = migrated.with_overrides(batch_size=9, raw_retention_days=10)
    today = datetime.now(UTC).date()
    old = today - timedelta(days=30)
    wl = build(Pseudonymizer.from_settings(settings), users=25, seed=21)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        assert aggregator.pool is not None
        async with aggregator.pool.acquire() as conn:
            who = await conn.fetchrow("SELECT current_user AS role, session_user AS login")
            assert who["role"] == settings.postgres_aggregator_role
            assert who["login"] != who["role"]  # the test's login user, SET to the role
            # DDL itself is out of reach; the definer function does it.
            await _denied(conn, f"CREATE TABLE {partition_name(old)} (x int)")
            await ensure_partitions(conn, {old}, set())
        totals = await aggregator.drain(timeout_s=60)
        assert totals.events_inserted == wl.event_count
        assert await aggregator.maintain() == [partition_name(old)]
    admin = await _admin(settings)
    try:
        assert await mismatches(admin, truth_of(wl)) == []
        days = set(await existing_partitions(admin))
        assert old not in days and today in days
        # Partitions belong to the table's owner, not to the role that asked for them.
        owners = await admin.fetch(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'analytics_events'::regclass"
        )
        assert [r["owner"] for r in owners] == [await admin.fetchval("SELECT current_user")]
    finally:
        await admin.close()


async def test_aggregator_role_rights_stop_at_its_tables(migrated: Settings) -> None:
    conn = await connect(migrated, "aggregator")
    try:
        await _denied(conn, "SELECT * FROM access_audit_log")
        await _denied(
            conn,
            "INSERT INTO access_audit_log (actor_hash, actor_role, endpoint, scope, outcome) "
            "VALUES ('a', 'staff', '/x', 'system', 'allowed')",
        )
        await _denied(conn, "DELETE FROM gamification_stats")
        await _denied(conn, "DELETE FROM analytics_events")
        await _denied(conn, "UPDATE analytics_events SET event_type = 'x'")
        await _denied(conn, "TRUNCATE hourly_analytics_summary")
        await _denied(conn, "ALTER TABLE gamification_stats ADD COLUMN x int")
        # The definer functions check their argument: a date they accept, nothing else.
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await conn.execute("SELECT create_events_partition('infinity')")
        with pytest.raises(asyncpg.InvalidParameterValueError):  # live data: never dropped
            await conn.execute("SELECT drop_events_partition($1)", datetime.now(UTC).date())
    finally:
        await conn.close()
    admin = await _admin(migrated)
    try:
        # A non-partition table that happens to carry a partition's name is not dropped.
        await admin.execute(f"CREATE TABLE {partition_name(date(1999, 1, 1))} (x int)")
    finally:
        await admin.close()
    conn = await connect(migrated, "aggregator")
    try:
        with pytest.raises(asyncpg.InvalidParameterValueError, match="not a partition"):
            await conn.execute("SELECT drop_events_partition('1999-01-01')")
    finally:
        await conn.close()


# --- the API role ---------------------------------------------------------------------------------


async def test_api_role_reads_rollups_and_appends_to_the_audit_log_only(migrated: Settings) -> None:
    conn = await connect(migrated, "api")
    try:
        assert await conn.fetchval("SELECT current_user") == migrated.postgres_api_role
        for table in ROLLUPS:
            await conn.fetch(f"SELECT * FROM {table} LIMIT 1")
        await conn.fetch("SELECT hist_quantile(count_map_sum(latency_hist), 0.5) FROM system_metrics")
        actor = Principal(user_hashes=("h-staff",), roles=frozenset({"staff"}), is_staff=True)
        await audit.record(conn, actor, "/v1/system", subject=None, scope="system")
        rows = await audit.entries(conn)
        assert [(r.actor_hash, r.endpoint) for r in rows] == [("h-staff", "/v1/system")]
        # The audit trail cannot be rewritten by the API, whatever the trigger would say.
        await _denied(conn, "UPDATE access_audit_log SET endpoint = '/forged'")
        await _denied(conn, "DELETE FROM access_audit_log")
        await _denied(conn, "TRUNCATE access_audit_log")
        # No writes to rollups or raw events, no raw reads, no partition maintenance.
        await _denied(conn, "INSERT INTO gamification_stats (user_hash) VALUES ('h')")
        await _denied(conn, "UPDATE daily_activity_summary SET xp = 0")
        await _denied(conn, "DELETE FROM system_metrics")
        await _denied(
            conn,
            "INSERT INTO analytics_events (event_id, occurred_at, event_type) "
            "VALUES (gen_random_uuid(), now(), 'x')",
        )
        await _denied(conn, "SELECT * FROM analytics_events")
        await _denied(conn, "SELECT create_events_partition(current_date)")
        await _denied(conn, "SELECT drop_events_partition('2000-01-01')")
    finally:
        await conn.close()


async def test_the_role_survives_the_pools_reset(migrated: Settings) -> None:
    """``role`` is a startup parameter: ``RESET ALL`` (the pool's reset) and ``RESET ROLE`` keep it."""
    pool = await create_pool(migrated, "api", min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("RESET ALL")
        async with pool.acquire() as conn:  # released once: asyncpg ran its RESET ALL
            assert await conn.fetchval("SELECT current_user") == migrated.postgres_api_role
            await conn.execute("RESET ROLE")
            assert await conn.fetchval("SELECT current_user") == migrated.postgres_api_role
    finally:
        await pool.close()


# --- grants, function safety, as the catalog has them ---------------------------------------------


async def test_grants_are_exactly_the_documented_ones(migrated: Settings) -> None:
    """Every table of the schema, every privilege: a new table gets no rights by accident."""
    aggregator, api = migrated.postgres_aggregator_role, migrated.postgres_api_role
    expected: dict[str, dict[str, set[str]]] = {
        "analytics_events": {aggregator: {"SELECT", "INSERT"}, api: set()},
        "access_audit_log": {aggregator: set(), api: {"SELECT", "INSERT"}},
        "alembic_version": {aggregator: set(), api: set()},
        # Custom events (0012): the API registers versions and may set deprecated_at only (a column grant).
        "custom_event_schemas": {aggregator: {"SELECT"}, api: {"SELECT", "INSERT"}},
        "custom_event_daily": {aggregator: {"SELECT", "INSERT", "UPDATE"}, api: {"SELECT"}},
        "rollup_rebuilds": {aggregator: set(), api: set()},  # the rebuild role's (0016_rebuild)
        "saved_funnels": {aggregator: set(), api: {"SELECT", "INSERT"}},  # versions: never changed
        # First activity and key links per pseudonym (0020_funnels_finish): the aggregator's, read by the API.
        "analysis_learners": {aggregator: {"SELECT", "INSERT", "UPDATE"}, api: {"SELECT"}},
        **{t: {aggregator: {"SELECT", "INSERT", "UPDATE"}, api: {"SELECT"}} for t in ROLLUPS},
        # Experiments (0013): staff define versions through the API; per-learner state is the aggregator's.
        "experiment_versions": {aggregator: {"SELECT"}, api: {"SELECT", "INSERT", "UPDATE"}},
        "experiment_learners": {aggregator: {"SELECT", "INSERT", "UPDATE"}, api: set()},
        "experiment_variant_sums": {aggregator: {"SELECT", "INSERT", "UPDATE"}, api: {"SELECT"}},
        "experiment_variant_day_sums": {aggregator: {"SELECT", "INSERT", "UPDATE"}, api: {"SELECT"}},
        "daily_learners": {aggregator: {"SELECT", "INSERT", "UPDATE"}, api: {"SELECT"}},  # 0023
        "schema_variant": {aggregator: {"SELECT"}, api: {"SELECT"}},
    }
    if migrated.postgres_schema_variant == "citus":  # 0017_citus_variant
        expected["analytics_system_events"] = {aggregator: {"SELECT", "INSERT"}, api: set()}
    admin = await _admin(migrated)
    try:
        tables = await admin.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            migrated.postgres_schema,
        )
        assert {r["relname"] for r in tables} == set(expected)
        for table, by_role in expected.items():
            for role, allowed in by_role.items():
                held = {
                    p
                    for p in PRIVILEGES
                    if await admin.fetchval(
                        "SELECT has_table_privilege($1, format('%I.%I', $2::text, $3::text), $4)",
                        role,
                        migrated.postgres_schema,
                        table,
                        p,
                    )
                }
                assert held == allowed, (table, role)
        functions = await admin.fetch(
            "SELECT p.proname, p.prosecdef, p.proconfig, "
            "       has_function_privilege('public', p.oid, 'EXECUTE') AS public_exec, "
            "       has_function_privilege($2, p.oid, 'EXECUTE') AS aggregator_exec, "
            "       has_function_privilege($3, p.oid, 'EXECUTE') AS api_exec "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
            migrated.postgres_schema,
            aggregator,
            api,
        )
        definers = {r["proname"]: r for r in functions if r["prosecdef"]}
        assert set(definers) == {"create_events_partition", "drop_events_partition"}
        for record in definers.values():
            assert not record["public_exec"] and not record["api_exec"] and record["aggregator_exec"]
            assert "search_path=pg_catalog, pg_temp" in record["proconfig"]
        roles = await admin.fetch(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname = ANY($1::text[])",
            [aggregator, api],
        )
        assert len(roles) == 2
        assert not any(
            r["rolcanlogin"] or r["rolsuper"] or r["rolcreaterole"] or r["rolcreatedb"] for r in roles
        )
    finally:
        await admin.close()


# --- logins ---------------------------------------------------------------------------------------


async def test_member_login_works_through_the_service_url(
    migrated: Settings, test_id: str, login_roles: list[str]
) -> None:
    """The documented set-up: a LOGIN user IN ROLE studyin_aggregator, named by aggregator_postgres_url."""
    member, outsider = f"t_{test_id}_agg_login", f"t_{test_id}_outsider"
    login_roles.extend([member, outsider])
    password = secrets.token_hex(8)
    admin = await _admin(migrated)
    try:
        await admin.execute(
            f"CREATE ROLE {member} LOGIN PASSWORD '{password}' IN ROLE {migrated.postgres_aggregator_role}"
        )
        await admin.execute(f"CREATE ROLE {outsider} LOGIN PASSWORD '{password}'")
    finally:
        await admin.close()
    base = migrated.postgres_url or ""
    settings = migrated.with_overrides(
        aggregator_postgres_url=_with_user(base, member, password),
        api_postgres_url=_with_user(base, outsider, password),
    )
    wl = build(Pseudonymizer.from_settings(settings), users=8, seed=22)
    push(settings.redis_url or "", stream_keys(settings)[0], wl.entries)
    async with Aggregator(settings) as aggregator:
        assert aggregator.pool is not None
        who = await aggregator.pool.fetchrow("SELECT current_user AS role, session_user AS login")
        assert (who["login"], who["role"]) == (member, settings.postgres_aggregator_role)
        assert (await aggregator.drain(timeout_s=60)).events_inserted == wl.event_count
    admin = await _admin(settings)
    try:
        assert await mismatches(admin, truth_of(wl)) == []
    finally:
        await admin.close()

    # A login that is no member of the API role: refused at connect, naming both settings.
    with pytest.raises(ConfigurationError) as refused:
        await connect(settings, "api")
    message = str(refused.value)
    assert "STUDYIN_ANALYTICS_API_POSTGRES_URL" in message
    assert "STUDYIN_ANALYTICS_POSTGRES_API_ROLE" in message
    assert password not in message
    # The same for a role that was never created (no migration ran with that name).
    missing = migrated.with_overrides(postgres_aggregator_role=f"t_{test_id}_missing")
    with pytest.raises(ConfigurationError, match="STUDYIN_ANALYTICS_POSTGRES_AGGREGATOR_ROLE"):
        await create_pool(missing, "aggregator")


# --- migrations -----------------------------------------------------------------------------------


async def test_migrating_two_schemas_at_once_creates_the_roles_once(
    server_urls: ServerUrls, test_id: str, login_roles: list[str]
) -> None:
    """Own role names, so the roles really are created here: two schemas concurrently, then again."""
    aggregator, api = f"t_{test_id}_agg", f"t_{test_id}_api"
    login_roles.extend([aggregator, api])
    schemas = [f"t_{test_id}_a", f"t_{test_id}_b"]
    env = {
        **os.environ,
        "STUDYIN_ANALYTICS_POSTGRES_URL": server_urls.postgres_url,
        "STUDYIN_ANALYTICS_POSTGRES_AGGREGATOR_ROLE": aggregator,
        "STUDYIN_ANALYTICS_POSTGRES_API_ROLE": api,
    }
    try:
        for _round in range(2):  # concurrently, then both again (nothing left to do)
            await asyncio.to_thread(_migrate_concurrently, env, schemas)
        settings = [
            Settings(
                postgres_url=server_urls.postgres_url,
                postgres_schema=s,
                postgres_aggregator_role=aggregator,
                postgres_api_role=api,
                _env_file=None,  # type: ignore[call-arg]
            )
            for s in schemas
        ]
        for each in settings:
            conn = await connect(each, "aggregator")
            try:
                await ensure_partitions(conn, {datetime.now(UTC).date()}, set())
                assert await conn.fetchval("SELECT count(*) FROM gamification_stats") == 0
            finally:
                await conn.close()

        # Downgrade one schema: its grants and functions go, the shared roles stay for the other.
        await asyncio.to_thread(command.downgrade, alembic_config(settings[0]), "0003")
        admin = await _admin(settings[0])
        try:
            assert (
                await admin.fetchval(
                    "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", [aggregator, api]
                )
                == 2
            )
            for role in (aggregator, api):
                assert not await admin.fetchval(
                    "SELECT has_schema_privilege($1, $2, 'USAGE')", role, schemas[0]
                )
                assert not await admin.fetchval(
                    "SELECT has_table_privilege($1, $2, 'SELECT')", role, f"{schemas[0]}.gamification_stats"
                )
            assert await admin.fetchval("SELECT to_regproc('create_events_partition')") is None
        finally:
            await admin.close()
        conn = await connect(settings[1], "api")
        try:
            await conn.fetch("SELECT * FROM gamification_stats")
        finally:
            await conn.close()
        await asyncio.to_thread(migrate, settings[0])  # and up again
        conn = await connect(settings[0], "api")
        try:
            await conn.fetch("SELECT * FROM gamification_stats")
        finally:
            await conn.close()
    finally:
        admin = await asyncpg.connect(server_urls.postgres_url)
        try:
            for schema in schemas:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()


async def test_role_creation_tolerates_a_concurrent_creator(
    server_urls: ServerUrls, test_id: str, login_roles: list[str]
) -> None:
    """Roles are cluster-wide, the migration lock per database: two creators may really race."""
    role = f"t_{test_id}_race"
    login_roles.append(role)
    sql = _roles_migration().create_role_sql(role)
    first = await asyncpg.connect(server_urls.postgres_url)
    second = await asyncpg.connect(server_urls.postgres_url)
    try:
        tx = first.transaction()
        await tx.start()
        await first.execute(sql)  # created, not yet committed
        racing = asyncio.create_task(second.execute(sql))  # waits on the uncommitted role
        await asyncio.sleep(0.3)
        assert not racing.done()
        await tx.commit()
        await asyncio.wait_for(racing, timeout=10)  # the duplicate is tolerated, not an error
        assert await second.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role) == 1
        await second.execute(sql)  # and once more, with the role long there
    finally:
        await first.close()
        await second.close()


def test_migration_refuses_equal_role_names(settings: Settings) -> None:
    same = settings.with_overrides(postgres_api_role=settings.postgres_aggregator_role)
    with pytest.raises(ValueError, match="must differ"):
        migrate(same)
