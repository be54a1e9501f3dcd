"""``migrate --distribute`` (storage/citus.py): the calls in co-location order, a clear refusal here.

Citus is not installed on the test server: the refusal is tested for real, the calls themselves
as text (docs/scaling-postgres.md says how they were verified on Citus 13.2.2).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.aggregator.storage.citus import distribute_statements, login_roles
from studyin_analytics.aggregator.storage.db import connect
from studyin_analytics.aggregator.storage.variant import DISTRIBUTED_TABLES

CLI = [sys.executable, "-m", "studyin_analytics.aggregator.cli"]


@pytest.mark.unit
def test_tables_are_distributed_in_colocation_order_once() -> None:
    statements = distribute_statements(set())
    assert statements[0] == "SELECT create_distributed_table('gamification_stats', 'user_hash')"
    assert len(statements) == len(DISTRIBUTED_TABLES)
    for table, statement in zip(DISTRIBUTED_TABLES[1:], statements[1:], strict=True):
        assert statement == (
            f"SELECT create_distributed_table('{table}', 'user_hash', colocate_with => 'gamification_stats')"
        )
    assert "analytics_system_events" not in " ".join(statements)
    again = distribute_statements({"gamification_stats", "daily_activity_summary"})
    assert again == statements[2:]


def _migrate_distribute(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    env.update(settings.environment())
    return subprocess.run(
        [*CLI, "migrate", "--distribute"], capture_output=True, text=True, env=env, timeout=120, check=False
    )


REFUSALS = {
    "citus": ("has no citus extension", "CREATE EXTENSION citus"),
    "plain": ("was migrated as the 'plain' variant", "only the citus variant can be distributed"),
}


@pytest.mark.parametrize("variant", sorted(REFUSALS))
async def test_distribute_is_refused_on_plain_postgresql(settings: Settings, variant: str) -> None:
    """The citus variant without the extension, and a plain schema (checked first), are refused
    with one line each, after the migration, changing nothing else."""
    chosen = settings.with_overrides(postgres_schema_variant=variant)
    result = _migrate_distribute(chosen)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert all(part in errors[0] for part in REFUSALS[variant]), errors[0]
    conn = await connect(chosen)  # migrated first, nothing distributed, no role changed
    try:
        assert await conn.fetchval("SELECT variant FROM schema_variant") == variant
        for role in login_roles(chosen, "studyin_exporter"):
            assert not await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", role)
    finally:
        await conn.close()
