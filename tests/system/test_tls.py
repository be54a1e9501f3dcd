"""TLS and authentication, configured from the connection URLs (issue 9, "Operating it safely").

Real servers that accept nothing else: a ``redis-server`` with TLS only and ACL users (the
default user disabled), and a PostgreSQL whose ``pg_hba.conf`` rejects every connection
without TLS and checks every password (``scram-sha-256``). The pipeline's own parts (exporter,
gateway, bus reads, migrations, aggregator, query API) must work through
``rediss://user:password@...?ssl_ca_certs=...`` and ``postgresql://...?sslmode=verify-full``,
the aggregator and the API each with its own PostgreSQL login as the example deployments set
them up, and the ACL recipe of docs/production.md must be enough for them while keeping the
app user inside its key prefix and away from dangerous commands.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.aggregator.cli.settings import Settings, redact_url
from studyin_analytics.aggregator.storage.schema import migrate
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from tests.support import TEST_JWT_SECRET, TEST_PSEUDONYM_KEY
from tests.support.api import bearer, token
from tests.support.tls import (
    ADMIN_PASSWORD,
    APP_PASSWORD,
    APP_USER,
    PG_LOGINS,
    PREFIX,
    Certificates,
    free_tcp_port,
    tls_redis_url,
    tls_url,
    with_login,
)


def test_redis_refuses_plain_text_and_wrong_credentials(tls_redis: int, certificates: Certificates) -> None:
    plain = redis.Redis.from_url(
        f"redis://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{tls_redis}/0", socket_timeout=2
    )
    with pytest.raises(redis.RedisError):
        plain.ping()
    wrong = redis.Redis.from_url(tls_redis_url(tls_redis, certificates, password="not-the-password"))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    unverified = redis.Redis.from_url(f"rediss://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{tls_redis}/0")
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        unverified.ping()  # a server certificate not signed by a trusted CA is refused


def test_app_user_is_confined_to_its_prefix(tls_redis: int, certificates: Certificates) -> None:
    client = redis.Redis.from_url(tls_redis_url(tls_redis, certificates))
    client.set(f"{PREFIX}:probe", 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("someone-else:key", 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.config_get("requirepass")
    client.delete(f"{PREFIX}:probe")


def test_postgres_refuses_connections_without_tls(tls_postgres: str) -> None:
    async def plain() -> None:
        conn = await asyncpg.connect(f"{tls_postgres}?sslmode=disable", timeout=5)
        await conn.close()

    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        asyncio.run(plain())


async def _create_logins(owner_url: str) -> None:
    """The services' logins, exactly as docs/aggregator.md writes them (after the first migration)."""
    admin = await asyncpg.connect(owner_url)
    try:
        for login, (role, password) in PG_LOGINS.items():
            if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", login):
                await admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{password}' IN ROLE {role}")
    finally:
        await admin.close()


async def _client_backends(owner_url: str) -> list[asyncpg.Record]:
    """Login and TLS of every client connection, seen from an owner (superuser) session."""
    admin = await asyncpg.connect(owner_url)
    try:
        rows: list[asyncpg.Record] = await admin.fetch(
            "SELECT a.usename AS login, s.ssl FROM pg_stat_ssl s "
            "JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend'"
        )
        return rows
    finally:
        await admin.close()


def _collector_request(pseudonymizer: Pseudonymizer) -> bytes:
    """What a collector forwards for an app's session (xp 20), as an OTLP/protobuf body."""
    captured = InMemorySpanExporter()
    collector_side = TracerProvider()
    collector_side.add_span_processor(SimpleSpanProcessor(captured))
    other = StudyInTracker(tracer_provider=collector_side, pseudonymizer=pseudonymizer)
    with other.session("tls-learner") as session:
        other.xp_awarded("tls-learner", 20, "quiz", session=session)
    collector_side.shutdown()
    return encode_spans(captured.get_finished_spans()).SerializeToString()


async def _post_to_gateway(settings: Settings, otlp: bytes) -> None:
    gateway = create_gateway(settings)
    async with gateway.router.lifespan_context(gateway):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.post(
                "/v1/traces", content=otlp, headers={"content-type": "application/x-protobuf"}
            )
            assert response.status_code == 200, response.text


