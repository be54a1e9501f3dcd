"""Fixtures of the tests in tests/system/."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.gateway.app import create_gateway
from tests.support.tls import Certificates, certificates_in_tempdir, tls_postgres_server, tls_redis_server


@pytest.fixture
def gateway_post(settings: Settings) -> Iterator[Callable[[bytes, str], httpx.Response]]:
    """A synchronous ``post(body, content_type)`` into the gateway app (its lifespan open)."""
    runner = asyncio.Runner()
    app = create_gateway(settings)
    lifespan = app.router.lifespan_context(app)
    runner.run(lifespan.__aenter__())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")

    def post(body: bytes, content_type: str) -> httpx.Response:
        return runner.run(client.post("/v1/traces", content=body, headers={"content-type": content_type}))

    try:
        yield post
    finally:
        runner.run(client.aclose())
        runner.run(lifespan.__aexit__(None, None, None))
        runner.close()


@pytest.fixture(scope="module")
def certificates() -> Iterator[Certificates]:
    with certificates_in_tempdir() as value:
        yield value


@pytest.fixture(scope="module")
def tls_redis(certificates: Certificates) -> Iterator[int]:
    """Port of a redis-server listening with TLS only; the default user is off, two ACL users exist."""
    with tls_redis_server(certificates) as port:
        yield port


@pytest.fixture(scope="module")
def tls_postgres(certificates: Certificates) -> Iterator[str]:
    """Owner URL (with its password, without TLS parameters) of a PostgreSQL that only accepts TLS."""
    with tls_postgres_server(certificates) as url:
        yield url