def test_pipeline_over_tls_with_an_acl_user(
    tls_redis: int, tls_postgres: str, certificates: Certificates, tmp_path: Path
) -> None:
    """App exporter and OTLP gateway -> bus -> aggregator -> PostgreSQL -> query API: every hop
    encrypted and authenticated, Redis as the ACL user, the aggregator and the API with their own
    PostgreSQL logins (the owner's only for the migration)."""
    owner_url = tls_url(tls_postgres, certificates)
    login_urls = {
        login: tls_url(with_login(tls_postgres, login, pw), certificates)
        for login, (_, pw) in PG_LOGINS.items()
    }
    settings = Settings(
        redis_url=tls_redis_url(tls_redis, certificates),
        postgres_url=owner_url,
        aggregator_postgres_url=login_urls["aggregator_login"],
        api_postgres_url=login_urls["api_login"],
        postgres_schema="tls_test",
        stream_prefix=PREFIX,
        pseudonym_keys={"t1": TEST_PSEUDONYM_KEY},  # type: ignore[arg-type]
        jwt_secret=TEST_JWT_SECRET,  # type: ignore[arg-type]
        consumer_name="tls-consumer",
        spool_dir=tmp_path / "spool",
        _env_file=None,  # type: ignore[call-arg]
    )
    migrate(settings)  # the migrations' own connection (SQLAlchemy + asyncpg) also goes over TLS
    asyncio.run(_create_logins(owner_url))
    pseudonymizer = Pseudonymizer.from_settings(settings)

    # An app exporting straight to the bus.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=pseudonymizer)
    with tracker.session("tls-learner") as session:
        tracker.xp_awarded("tls-learner", 15, "quiz", session=session)
    provider.shutdown()
    assert not any((tmp_path / "spool").glob("*")), "the exporter spooled: Redis over TLS refused it"

    # An app behind a collector: its spans reach the bus through the gateway.
    otlp = _collector_request(pseudonymizer)

    async def run() -> None:
        await _post_to_gateway(settings, otlp)
        async with Aggregator(settings) as aggregator:
            totals = await aggregator.drain(timeout_s=20)
            assert totals.events_inserted == 6  # two sessions: start, xp, end each
            assert aggregator.pool is not None
            who = await aggregator.pool.fetchrow("SELECT session_user AS login, current_user AS role")
            assert (who["login"], who["role"]) == ("aggregator_login", "studyin_aggregator")
            async with aggregator.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")  # the pool's connection is open while we look
                backends = await _client_backends(owner_url)
        assert {"aggregator_login", "postgres"} <= {b["login"] for b in backends}, backends
        assert all(b["ssl"] for b in backends), backends

        api = create_app(settings)
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                overview = await client.get(
                    "/api/analytics/learning/overview", headers=bearer(token(settings, "tls-learner"))
                )
                assert overview.status_code == 200, overview.text  # a rollup read and an audit insert
                assert overview.json()["xp"] == 35
                backends = await _client_backends(owner_url)
        assert "api_login" in {b["login"] for b in backends}, backends
        assert all(b["ssl"] for b in backends), backends

    asyncio.run(run())

    admin = redis.Redis.from_url(tls_redis_url(tls_redis, certificates, "admin", ADMIN_PASSWORD))
    assert all(key.decode().startswith(f"{PREFIX}:") for key in admin.scan_iter(count=1000))


WRONG_PASSWORD = "not-the-password-0123456789"
CLI_CASES = [  # command, the URL setting it connects with
    ("migrate", "STUDYIN_ANALYTICS_POSTGRES_URL"),
    ("aggregator", "STUDYIN_ANALYTICS_AGGREGATOR_POSTGRES_URL"),
    ("api", "STUDYIN_ANALYTICS_API_POSTGRES_URL"),
]


def _cli_with_wrong_password(
    command: str, variable: str, tls_redis: int, tls_postgres: str, certificates: Certificates
) -> tuple[subprocess.CompletedProcess[str], str]:
    """``studyin-analytics COMMAND`` whose PostgreSQL URL has a wrong password; and that URL."""
    user = {"migrate": "postgres", "aggregator": "aggregator_login", "api": "api_login"}[command]
    url = tls_url(with_login(tls_postgres, user, WRONG_PASSWORD), certificates)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    env.update(
        {
            variable: url,
            "STUDYIN_ANALYTICS_REDIS_URL": tls_redis_url(tls_redis, certificates),
            "STUDYIN_ANALYTICS_STREAM_PREFIX": PREFIX,
            "STUDYIN_ANALYTICS_POSTGRES_SCHEMA": "tls_wrong_password",
            "STUDYIN_ANALYTICS_PSEUDONYM_KEYS": f"t1={TEST_PSEUDONYM_KEY}",
            "STUDYIN_ANALYTICS_JWT_SECRET": TEST_JWT_SECRET,
            "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0",
            "STUDYIN_ANALYTICS_API_PORT": str(free_tcp_port()),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "studyin_analytics.aggregator.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, url


@pytest.mark.parametrize(("command", "variable"), CLI_CASES, ids=[c for c, _ in CLI_CASES])
def test_a_wrong_postgres_password_is_refused_without_printing_it(
    command: str, variable: str, tls_redis: int, tls_postgres: str, certificates: Certificates
) -> None:
    """SCRAM checks the password (pg_hba does not trust): a wrong one is refused, and never printed."""
    url = tls_url(with_login(tls_postgres, "postgres", WRONG_PASSWORD), certificates)

    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        await conn.close()

    with pytest.raises(
        asyncpg.InvalidPasswordError, match='password authentication failed for user "postgres"'
    ):
        asyncio.run(connect())

    result, _ = _cli_with_wrong_password(command, variable, tls_redis, tls_postgres, certificates)
    assert result.returncode != 0, result.stdout
    assert "password authentication failed" in result.stderr, result.stderr
    assert WRONG_PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(("command", "variable"), CLI_CASES, ids=[c for c, _ in CLI_CASES])
def test_a_wrong_postgres_password_error_names_the_url_setting_with_the_password_masked(
    command: str, variable: str, tls_redis: int, tls_postgres: str, certificates: Certificates
) -> None:
    result, url = _cli_with_wrong_password(command, variable, tls_redis, tls_postgres, certificates)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert variable in lines[0] and redact_url(url) in lines[0], lines[0]
    assert "password authentication failed" in lines[0]
    assert WRONG_PASSWORD not in result.stdout + result.stderr
